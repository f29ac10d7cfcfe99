"""`vgg-train` never overwrites a run, never waits on a planted FIFO, and refuses with a clear
error a damaged last.pt, data that is not the run's, and options no run can use. Tiny synthetic
data, a width-reduced VGG11."""

from __future__ import annotations

import math
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vggcifar.checkpoint_file import read_checkpoint
from vggcifar.data import DeviceLoader, load_cifar10
from vggcifar.errors import VggCifarError
from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD
from vggcifar.testing import write_image_folder
from vggcifar.training import TrainConfig, train, trainer
from vggcifar.training.cli import main as train_cli
from vggcifar.training.cli import run_folder_options
from vggcifar.training.distributed import DistInfo

# Should a refusal ever be missing, the run it lets through takes a second, not hours.
TINY_CLI = ["--arch", "vgg11", "--width", "0.125", "--head", "linear", "--steps", "1",
            "--device", "cpu", "--quiet"]
FINISHED = {"config.json": "{}", "summary.json": '{"test_accuracy": 0.9}',
            "metrics.csv": "epoch,step\n1,10\n", "best.pt": "weights"}


def tiny(data, out, **kw) -> TrainConfig:
    base = dict(arch="vgg11", width=0.125, head="linear", epochs=2, lr=0.05, split=0.8,
                data=str(data), out=str(out), device="cpu", progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, cifar_batches) -> Path:
    """A 2-epoch run stopped (Ctrl-C) after its first epoch: config.json, metrics.csv, best.pt,
    last.pt."""
    out = tmp_path_factory.mktemp("runs")
    real = trainer._Run.train_epoch

    def stop_at_second(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer._Run, "train_epoch", stop_at_second)
        with pytest.raises(KeyboardInterrupt):
            train(tiny(cifar_batches, out, name="a", val_every=1))
    assert read_checkpoint(out / "a" / "last.pt")["epoch"] == 1
    return out / "a"


def _no_figures(monkeypatch):
    for fig in ("plot_samples", "plot_confusion", "plot_curves"):
        monkeypatch.setattr(trainer, fig, lambda *a, **k: None)


def _within(seconds: float, fn):
    """``fn()``'s result or exception; fails (instead of hanging the suite) if it blocks."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _start(cfg, restart=False):
    """The trainer's checks on its run folder, without training."""
    return trainer._Run(cfg, torch.device("cpu"), DistInfo.from_env(), restart=restart)


# ---------------------------------------------------------------------- finding 1
@pytest.mark.parametrize("files", [FINISHED, {"best.pt": "w"}, {"summary.json": "{}"},
                                   {"metrics.csv": "epoch,step\n1,10\n"}])
def test_a_run_without_last_pt_is_never_overwritten(files, tmp_path, cifar_batches):
    run = tmp_path / "old"
    run.mkdir()
    for name, text in files.items():
        (run / name).write_text(text)
    r = CliRunner().invoke(train_cli, ["--data", str(cifar_batches), "--out", str(run),
                                       *TINY_CLI])
    assert r.exit_code == 2, r.output
    assert "already holds a run" in r.stderr and "pick another --out" in r.stderr
    assert "Traceback" not in r.output
    assert {p.name: p.read_text() for p in run.iterdir()} == files


def test_a_start_stopped_before_its_first_epoch_does_not_block(tmp_path, cifar_batches):
    run = tmp_path / "s"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.csv").write_text("epoch,step\n")
    (run / ".lock").write_text("12345")
    _start(tiny(cifar_batches, tmp_path, name="s"))
    # A resumed study restarts its split over an unfinished run that cannot be continued...
    (run / "metrics.csv").write_text("epoch,step\n1,10\n")
    (run / "best.pt").write_text("w")
    with pytest.raises(VggCifarError, match=r"\(best.pt; no last.pt"):
        _start(tiny(cifar_batches, tmp_path, name="s"))
    _start(tiny(cifar_batches, tmp_path, name="s"), restart=True)
    # ... but never over a finished one.
    (run / "summary.json").write_text("{}")
    with pytest.raises(VggCifarError, match="summary.json"):
        _start(tiny(cifar_batches, tmp_path, name="s"), restart=True)


# ---------------------------------------------------------------------- finding 2
def test_fifos_are_refused_not_waited_on(tmp_path, cifar_batches):
    fifo = tmp_path / "last.pt"
    os.mkfifo(fifo)
    with pytest.raises(VggCifarError, match="not a regular file"):
        _within(10, lambda: read_checkpoint(fifo))
    r = _within(20, lambda: CliRunner().invoke(train_cli, ["--resume", str(fifo), "--quiet"]))
    assert r.exit_code == 2 and "not a regular file" in r.stderr, r.output
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "metrics.csv")
    with pytest.raises(VggCifarError, match="already holds a run"):
        _within(10, lambda: _start(tiny(cifar_batches, tmp_path, name="run")))


# ---------------------------------------------------------------------- finding 3
def _damage(ckpt):
    ts = ckpt["training_state"]
    return [
        (lambda: ckpt.pop("config"), "holds no training options"),
        (lambda: ckpt.__setitem__("config", [1]), "holds no training options"),
        (lambda: ckpt["config"].__setitem__("schedule", "bogus"), "unknown schedule 'bogus'"),
        (lambda: ckpt["config"].__setitem__("epochs", "x"), "wrong type"),
        (lambda: ckpt.__setitem__("epoch", "x"), "epoch or step is not a whole number"),
        (lambda: ts.__setitem__("best_acc", "x"), "best validation accuracy is not a number"),
        (lambda: ckpt.__setitem__("metrics", ["x"]), "metrics are not a list of epoch records"),
        (lambda: ckpt.__setitem__("metrics", [{"epoch": 1}]), "metrics are not a list"),
        (lambda: ts.__setitem__("optimizer", {"state": {}, "param_groups": [{"params": [0]}]}),
         "training state does not fit this run"),
    ]


def test_a_damaged_last_pt_is_refused_before_training(interrupted, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer._Run, "train_epoch", lambda *a: pytest.fail("trained"))
    for i in range(len(_damage(read_checkpoint(interrupted / "last.pt")))):
        run = tmp_path / f"r{i}"
        shutil.copytree(interrupted, run)
        ckpt = read_checkpoint(run / "last.pt")
        damage, message = _damage(ckpt)[i]
        damage()
        torch.save(ckpt, run / "last.pt")
        before = (run / "last.pt").read_bytes()
        with pytest.raises(VggCifarError, match=message) as e:
            train(TrainConfig(resume=str(run / "last.pt"), device="cpu", progress=False))
        assert str(run / "last.pt") in str(e.value)
        assert (run / "last.pt").read_bytes() == before


# ---------------------------------------------------------------------- finding 4
def test_resume_refuses_data_with_other_classes(interrupted, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer._Run, "train_epoch", lambda *a: pytest.fail("trained"))
    renamed = write_image_folder(tmp_path / "renamed", n_train=20, n_test=10)
    for split in ("train", "test"):
        (renamed / split / "airplane").rename(renamed / split / "plane")
    two = tmp_path / "two"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            shutil.copytree(renamed / split / "cat", two / split / cls)
    for data, count in ((renamed, 10), (two, 2)):
        with pytest.raises(VggCifarError, match=rf"has {count} classes .* was trained on 10 "
                                                r"\(airplane, automobile"):
            train(TrainConfig(resume=str(interrupted / "last.pt"), data=str(data), device="cpu",
                              progress=False))


# ---------------------------------------------------------------------- findings 6 and 7
@pytest.mark.parametrize("option, message", [
    ({"momentum": -0.1}, "momentum must be in"), ({"momentum": 1.5}, "momentum must be in"),
    ({"momentum": math.nan}, "finite"), ({"lr": math.nan}, "finite"),
    ({"weight_decay": math.inf}, "finite"), ({"label_smoothing": math.nan}, "finite"),
    ({"momentum": 0.0}, "--no-nesterov"), ({"seed": 2**70}, "seed must be"),
    ({"seed": -2**63 - 1}, "seed must be"), ({"seed": "1"}, "seed must be"),
])
def test_options_no_run_can_use_are_refused(option, message):
    with pytest.raises(VggCifarError, match=message):
        TrainConfig(**option).validate()


def test_every_seed_torch_takes_runs_and_momentum_zero_without_nesterov(tmp_path, cifar_batches):
    TrainConfig(momentum=0.0, nesterov=False).validate()
    x, y = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4)
    for seed in (2**64 - 1, -2**63):
        TrainConfig(seed=seed).validate()
        loader = DeviceLoader(x, y, 2, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=seed)
        assert len(list(loader)) == 2
    r = CliRunner().invoke(train_cli, ["--data", str(cifar_batches), "--seed", str(2**70),
                                       "--out", str(tmp_path / "r"), *TINY_CLI])
    assert r.exit_code == 2 and "seed must be" in r.stderr and "Traceback" not in r.output


# ---------------------------------------------------------------------- finding 8
def test_resume_through_a_link_writes_in_the_links_folder(interrupted, tmp_path, monkeypatch,
                                                          capsys):
    _no_figures(monkeypatch)
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(interrupted, a)
    b.mkdir()
    (b / "last.pt").symlink_to("../a/last.pt")
    with pytest.raises(VggCifarError, match="has no best.pt"):  # the run's end needs it
        train(TrainConfig(resume=str(b / "last.pt"), device="cpu", progress=False))
    (b / "best.pt").symlink_to("../a/best.pt")
    assert run_folder_options(str(b), str(b / "last.pt")) == {"resume": str(b / "last.pt")}
    assert "ignored" not in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    s = train(TrainConfig(resume=str(b / "last.pt"), device="cpu", progress=False))
    assert s["run_dir"] == str(b.absolute()) and s["epochs"] == 2
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before
    for name in ("last.pt", "best.pt"):
        assert not (b / name).is_symlink() and (b / name).is_file()
    assert read_checkpoint(b / "last.pt")["epoch"] == 2
    assert (b / "summary.json").is_file()


# ---------------------------------------------------------------------- hidden folders
def test_hidden_folders_are_not_classes(tmp_path):
    root = write_image_folder(tmp_path / "img", n_train=20, n_test=10)
    data = load_cifar10(root, download=False, verbose=False, cache_dir=tmp_path / "cache")
    assert len(data.classes) == 10
    # A cache written when hidden folders counted as classes (same image files) is rebuilt.
    (cache,) = (tmp_path / "cache").glob("cifar10-*.pt")
    c = torch.load(cache, weights_only=True)
    torch.save({**c, "classes": [".ipynb_checkpoints", *c["classes"]]}, cache)
    for split in ("train", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()
    again = load_cifar10(root, download=False, verbose=False, cache_dir=tmp_path / "cache")
    assert again.classes == data.classes and not any(c.startswith(".") for c in again.classes)
    assert torch.equal(again.train_y, data.train_y)


@pytest.mark.parametrize("updates", [-5, -11, float("inf"), True, "7", None])
def test_a_damaged_ema_update_count_is_refused(updates):
    # -5 made the average overshoot the weights, -11 divided by zero, inf overflowed int()
    from vggcifar.training.ema import WeightEMA

    ema = WeightEMA(torch.nn.Linear(2, 2), 0.99)
    with pytest.raises(ValueError, match="update count"):
        ema.load_state(ema.module.state_dict(), {"updates": updates})
    ema.load_state(ema.module.state_dict(), {"updates": 12})
    assert ema.updates == 12 and 0 < ema.current_decay() <= 0.99
