"""`vgg-study`: every split trained by the one trainer, the report (tables, figures, JSON agreeing
with the markdown), resume, presets and input errors. Tiny synthetic data, a width-reduced VGG11."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vggcifar.errors import VggCifarError
from vggcifar.study import analysis, apply_preset, parse_splits, read_manifest, run_name
from vggcifar.study.presets import PAPER_SPLIT_EPOCHS
from vggcifar.study.cli import main
from vggcifar.training import trainer

SPLITS = "0.2,0.5,1"
TINY = ["--arch", "vgg11", "--width", "0.125", "--epochs", "2", "--batch-size", "32",
        "--device", "cpu", "--quiet"]
FIGURES = ["accuracy_vs_fraction.png", "epoch_time_vs_fraction.png", "memory_vs_fraction.png",
           "curves.png", "per_class_heatmap.png"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def spy_train(monkeypatch):
    """Record every config the study hands to the trainer (which still trains)."""
    calls = []
    real = trainer.train

    def spy(cfg, **kw):
        calls.append(cfg)
        return real(cfg, **kw)

    monkeypatch.setattr(trainer, "train", spy)
    return calls


@contextmanager
def one_thread():
    """One PyTorch thread for tiny models: two threads that wait for each other at every
    operation lose most of their time when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study(tmp_path_factory, cifar_batches) -> Path:
    """A finished three-split study, all splits in this process."""
    out = tmp_path_factory.mktemp("study") / "s"
    with pytest.MonkeyPatch.context() as mp, one_thread():
        # The run folders' sample grid is the slowest figure and the trainer's tests cover it.
        mp.setattr(trainer, "plot_samples", lambda *a, **k: None)
        r = invoke("--splits", SPLITS, *TINY, "--min-steps", "10", "--data", cifar_batches,
                   "--out", out, "--no-isolate", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["study_dir"] == str(out)
    return out


# ---------------------------------------------------------------------- the report
def _md_table(md: str, first_header: str, nth: int = 0) -> list[dict]:
    lines = md.splitlines()
    start = [i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |")][nth]
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in ln.strip("|").split("|")])))
    return rows


def _num(cell: str) -> float:
    return float(re.sub(r"[%,*†≈ ]", "", cell))


def _close(cell: str, value: float, decimals: int, scale: float = 1.0) -> bool:
    return abs(_num(cell) - round(scale * value, decimals)) <= 10 ** -decimals / 2 + 1e-9


def test_study_trains_every_split_as_a_normal_run(study):
    manifest = read_manifest(study)
    assert manifest["splits"] == [0.2, 0.5, 1.0]
    for s in manifest["splits"]:
        d = study / run_name(s)
        for f in ("config.json", "metrics.csv", "best.pt", "last.pt", "curves.png",
                  "per_class.csv", "summary.json"):
            assert (d / f).is_file(), d / f
        config = json.loads((d / "config.json").read_text())
        assert config["split"] == s and config["save_every"] == 1  # last.pt after every epoch
    # --min-steps 10: the 100-image split (3 steps per epoch) trains 4 epochs, the others 2.
    rep = json.loads((study / "report.json").read_text())
    by = {r["split"]: r for r in rep["splits"]}
    assert by[0.2]["epochs"] == 4 and by[0.2]["steps"] == 12
    assert by[0.5]["epochs"] == 2 and by[1.0]["epochs"] == 2
    assert by[1.0]["best_val_accuracy"] is None  # split 1 leaves no validation images


def test_report_has_every_table_and_figure(study):
    md = (study / "report.md").read_text()
    for section in ("## Results", "### Per-class test accuracy", "## What the numbers say",
                    "**Accuracy.**", "**Time.**", "**Memory.**", "original study",
                    "## Figures", "## Reproduce"):
        assert section in md, section
    for f in FIGURES:
        p = study / "figures" / f
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
        assert f"(figures/{f})" in md
    assert "vgg-study --splits 0.2,0.5,1 --arch vgg11" in md  # the command as typed
    assert "Seed: 0" in md and "torch" in md and "CPU" in md
    assert "one shared process" in md and "not per split" in md  # --no-isolate caveat


def test_report_json_has_the_numbers_the_markdown_shows(study):
    md = (study / "report.md").read_text()
    rep = json.loads((study / "report.json").read_text())
    table = _md_table(md, "split")
    assert [r["split"] for r in table] == ["20%", "50%", "100%"]
    assert len(table) == len(rep["splits"])
    for cells, r in zip(table, rep["splits"]):
        assert _num(cells["split"]) == pytest.approx(100 * r["split"])
        assert _num(cells["training images"]) == r["train_images"]
        assert int(cells["batch"]) == r["batch_size"] == 32
        assert int(cells["epochs"]) == r["epochs"] and int(cells["steps"]) == r["steps"]
        if r["best_val_accuracy"] is None:
            assert cells["best val acc"] == "–"
        else:
            assert _close(cells["best val acc"], r["best_val_accuracy"], 2, 100)
        assert _close(cells["test acc"], r["test_accuracy"], 2, 100)
        assert _close(cells["train s/epoch"], r["train_epoch_time_s"], 1)
        assert _close(cells["wall s/epoch"], r["mean_epoch_time_s"], 1)
        assert _close(cells["images/s"], r["images_per_s"], 0)
        assert _close(cells["peak RSS (MB)"], r["peak_memory_mb"], 0)
        assert _close(cells["total time (s)"], r["total_time_s"], 1)
        # ... and the JSON agrees with the run folder the split wrote.
        summary = json.loads((study / r["run_dir"] / "summary.json").read_text())
        assert r["test_accuracy"] == summary["test_accuracy"]
        assert r["peak_memory_mb"] == summary["peak_memory_mb"]
    per_class = _md_table(md, "class")
    classes = list(rep["splits"][0]["per_class_accuracy"])
    assert [row["class"] for row in per_class] == classes
    for row in per_class:
        for r in rep["splits"]:
            assert _close(row[f"{100 * r['split']:g}%"], r["per_class_accuracy"][row["class"]], 2,
                          100)
    for part in ("accuracy", "time", "memory", "reference"):
        for sentence in rep["analysis"][part]["text"]:
            assert sentence in md
    ref = {r["split"]: r for r in rep["analysis"]["reference"]["rows"]}
    assert ref[0.5]["test_accuracy"] == next(r for r in rep["splits"]
                                             if r["split"] == 0.5)["test_accuracy"]
    assert ref[0.01]["test_accuracy"] is None and ref[0.01]["reference_accuracy"] == 0.36


def test_report_gives_one_view_beside_tta_and_compares_one_view(study):
    md = (study / "report.md").read_text()
    rep = json.loads((study / "report.json").read_text())
    table = _md_table(md, "split")
    for cells, r in zip(table, rep["splits"]):
        summary = json.loads((study / r["run_dir"] / "summary.json").read_text())
        assert r["test_accuracy_one_view"] == summary["test_accuracy_one_view"] is not None
        assert r["tta"] is True and _close(cells["one view"], r["test_accuracy_one_view"], 2, 100)
    ref = {r["split"]: r for r in rep["analysis"]["reference"]["rows"]}
    half = next(r for r in rep["splits"] if r["split"] == 0.5)
    assert ref[0.5]["compared"] == half["test_accuracy_one_view"]
    assert ref[0.5]["compared_view"] == "one view"
    assert ref[0.5]["difference_points"] == pytest.approx(
        100 * (half["test_accuracy_one_view"] - 0.88))
    comparison = _md_table(md, "split", nth=1)
    assert _close(next(c for c in comparison if c["split"] == "50%")["this study, one view"],
                  half["test_accuracy_one_view"], 2, 100)
    assert rep["reference"]["view"] == "one view"


def test_explicit_command_parses_to_the_same_study(study):
    rep = json.loads((study / "report.json").read_text())
    cmd = rep["study"]["explicit_command"].split()
    assert cmd[0] == "vgg-study"
    ctx = main.make_context("vgg-study", cmd[1:])
    p = ctx.params
    assert p["splits"] == SPLITS and p["arch"] == "vgg11" and p["width"] == 0.125
    assert p["epochs"] == 2 and p["batch_size"] == 32 and p["min_steps"] == 10


def test_a_damaged_length_change_record_does_not_break_the_report(study, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    manifest = read_manifest(copy)
    manifest["sessions"][0]["split_epochs_changed"] = {"0.5": [2, 3], "x": [1, 2],
                                                       "1": "rm -rf /", "0.2": [1, 2, 3]}
    manifest["sessions"].append({**manifest["sessions"][0], "kind": "resume",
                                 "split_epochs_changed": ["not", "a", "map"]})
    (copy / "study.json").write_text(json.dumps(manifest))
    r = invoke("--report-only", "--out", copy)
    assert r.exit_code == 0, r.output
    sessions = json.loads((copy / "report.json").read_text())["study"]["sessions"]
    assert sessions[0]["split_epochs_changed"] == {"0.5": [2, 3]}
    assert sessions[1]["split_epochs_changed"] is None
    assert "split 50% set to 3 epochs before it started (was 2 epochs)" in (
        copy / "report.md").read_text()


def test_report_only_rebuilds_the_report(study):
    (study / "report.md").unlink()
    r = invoke("--report-only", "--out", study, "--note", "CPU shared with another job")
    assert r.exit_code == 0, r.output
    assert "> Note: CPU shared with another job" in (study / "report.md").read_text()


def test_report_only_refuses_training_options(study):
    before = (study / "report.md").read_text()
    for extra, shown in ((["--epochs", "5"], "--epochs"), (["--only", "0.5"], "--only"),
                         (["--no-compile", "--splits", "0.5"], "--compile, --splits")):
        r = invoke("--report-only", "--out", study, *extra)
        assert r.exit_code == 2 and "trains nothing" in r.output and shown in r.output, r.output
    assert (study / "report.md").read_text() == before


# ---------------------------------------------------------------------- resume
def test_resume_skips_finished_splits(study, spy_train):
    mtimes = {p: p.stat().st_mtime_ns for p in study.glob("split-*/*") if p.is_file()}
    r = invoke("--out", study, "--resume", "--quiet", "--no-isolate")
    assert r.exit_code == 0, r.output
    assert spy_train == []
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert len(read_manifest(study)["sessions"]) >= 2


def test_interrupted_study_continues_where_it_stopped(tmp_path, cifar_batches, monkeypatch,
                                                      spy_train):
    out = tmp_path / "s"
    real_epoch = trainer._Run.train_epoch

    def interrupt_second_epoch_of_half(self, epoch):
        if self.cfg.split == 0.5 and epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(trainer._Run, "train_epoch", interrupt_second_epoch_of_half)
    for fig in ("plot_samples", "plot_confusion"):  # the run folders' own figures: not tested here
        monkeypatch.setattr(trainer, fig, lambda *a, **k: None)
    with one_thread():
        r = CliRunner().invoke(main, ["--splits", "0.2,0.5,1", *TINY, "--data",
                                      str(cifar_batches), "--out", str(out), "--no-isolate"])
    assert r.exit_code == 130
    assert (out / "split-0.2" / "summary.json").is_file()
    assert (out / "split-0.5" / "last.pt").is_file()
    assert not (out / "split-0.5" / "summary.json").exists()
    assert not (out / "split-1").exists()
    first = (out / "split-0.2" / "summary.json").stat().st_mtime_ns

    monkeypatch.setattr(trainer._Run, "train_epoch", real_epoch)
    spy_train.clear()
    r = invoke("--out", out, "--resume", "--no-isolate", "--quiet", "--steps", "2")
    assert r.exit_code == 2 and "--steps 2" in r.output  # a resumed study keeps its options
    # A new length only for a split that has not started: the finished 0.2 and the
    # interrupted 0.5 (its one-cycle schedule is fixed) keep theirs.
    for started in ("0.2:3", "0.5:3", "1:3,0.5:3"):
        r = invoke("--out", out, "--resume", "--no-isolate", "--quiet", "--split-epochs", started)
        assert r.exit_code == 2 and "already started or finished" in r.output, r.output
        assert "split 1 " not in r.output
    assert spy_train == [] and "split_epochs_changed" not in str(read_manifest(out))
    with one_thread():
        r = invoke("--out", out, "--resume", "--no-isolate", "--split-epochs", "1:3")
    assert r.exit_code == 0, r.output
    assert "split 1: 3 epochs instead of 2 (not started yet" in r.output
    assert [c.split for c in spy_train] == [0.5, 1.0]  # 0.2 finished: not trained again
    assert [c.epochs for c in spy_train] == [2, 3]
    saved = read_manifest(out)
    assert saved["split_epochs"] == {"1": 3}
    assert saved["sessions"][-1]["split_epochs_changed"] == {"1": [None, 3]}
    assert len((out / "split-1" / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert "split 100% set to 3 epochs before it started (was the study's default length)" in (
        out / "report.md").read_text()
    assert spy_train[0].resume == str(out / "split-0.5" / "last.pt")
    assert spy_train[1].resume is None
    assert (out / "split-0.2" / "summary.json").stat().st_mtime_ns == first
    metrics = (out / "split-0.5" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2  # header + both epochs, the first from before the interruption
    rep = json.loads((out / "report.json").read_text())
    assert [r["split"] for r in rep["splits"]] == [0.2, 0.5, 1.0]
    assert rep["unfinished"] == []
    assert next(r for r in rep["splits"] if r["split"] == 0.5)["resumed"] is True
    assert "†" in (out / "report.md").read_text()


def test_resume_refuses_changed_options(study):
    r = CliRunner().invoke(main, ["--out", str(study), "--resume", "--arch", "vgg13"])
    assert r.exit_code == 2
    assert "--arch vgg13" in r.output and "differ" in r.output
    r = CliRunner().invoke(main, ["--out", str(study), "--resume", "--splits", "0.2,0.5"])
    assert r.exit_code == 2 and "--splits" in r.output


# ---------------------------------------------------------------------- process per split
@pytest.mark.slow
def test_splits_run_in_their_own_processes(tmp_path, cifar_batches, monkeypatch):
    out = tmp_path / "iso"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the split's process: see one_thread
    with one_thread():
        r = invoke("--splits", "1", "--arch", "vgg11", "--width", "0.125", "--steps", "2",
                   "--batch-size", "32", "--device", "cpu", "--quiet", "--data", cifar_batches,
                   "--out", out)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["study"]["isolated"] is True
    assert all(r["isolated"] and r["peak_memory_mb"] > 0 for r in rep["splits"])
    # The parent measured the child's CPU time: a share of its threads' time in (0, 1.5].
    assert all(0 < r["cpu_share"] <= 1.5 for r in rep["splits"])
    md = (out / "report.md").read_text()
    assert "its own process" in md and "that split's own peak" in md
    # A --steps budget shorter than an epoch: epoch time estimated from throughput, marked.
    assert all(r["train_epoch_time_estimated"] for r in rep["splits"])


# ---------------------------------------------------------------------- input errors
@pytest.mark.parametrize("splits, message", [
    ("0,0.5", "outside (0, 1]"), ("0.5,1.5", "outside (0, 1]"), ("-0.1", "outside (0, 1]"),
    ("0.1,abc", "not a number"), ("0.1,0.5,0.10", "given twice"), (",", "at least one"),
    ("nan", "outside (0, 1]"),
])
def test_bad_splits_are_clear_errors(tmp_path, cifar_batches, splits, message):
    r = CliRunner().invoke(main, ["--splits", splits, *TINY, "--data", str(cifar_batches),
                                  "--out", str(tmp_path / "s")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: --splits") and message in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_unwritable_study_folder_is_a_clear_error(tmp_path, cifar_batches):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = CliRunner().invoke(main, ["--splits", "0.5", *TINY, "--data", str(cifar_batches),
                                  "--out", str(blocker / "study")])
    assert r.exit_code == 2
    assert r.output.startswith("error: cannot write the study folder") and "--out" in r.output


def test_existing_study_needs_resume_and_resume_needs_a_study(study, tmp_path, cifar_batches):
    r = CliRunner().invoke(main, ["--splits", SPLITS, *TINY, "--data", str(cifar_batches),
                                  "--out", str(study)])
    assert r.exit_code == 2 and "already holds a study" in r.output and "--resume" in r.output
    r = CliRunner().invoke(main, ["--resume", "--out", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "holds no study" in r.output
    r = CliRunner().invoke(main, ["--resume"])
    assert r.exit_code == 2 and "--resume needs --out" in r.output


def test_bad_training_option_fails_before_any_training(tmp_path, cifar_batches, spy_train):
    r = CliRunner().invoke(main, ["--splits", "0.5", *TINY, "--warmup", "1.5", "--data",
                                  str(cifar_batches), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "warmup" in r.output
    r = CliRunner().invoke(main, ["--splits", "0.5", *TINY, "--min-steps", "-1", "--data",
                                  str(cifar_batches), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "min-steps" in r.output
    assert spy_train == []


# ---------------------------------------------------------------------- presets
def test_preset_defaults_yield_to_explicit_options(monkeypatch, tmp_path):
    got = {}

    def fake_run_study(out, splits, config, **kw):
        got.update(out=out, splits=splits, config=config, **kw)
        return {"splits": [], "study": {"wall_time_s": 0.0}}

    monkeypatch.setattr("vggcifar.study.runner.run_study", fake_run_study)
    r = invoke("--preset", "cpu-quick", "--out", tmp_path / "q", "--seed", "3")
    assert r.exit_code == 0, r.output
    c = got["config"]
    assert got["splits"] == "0.01,0.1,0.5,0.8" and got["preset"] == "cpu-quick"
    assert c.arch == "vgg11" and c.val_size == 2000 and c.seed == 3 and got["min_steps"] > 0
    r = invoke("--preset", "cpu-quick", "--out", tmp_path / "q", "--arch", "vgg16", "--steps",
               "7", "--splits", "0.5")
    assert r.exit_code == 0, r.output
    assert got["config"].arch == "vgg16" and got["config"].steps == 7 and got["splits"] == "0.5"
    r = invoke("--preset", "paper", "--out", tmp_path / "p", "--device", "cpu")
    assert got["config"].arch == "vgg16" and got["splits"] == "0.01,0.1,0.5,0.8"
    # The paper preset runs on a CPU (issue 24): no GPU warning; its epochs are set per split.
    assert r.exit_code == 0 and "GPU" not in r.output
    assert got["split_epochs"] == PAPER_SPLIT_EPOCHS == "0.01:200,0.1:100,0.5:140,0.8:95"


def test_apply_preset_length_rule():
    v = apply_preset("paper", {"epochs": 5, "steps": None, "min_steps": 0}, {"epochs"})
    assert v["epochs"] == 5 and v["min_steps"] > 0 and v["arch"] == "vgg16"
    v = apply_preset("paper", {"epochs": 30, "steps": 9, "min_steps": 0}, {"steps"})
    assert v["steps"] == 9 and v["epochs"] == 30
    assert apply_preset(None, {"epochs": 1}, set()) == {"epochs": 1}


# ---------------------------------------------------------------------- pieces
def test_parse_splits():
    assert parse_splits("0.8, 0.01,0.1") == [0.01, 0.1, 0.8]
    assert parse_splits([1, 0.5]) == [0.5, 1.0]
    with pytest.raises(VggCifarError, match="given twice"):
        parse_splits("0.5,0.50")


def _rows(accs, mems, batches, fracs=(0.01, 0.1, 0.5, 0.8)):
    return [{"split": f, "test_accuracy": a, "peak_memory_mb": m, "batch_size": b,
             "train_images": int(50000 * f), "final_train_accuracy": None}
            for f, a, m, b in zip(fracs, accs, mems, batches)]


def test_accuracy_findings_trend_and_saturation():
    a = analysis.accuracy_findings(_rows([0.3, 0.6, 0.8, 0.81], [1] * 4, [32] * 4))
    assert a["monotonic"] and a["rises"]
    assert a["gains"][0]["points_per_doubling"] == pytest.approx(30 / 3.321928, rel=1e-4)
    assert a["saturates_from"] == 0.5  # 0.5 -> 0.8 adds 1 point: < 2 per doubling
    assert "rises with every increase" in a["text"][0]
    b = analysis.accuracy_findings(_rows([0.3, 0.6, 0.55, 0.7], [1] * 4, [32] * 4))
    assert not b["monotonic"] and "does not rise" in b["text"][0] and "10% to 50%" in b["text"][0]


def test_memory_findings_separate_batch_size_from_fraction():
    m = analysis.memory_findings(_rows([0] * 4, [900, 1000, 1010, 1020], [32, 128, 128, 128]),
                                 "rss", True)
    assert m["conclusion"] == "batch size" and "follows the batch size" in m["text"][-1]
    m = analysis.memory_findings(_rows([0] * 4, [900, 1000, 1500, 2000], [128] * 4), "gpu", None)
    assert m["conclusion"] == "fraction" and "MB per 1,000 training images" in m["text"][-1]
    m = analysis.memory_findings(_rows([0] * 2, [900, 1000], [32, 128], (0.01, 0.5)), "rss", True)
    assert m["conclusion"] == "confounded"
    m = analysis.memory_findings(_rows([0] * 2, [900, 1000], [32, 128]), "rss", False)
    assert m["conclusion"] == "not per split"


def test_contention_is_detected_from_the_measurements():
    row = {"split": 0.5, "train_images": 25000, "train_epoch_time_s": 60.0, "images_per_s": 400,
           "batch_size": 128, "load_avg_1min_at_start": [1.0]}
    quiet = [dict(row, cpu_share=0.97, epoch_images_per_s_range=[390, 410]),
             dict(row, split=0.8, train_images=40000, cpu_share=0.95,
                  epoch_images_per_s_range=[395, 405])]
    t = analysis.time_findings(quiet, cpus=2)
    assert not t["contended"] and any("quiet machine" in x for x in t["text"])
    busy = [dict(quiet[0], cpu_share=0.4), dict(quiet[1], epoch_images_per_s_range=[97, 203])]
    t = analysis.time_findings(busy, cpus=2)
    assert t["contended_splits"] == [0.5, 0.8]
    assert any("CPU share 0.40" in x and "97–203 images/s" in x and "upper bounds" in x
               for x in t["text"])
    # Without a CPU share, a high load average at the split's start is the fallback signal.
    old = [dict(row, load_avg_1min_at_start=[5.0]), dict(row, split=0.8, train_images=40000)]
    t = analysis.time_findings(old, cpus=2)
    assert t["contended_splits"] == [0.5] and any("load average 5.0" in x for x in t["text"])


def test_time_fit():
    rows = [{"split": f, "train_images": n, "train_epoch_time_s": 2 + n / 1000,
             "images_per_s": 500, "batch_size": 128} for f, n in ((0.1, 5000), (0.5, 25000))]
    t = analysis.time_findings(rows)
    assert t["linear_fit"]["seconds_per_1000_images"] == pytest.approx(1.0)
    assert t["linear_fit"]["intercept_s"] == pytest.approx(2.0)


def test_only_trains_the_named_splits_and_resume_trains_the_rest(tmp_path, cifar_batches,
                                                                  monkeypatch, spy_train):
    out = tmp_path / "s"
    for fig in ("plot_samples", "plot_confusion"):
        monkeypatch.setattr(trainer, fig, lambda *a, **k: None)
    for bad, said in (("0.3", "--only 0.3: not a split of this study"),
                      ("x", "--only: 'x' is not a number")):
        r = invoke("--splits", "0.2,1", *TINY, "--data", cifar_batches, "--out", out,
                   "--no-isolate", "--only", bad)
        assert r.exit_code == 2 and said in r.output, r.output
        assert not out.exists()  # refused before anything was written
    with one_thread():
        r = invoke("--splits", "0.2,1", *TINY, "--data", cifar_batches, "--out", out,
                   "--no-isolate", "--only", "1", "--json")
    assert r.exit_code == 0, r.output
    assert [c.split for c in spy_train] == [1.0]
    assert not (out / "split-0.2").exists()
    rep = json.loads((out / "report.json").read_text())
    assert rep["unfinished"] == [0.2]
    assert read_manifest(out)["sessions"][-1]["only"] == [1.0]
    done = (out / "split-1" / "summary.json").stat().st_mtime_ns
    spy_train.clear()
    with one_thread():
        r = invoke("--out", out, "--resume", "--no-isolate", "--quiet")
    assert r.exit_code == 0, r.output
    assert [c.split for c in spy_train] == [0.2]  # 1 finished: kept
    assert (out / "split-1" / "summary.json").stat().st_mtime_ns == done
    rep = json.loads((out / "report.json").read_text())
    assert rep["unfinished"] == [] and [r["split"] for r in rep["splits"]] == [0.2, 1.0]


def test_a_bad_copy_results_folder_is_refused_before_training(study, tmp_path, cifar_batches,
                                                              spy_train):
    out = tmp_path / "s"
    for dest, said in ((out / "results", "give a folder outside the study folder"),
                       (study, "holds another study")):
        r = invoke("--splits", "0.5", *TINY, "--data", cifar_batches, "--out", out,
                   "--no-isolate", "--copy-results", dest)
        assert r.exit_code == 2 and said in r.output, r.output
    assert spy_train == [] and not (out / "study.json").exists()
