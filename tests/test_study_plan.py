"""`vgg-study`'s plan: epochs per split (`--split-epochs`), the paper preset sized to the time
budget of issue 24, the estimate printed at the start, and options a study refuses. No training."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from vggcifar.errors import VggCifarError
from vggcifar.study import PRESETS, explicit_command, parse_split_epochs, plan_splits
from vggcifar.study import estimate as E
from vggcifar.study.cli import main
from vggcifar.training.config import TrainConfig

PAPER_SPLITS = [0.01, 0.1, 0.5, 0.8]
CIFAR_LABELS = torch.arange(50000) % 10  # 5,000 training images per class, like CIFAR-10


@pytest.fixture(scope="module")
def paper_plan() -> dict:
    """The paper preset's plan for the real CIFAR-10 sizes, on a CPU with bf16."""
    o = PRESETS["paper"].options
    cfg = TrainConfig(arch=o["arch"], val_size=o["val_size"], epochs=o["epochs"], amp=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensor operations: faster alone on a busy machine
    try:
        return plan_splits(cfg, CIFAR_LABELS, PAPER_SPLITS, o["min_steps"],
                           parse_split_epochs(o["split_epochs"], PAPER_SPLITS), "cpu")
    finally:
        torch.set_num_threads(threads)


def test_parse_split_epochs():
    assert parse_split_epochs("0.8:95, 0.01:300", PAPER_SPLITS) == {0.8: 95, 0.01: 300}
    assert parse_split_epochs({"0.1": 150}, PAPER_SPLITS) == {0.1: 150}
    assert parse_split_epochs(None, PAPER_SPLITS) == {}
    for text, message in [("0.3:5", "not one of --splits"), ("0.1", "SPLIT:EPOCHS"),
                          ("0.1:x", "SPLIT:EPOCHS"), ("0.1:0", "no epoch")]:
        with pytest.raises(VggCifarError, match=message):
            parse_split_epochs(text, PAPER_SPLITS)


def test_paper_preset_fits_the_budget(paper_plan):
    plan = paper_plan
    # The study's split sizes: split x 50,000 training images, as report.json must show.
    assert {s: p["train_images"] for s, p in plan.items()} == {
        0.01: 500, 0.1: 5000, 0.5: 25000, 0.8: 40000}
    assert {s: p["epochs"] for s, p in plan.items()} == {0.01: 200, 0.1: 100, 0.5: 140, 0.8: 95}
    budget = PRESETS["paper"].budget
    speed = E.measured_speed(TrainConfig(arch="vgg16").to_dict(), "cpu", amp=True, cpu="amx")
    est = E.estimate(plan, 10000, True, speed, budget)
    # At the target training speed: about 5 hours, no split over 2.5 hours.
    assert 4.5 * 3600 < est["budget_seconds"] <= budget.total_hours * 3600
    assert all(r["budget_seconds"] <= budget.split_hours * 3600 for r in est["splits"].values())
    # At today's measured speed it takes longer, and says so.
    assert est["seconds"] > est["budget_seconds"]
    lines = E.estimate_lines(plan, est, speed, budget, "vgg16")
    assert "412 training" in lines[0] and "measured" in lines[0]
    assert any("split 0.8: 40,000 training images (batch 128), 95 epochs" in x for x in lines)
    assert any(x.strip().startswith("total:") and "at the 500 training images/s" in x
               for x in lines)
    assert any(x.startswith("warning: split 0.8") and "--resume" in x for x in lines)


def test_estimate_counts_only_the_work_left(paper_plan):
    plan = paper_plan
    full = E.split_work(plan[0.8], 10000, tta=True)
    # 312 steps of 128 images per epoch; validation every epoch; the test set three times.
    assert full == {"train_images": 95 * 312 * 128, "eval_images": 95 * 5000 + 30000}
    half = E.split_work(plan[0.8], 10000, tta=False, epochs_done=50)
    assert half == {"train_images": 45 * 312 * 128, "eval_images": 45 * 5000 + 10000}
    est = E.estimate(plan, 10000, True, None, done={0.01: "all", 0.1: "all", 0.5: 3})
    assert list(est["splits"]) == [0.5, 0.8] and est["seconds"] is None
    lines = E.estimate_lines(plan, est, None, None, "vgg11")
    assert "no measured speed for vgg11" in lines[0]
    assert "epochs 4-140 left" in lines[1]
    # Nothing was measured for other models or precisions.
    assert E.measured_speed(TrainConfig(arch="vgg16", width=0.5).to_dict(), "cpu", True) is None
    assert E.measured_speed(TrainConfig(arch="vgg16").to_dict(), "cpu", False) is None


def test_speed_is_looked_up_for_the_kind_of_cpu(paper_plan):
    """The AMX Xeon trains 2.1 times faster than the AVX512-BF16 EPYC: each estimate uses its
    own CPU's speed, and a CPU with neither has none (no hours are guessed)."""
    from vggcifar.runtime.devices import cpu_kind

    cfg = TrainConfig(arch="vgg16").to_dict()
    assert cpu_kind({"avx512f", "amx_bf16", "avx512_bf16"}) == "amx"
    assert cpu_kind({"avx512f", "avx512_bf16"}) == "avx512_bf16"
    # Two EPYCs of the same name and flags: Zen 5 (family 26) runs AVX-512 twice as wide.
    assert cpu_kind({"avx512f", "avx512_bf16"}, 26, "AuthenticAMD") == "zen5"
    assert cpu_kind({"avx512f", "avx512_bf16"}, 25, "AuthenticAMD") == "avx512_bf16"
    assert cpu_kind({"avx512f", "avx512_bf16"}, 26, "GenuineIntel") == "avx512_bf16"
    assert cpu_kind({"avx2"}, 26, "AuthenticAMD") == cpu_kind({"avx2"}) == cpu_kind(None) == "other"
    zen5 = E.measured_speed(cfg, "cpu", True, cpu="zen5")
    assert 1.5 < zen5.train_images_per_s / E.measured_speed(
        cfg, "cpu", True, cpu="avx512_bf16").train_images_per_s < 2.5
    amx = E.measured_speed(cfg, "cpu", True, cpu="amx")
    epyc = E.measured_speed(cfg, "cpu", True, cpu="avx512_bf16")
    assert amx.train_images_per_s > 2 * epyc.train_images_per_s
    assert "AMX" in amx.measured and "EPYC" in epyc.measured
    assert E.measured_speed(cfg, "cpu", True, cpu="other") is None
    assert E.measured_speed(cfg, "cpu", True) is None  # no kind given: nothing assumed
    budget = PRESETS["paper"].budget
    hours = {k: E.estimate(paper_plan, 10000, True, E.measured_speed(cfg, "cpu", True, cpu=k),
                           budget)["seconds"] / 3600 for k in ("amx", "avx512_bf16")}
    assert hours["avx512_bf16"] > 1.8 * hours["amx"]
    est = E.estimate(paper_plan, 10000, True, None, budget)
    lines = E.estimate_lines(paper_plan, est, None, budget, "vgg16")
    assert "no measured speed for vgg16 on this device and kind of CPU" in lines[0]


def test_explicit_command_keeps_the_split_epochs():
    manifest = {"splits": [0.01, 0.8], "min_steps": 4000,
                "split_epochs": {"0.01": 300, "0.8": 95},
                "config": TrainConfig(arch="vgg16").to_dict()}
    cmd = explicit_command(manifest, out="studies/p")
    params = main.make_context("vgg-study", cmd.split()[1:]).params
    assert params["split_epochs"] == "0.01:300,0.8:95" and params["min_steps"] == 4000


@pytest.mark.parametrize("args, message", [
    (["--split-epochs", "0.3:5"], "not one of --splits"),
    (["--split-epochs", "0.5:5", "--steps", "3"], "--steps"),
])
def test_study_options_refused_before_training(tmp_path, cifar_batches, args, message):
    r = CliRunner().invoke(main, ["--splits", "0.5", "--arch", "vgg11", "--device", "cpu",
                                  "--data", str(cifar_batches), "--out", str(tmp_path / "s"),
                                  *args])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_cpu_model_names_the_family_of_a_generic_name(tmp_path, monkeypatch):
    """A VM's generic "AMD EPYC" names two CPUs that differ twice in speed; the family and
    model numbers tell them apart in run records and reports."""
    import builtins

    from vggcifar.runtime import devices

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n"
                    "model\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(
        info if f == "/proc/cpuinfo" else f, *a, **k))
    assert devices.cpu_model() == "AMD EPYC (family 26, model 2)"
    assert devices.cpu_family() == 26 and devices.local_cpu_kind() == "zen5"
