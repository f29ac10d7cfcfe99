import json

import click
import pytest
import torch
from click.testing import CliRunner

import vggcifar
from vggcifar.checkpoint import save_checkpoint
from vggcifar.checkpoint_file import read_checkpoint
from vggcifar.training import TrainConfig, train
from vggcifar.training.cli import main as train_cli
from vggcifar.training.schedule import lr_factor

RUN_FILES = {"config.json", "metrics.csv", "best.pt", "last.pt", "curves.png", "per_class.csv",
             "confusion.png", "samples.png", "summary.json"}


def tiny(cifar_batches, out, **kw):
    base = dict(arch="vgg11", width=0.125, head="linear", epochs=3, lr=0.05, split=0.8, data=str(cifar_batches),
                out=str(out), device="cpu", progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def train_interrupted(cfg, after_epochs: int) -> None:
    """Run ``cfg`` and interrupt it (Ctrl-C) once ``after_epochs`` epochs have finished."""
    from vggcifar.training import trainer as T

    real_train_epoch = T._Run.train_epoch
    calls = {"n": 0}

    def interrupt(self, epoch):
        if calls["n"] == after_epochs:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_train_epoch(self, epoch)

    T._Run.train_epoch = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    finally:
        T._Run.train_epoch = real_train_epoch


def test_tiny_vgg_really_learns(tiny_run):
    s = json.loads((tiny_run / "summary.json").read_text())
    rows = (tiny_run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    header = rows[0].split(",")
    acc = [float(r.split(",")[header.index("train_acc")]) for r in rows[1:]]
    assert acc[-1] > 0.8 > acc[0]  # chance is 0.1
    assert s["test_accuracy"] > 0.8
    assert list(s["per_class_accuracy"])[:2] == ["airplane", "automobile"]
    assert len(s["per_class_accuracy"]) == 10
    for key in ("params", "total_time_s", "mean_epoch_time_s", "peak_memory_mb", "checkpoint"):
        assert s[key] is not None
    assert s["checkpoint"].startswith("best.pt")
    assert 0 < s["peak_memory_mb"] < 100_000


def test_run_folder_has_every_file(tiny_run):
    assert RUN_FILES <= {p.name for p in tiny_run.iterdir()}
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["arch"] == "vgg11" and cfg["batch_size"] > 0
    assert cfg["versions"]["torch"] == str(torch.__version__)
    assert cfg["resolved"]["train_images"] == 400 and cfg["resolved"]["val_images"] == 100
    per_class = (tiny_run / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,accuracy,correct,total" and len(per_class) == 11


def test_checkpoint_loads_weights_only_and_round_trips(tiny_checkpoint, tmp_path):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    assert raw["format"] == "vggcifar-checkpoint" and raw["format_version"] == 2
    assert raw["preprocessing"]["class_names"][3] == "cat"
    assert len(raw["preprocessing"]["mean"]) == 3 and raw["config"]["arch"] == "vgg11"
    model, meta = vggcifar.load_checkpoint(tiny_checkpoint)
    assert not model.training and meta["arch"] == "vgg11" and meta["test_accuracy"] > 0.5
    x = torch.randn(4, 3, 32, 32)
    save_checkpoint(read_checkpoint(tiny_checkpoint), tmp_path / "copy.pt")
    again, _ = vggcifar.load_checkpoint(tmp_path / "copy.pt")
    assert torch.equal(model(x), again(x))


def test_bad_checkpoints_get_clear_errors(tmp_path):
    from vggcifar.errors import VggCifarError

    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(VggCifarError, match="not a readable vggcifar checkpoint") as e:
        vggcifar.load_checkpoint(tmp_path / "text.pt")
    # what the file is, not the loader's internal failure ("list index out of range")
    assert "not a PyTorch file: neither a zip archive nor a pickle" in str(e.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(VggCifarError, match=r"not a readable vggcifar checkpoint \(the file is "
                                            r"empty\)"):
        vggcifar.load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(VggCifarError, match="not a vggcifar checkpoint"):
        vggcifar.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(VggCifarError, match="does not exist"):
        vggcifar.load_checkpoint(tmp_path / "missing.pt")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "best.pt"
    target.write_bytes(b"old")

    def boom(obj, f):
        open(f, "wb").write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint({"x": 1}, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_resume_gives_the_same_final_weights(cifar_batches, tmp_path):
    full = train(tiny(cifar_batches, tmp_path, name="full", epochs=3))
    # Interrupt a 3-epoch run after its first epoch (Ctrl-C during epoch 2), then resume it.
    cfg = tiny(cifar_batches, tmp_path, name="part", epochs=3)
    train_interrupted(cfg, after_epochs=1)
    last = tmp_path / "part" / "last.pt"
    assert read_checkpoint(last)["epoch"] == 1
    resumed = train(TrainConfig(resume=str(last), progress=False, device="cpu"))
    a = read_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    b = read_checkpoint(last)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"])
    rows = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4
    # The run's time spans both segments: at least every epoch's own time, not the last 2 only.
    epochs = sum(r["epoch_time_s"] for r in read_checkpoint(last)["metrics"])
    assert resumed["resumed_after_epochs"] == [1]
    assert resumed["total_time_s"] >= epochs
    assert read_checkpoint(last)["training_state"]["run_time_s"] >= epochs


def test_resume_from_a_last_pt_without_run_time_counts_its_epochs(cifar_batches, tmp_path):
    cfg = tiny(cifar_batches, tmp_path, name="old", epochs=2)
    train_interrupted(cfg, after_epochs=1)
    last = tmp_path / "old" / "last.pt"
    ckpt = read_checkpoint(last)
    for key in ("run_time_s", "resumed_after_epochs"):  # as a last.pt from before they existed
        del ckpt["training_state"][key]
    first = ckpt["metrics"][0]["epoch_time_s"]
    # The first segment took a long time (an hour): the resumed run's total must include it.
    ckpt["metrics"][0]["epoch_time_s"] = first + 3600.0
    torch.save(ckpt, last)
    resumed = train(TrainConfig(resume=str(last), progress=False, device="cpu"))
    assert resumed["resumed_after_epochs"] == [1]
    assert 3600 < resumed["total_time_s"] < 3600 + 600


def test_split_one_has_no_validation_and_uses_last(cifar_batches, tmp_path):
    s = train(tiny(cifar_batches, tmp_path, name="all", split=1.0, epochs=1, steps=3))
    assert s["val_images"] == 0 and s["best_val_accuracy"] is None and s["steps"] == 3
    assert "no validation set" in s["checkpoint"]


def test_small_split_validates_sparsely(cifar_batches, tmp_path):
    s = train(tiny(cifar_batches, tmp_path, name="sparse", split=0.1, val_size=400, epochs=4))
    cfg = json.loads((tmp_path / "sparse" / "config.json").read_text())
    assert cfg["resolved"]["val_every"] == 4  # 400 val vs 50 train images
    rows = (tmp_path / "sparse" / "metrics.csv").read_text().splitlines()[1:]
    validated = [r for r in rows if r.split(",")[6] != ""]
    assert len(validated) == 1 and s["best_epoch"] == 4


def test_classic_loader_and_tta_and_schedules(cifar_batches, tmp_path):
    s = train(tiny(cifar_batches, tmp_path, name="classic", loader="classic", workers=0,
                   epochs=1, steps=4, tta=True, schedule="step"))
    assert s["steps"] == 4 and s["tta"] is True
    # TTA runs also record the one-view figure (what serving delivers), in the checkpoint too
    assert 0 <= s["test_accuracy_one_view"] <= 1
    _, meta = vggcifar.load_checkpoint(tmp_path / "classic" / "best.pt")
    assert meta["test_accuracy_one_view"] == s["test_accuracy_one_view"]
    assert meta["test_accuracy"] == s["test_accuracy"]
    assert lr_factor(0, 100, "onecycle") == pytest.approx(0.04)
    assert lr_factor(20, 100, "onecycle") == pytest.approx(1.0)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0)
    assert [lr_factor(s, 100, "step") for s in (10, 60, 90)] == [1.0, 0.1, 0.01]


def test_vgg_train_cli_writes_the_run_folder(cifar_batches, tmp_path):
    r = CliRunner().invoke(train_cli, [
        "--data", str(cifar_batches), "--arch", "vgg11", "--width", "0.125", "--head", "linear", "--epochs", "2",
        "--split", "0.5", "--device", "cpu", "--out", str(tmp_path / "cli"), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    assert RUN_FILES <= {p.name for p in (tmp_path / "cli").iterdir()}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["run_dir"].endswith("cli") and 0 <= out["test_accuracy"] <= 1
    # Same name again: refuses instead of overwriting.
    r = CliRunner().invoke(train_cli, ["--data", str(cifar_batches), "--out",
                                       str(tmp_path / "cli"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 2 and "already holds a run" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--arch", "vgg17"], "Invalid value for '--arch'"),
    (["--split", "0"], "split must be in (0, 1]"),
    (["--split", "1.5"], "split must be in (0, 1]"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--resume", "{bad}"], "not a readable vggcifar checkpoint"),
    (["--data", "{junk}"], "not CIFAR-10 data"),
    (["--data", "{empty}", "--no-download"], "no data at"),
    # options the run would ignore
    (["--workers", "4"], "--workers applies only with --loader classic"),
    (["--epochs", "3", "--steps", "10"], "--epochs and --steps both set the training length"),
    (["--head", "linear", "--dropout", "0.5"], "--dropout applies only with --head mlp"),
    (["--schedule", "cosine", "--warmup", "0.1"], "--warmup applies only with --schedule"),
    (["--split", "1", "--val-size", "100"], "--val-size applies only with a validation set"),
    (["--val-size", "0", "--val-every", "2"], "--val-every applies only with a validation set"),
    (["--sync-bn"], "--sync-bn applies only under torchrun"),
])
def test_vgg_train_bad_input(args, message, tmp_path, cifar_batches):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("a GPU is present")
    (tmp_path / "bad.pt").write_text("hello")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    args = [a.format(bad=tmp_path / "bad.pt", junk=tmp_path / "junk", empty=tmp_path / "empty")
            for a in args]
    base = ["--data", str(cifar_batches), "--out", str(tmp_path / "runs"), "--quiet"]
    if "--resume" in args:  # a resumed run writes in its own folder: --out is refused
        base = ["--data", str(cifar_batches), "--quiet"]
    r = CliRunner().invoke(train_cli, base + args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) <= 1
    # A failed start leaves no (empty) run folder behind, nor the --out folder it created.
    assert not (tmp_path / "runs").exists()


def test_failed_start_keeps_an_existing_out_folder(tmp_path, cifar_batches):
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "junk").mkdir()
    r = CliRunner().invoke(train_cli, ["--data", str(tmp_path / "junk"), "--out",
                                       str(tmp_path / "runs" / "new"), "--quiet"])
    assert r.exit_code == 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other"]


def test_corrupt_cache_is_rebuilt_by_vgg_train(cifar_batches, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VGGCIFAR_CACHE", str(cache))
    args = ["--data", str(cifar_batches), "--arch", "vgg11", "--width", "0.125", "--steps", "1",
            "--device", "cpu", "--quiet"]
    assert CliRunner().invoke(train_cli, args + ["--out", str(tmp_path / "a")]).exit_code == 0
    f = next(cache.glob("*.pt"))
    f.write_bytes(b"garbage")
    r = CliRunner().invoke(train_cli, args + ["--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and "corrupt cache" in r.output


def test_weight_ema_averages_parameters_and_batchnorm_statistics():
    from vggcifar.training.ema import WeightEMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, 0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.add_(7)
    d = ema.current_decay()
    assert d == pytest.approx(2 / 11)  # ramped up: min(0.5, (1 + 1) / (10 + 1))
    ema.update()
    avg = ema.module.state_dict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(avg[k], d * start[k] + (1 - d) * v)
        else:
            assert torch.equal(avg[k], v)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(100):
        ema.update()
    assert ema.current_decay() == 0.5 and ema.state() == {"decay": 0.5, "updates": 101}
    with pytest.raises(ValueError):
        WeightEMA(model, 1.0)


def test_ema_run_saves_the_average_and_resumes_to_the_same_weights(cifar_batches, tmp_path):
    full = train(tiny(cifar_batches, tmp_path, name="full", epochs=3, ema=0.9))
    assert full["test_accuracy"] > 0.5
    last = read_checkpoint(tmp_path / "full" / "last.pt")
    live, avg = last["training_state"]["live_state_dict"], last["state_dict"]
    assert last["training_state"]["ema"]["updates"] == full["steps"]
    assert any(not torch.equal(live[k], avg[k]) for k in avg if avg[k].is_floating_point())
    # best.pt (chosen on validation) holds averaged weights, not the live ones
    best = read_checkpoint(tmp_path / "full" / "best.pt")
    assert best["config"]["ema"] == 0.9
    train_interrupted(tiny(cifar_batches, tmp_path, name="part", epochs=3, ema=0.9), after_epochs=1)
    part = tmp_path / "part" / "last.pt"
    train(TrainConfig(resume=str(part), progress=False, device="cpu"))
    b = read_checkpoint(part)
    for key in ("state_dict",):
        assert all(torch.allclose(last[key][k].float(), b[key][k].float(), atol=1e-6)
                   for k in last[key])
    assert all(torch.allclose(live[k].float(), b["training_state"]["live_state_dict"][k].float(),
                              atol=1e-6) for k in live)


def test_ema_and_nesterov_can_be_switched_when_resuming(cifar_batches, tmp_path):
    from vggcifar.training import trainer as T

    real_train_epoch = T._Run.train_epoch

    def interrupt(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_train_epoch(self, epoch)

    T._Run.train_epoch = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tiny(cifar_batches, tmp_path, name="run", epochs=2, nesterov=False))
    finally:
        T._Run.train_epoch = real_train_epoch
    last = tmp_path / "run" / "last.pt"
    assert "ema" not in read_checkpoint(last)["training_state"]
    seen = {}
    real_setup = T._Run.setup

    def spy(self):
        real_setup(self)
        seen["nesterov"] = [g["nesterov"] for g in self.opt.param_groups]

    T._Run.setup = spy
    try:
        r = CliRunner().invoke(train_cli, ["--resume", str(last), "--ema", "0.9", "--nesterov",
                                           "--quiet", "--device", "cpu"])
    finally:
        T._Run.setup = real_setup
    assert r.exit_code == 0, r.output
    assert seen["nesterov"] == [True]  # restored from the checkpoint, then switched
    ckpt = read_checkpoint(last)
    assert ckpt["config"]["ema"] == 0.9 and ckpt["config"]["nesterov"] is True
    assert ckpt["training_state"]["ema"]["updates"] == ckpt["training_state"]["step"] // 2
    bad = CliRunner().invoke(train_cli, ["--ema", "1.5", "--data", "x"])
    assert bad.exit_code == 2 and "--ema" in bad.output
    # Anything else the resumed run would ignore is refused, before any training.
    before = last.read_bytes()
    for extra, named in ((["--epochs", "120"], "--epochs cannot change"),
                         (["--lr", "0.05", "--compile"], "--compile, --lr cannot change"),
                         (["--out", str(tmp_path / "elsewhere")], "is not the run's folder")):
        r = CliRunner().invoke(train_cli, ["--resume", str(last), "--quiet", *extra])
        assert r.exit_code == 2 and named in r.output, r.output
        assert "Traceback" not in r.output
    assert last.read_bytes() == before
    r = CliRunner().invoke(train_cli, ["--resume", str(last), "--quiet", "--device", "cpu",
                                       "--out", str(tmp_path / "run")])  # its own folder: fine
    assert r.exit_code == 0, r.output


# ---- recipe candidates of issue 20: Cutout, linear decay, no decay on norm/bias weights -------
def test_cutout_mask_is_a_clipped_square():
    from vggcifar.data.loader import cutout_mask

    m = cutout_mask(torch.tensor([16, 0, 31]), torch.tensor([16, 0, 5]), 8, 32)
    assert m.shape == (3, 1, 32, 32) and m.dtype == torch.bool
    holes = (~m).sum((1, 2, 3)).tolist()
    assert holes == [64, 16, 5 * 8]  # inside; corner (4x4 left); bottom edge (rows 27-31)
    assert not m[0, 0, 12:20, 12:20].any() and m[0, 0, 11].all() and m[0, 0, :, 20].all()


def test_cutout_masks_a_square_and_keeps_the_rest_of_the_stream(cifar_batches):
    from vggcifar.data import DeviceLoader, load_cifar10
    from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD

    d = load_cifar10(cifar_batches, download=False)
    kw = dict(train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=3)
    plain = DeviceLoader(d.train_x[:256], d.train_y[:256], 64, **kw)
    cut = DeviceLoader(d.train_x[:256], d.train_y[:256], 64, cutout=8, **kw)
    for (xa, ya), (xb, yb) in zip(plain, cut):
        assert torch.equal(ya, yb)  # same order, crops and flips: only the square differs
        zero = (xb == 0).all(1)  # [B, H, W]: pixels set to the mean colour
        changed = (xa != xb).any(1)
        assert (changed <= zero).all()  # every change is a masked pixel
        per_image = zero.sum((1, 2))
        assert ((per_image >= 16) & (per_image <= 64 + 8)).all()  # clipped square (+ stray zeros)
    # evaluation never masks
    ev = DeviceLoader(d.test_x[:64], d.test_y[:64], 64, train=False, mean=CIFAR10_MEAN,
                      std=CIFAR10_STD, cutout=8)
    assert ev.cutout == 0


def test_linear_schedule_and_param_groups():
    from vggcifar.models import create_model
    from vggcifar.training.step import param_groups

    assert lr_factor(20, 100, "linear") == pytest.approx(1.0)
    assert lr_factor(60, 100, "linear") == pytest.approx(0.5)
    assert lr_factor(100, 100, "linear") == pytest.approx(0.0)
    m = create_model("vgg11", width=0.125, head="linear")
    one = param_groups(m, 5e-4)
    assert len(one) == 1 and len(one[0]["params"]) == len(list(m.parameters()))
    decay, free = param_groups(m, 5e-4, norm_and_bias=False)
    assert decay["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)][0]
    assert any(p is bn.weight for p in free["params"])
    assert len(decay["params"]) + len(free["params"]) == len(list(m.parameters()))


def test_recipe_candidates_train_and_resume(cifar_batches, tmp_path):
    opts = dict(cutout=8, wd_norm_bias=False, schedule="linear", epochs=2)
    full = train(tiny(cifar_batches, tmp_path, name="full", **opts))
    cfg = tiny(cifar_batches, tmp_path, name="part", **opts)
    train_interrupted(cfg, after_epochs=1)
    resumed = train(TrainConfig(resume=str(tmp_path / "part" / "last.pt"), progress=False,
                                device="cpu"))
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"])
    saved = json.loads((tmp_path / "part" / "config.json").read_text())
    assert (saved["cutout"], saved["wd_norm_bias"], saved["schedule"]) == (8, False, "linear")


@pytest.mark.parametrize("args, message", [
    (["--cutout", "40"], "Invalid value for '--cutout'"),
    (["--cutout", "8", "--loader", "classic"], "--cutout needs the device loader"),
])
def test_recipe_candidate_options_refuse_what_cannot_run(args, message, tmp_path, cifar_batches):
    r = CliRunner().invoke(train_cli, ["--data", str(cifar_batches), "--out",
                                       str(tmp_path / "runs"), "--quiet"] + args)
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output


def test_options_that_apply_are_not_refused():
    from vggcifar.training.cli import refuse_inapplicable

    ok = [({"loader", "workers"}, {"loader": "classic"}),
          ({"split", "val_size"}, {"split": 1, "val_size": 0}),
          ({"val_size", "val_every"}, {"split": 0.9, "val_size": 100}),
          ({"warmup", "schedule"}, {"schedule": "linear"}),
          ({"dropout"}, {"head": "mlp"}),
          ({"steps"}, {}), ({"epochs", "min_steps"}, {}),
          ({"sync_bn"}, {"sync_bn": False}),  # --no-sync-bn asks for nothing
          (set(), {"loader": "device", "head": "linear", "split": 1, "schedule": "cosine"})]
    for given, values in ok:
        refuse_inapplicable(given, values)
    with pytest.raises(click.UsageError, match="--min-steps applies only with --epochs"):
        refuse_inapplicable({"steps", "min_steps"}, {})
