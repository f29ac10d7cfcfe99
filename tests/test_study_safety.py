"""`vgg-study --resume` and `--report-only` on damaged or planted study files: a clear one-line
error naming the file, before any training and without writing a report; and a split stopped
before it could be continued still restarts. Hand-written study folders; nothing trains."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggcifar.errors import VggCifarError
from vggcifar.study import launch
from vggcifar.study.cli import main
from vggcifar.study.collect import collect
from vggcifar.study.layout import run_name, split_state, write_manifest
from vggcifar.study.runner import _shared_config
from vggcifar.training import TrainConfig, trainer

CFG = TrainConfig(arch="vgg11", width=0.125, head="linear", epochs=1, batch_size=32,
                  device="cpu", progress=False)
METRICS_HEADER = ("epoch,step,train_loss,train_acc,lr,val_loss,val_acc,epoch_time_s,"
                  "train_time_s,images_per_s,peak_mem_mb\n")


def _within(seconds: float, fn):
    """``fn()``'s result; fails (instead of hanging the suite) if it blocks on a FIFO."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds} s"
    return box["value"]


def _invoke(*args):
    return _within(30, lambda: CliRunner().invoke(main, [str(a) for a in args]))


def _study(root: Path, data: Path, splits=(1.0,)) -> Path:
    out = root / "s"
    out.mkdir()
    write_manifest(out, {"version": 1, "created": "2025-01-01T00:00:00+00:00",
                         "splits": list(splits), "min_steps": 0, "split_epochs": {},
                         "preset": None, "config": _shared_config(replace(CFG, data=str(data))),
                         "note": None, "runs": {}, "sessions": []})
    return out


def _finished_split(out: Path, split: float) -> Path:
    d = out / run_name(split)
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({
        "test_accuracy": 0.5, "train_images": 400, "batch_size": 32, "epochs": 1, "steps": 13,
        "total_time_s": 3.0, "per_class_accuracy": {"cat": 0.5}, "device": "cpu",
        "mean_images_per_s": 150.0}))
    (d / "config.json").write_text(json.dumps({**CFG.to_dict(), "split": split}))
    (d / "metrics.csv").write_text(METRICS_HEADER + "1,13,2.3,0.1,0.01,,,3.0,2.5,150.0,100.0\n")
    return d


def _refused(r, *words):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]) == 1
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.mark.parametrize("manifest, message", [
    ("[]", "not a JSON object"), ('{"splits": [1]}', "'config' is not a dict"),
    ('{"splits": ["x"], "config": {}}', "'splits' is not a list of fractions"),
    ('{"splits": [1], "config": {}, "runs": []}', "'runs' is not a dict"),
    ('{"splits": [1], "con', "not JSON"), ("fifo", "not a regular file"),
])
def test_a_damaged_study_json_is_a_clear_error(manifest, message, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    if manifest == "fifo":
        os.mkfifo(out / "study.json")
    else:
        (out / "study.json").write_text(manifest)
    for mode in ("--resume", "--report-only"):
        _refused(_invoke(mode, "--out", out, "--quiet"), str(out / "study.json"), message)
    assert sorted(p.name for p in out.iterdir()) == ["study.json"]


DAMAGE = [
    ("summary.json", lambda d: (d / "summary.json").write_text("{}"), "no valid test_accuracy"),
    ("summary.json", lambda d: (d / "summary.json").write_text('{"test_acc'), "not JSON"),
    ("metrics.csv", lambda d: (d / "metrics.csv").unlink(), "cannot read"),
    ("metrics.csv", lambda d: (d / "metrics.csv").write_text(METRICS_HEADER), "holds no epoch"),
    ("metrics.csv", lambda d: (d / "metrics.csv").write_text(
        METRICS_HEADER + "1,x,2.3,0.1,0.01,,,3.0,2.5,150.0,100.0\n"), "no number in step"),
    ("config.json", lambda d: (d / "config.json").write_text("[1]"), "not a JSON object"),
]


def test_damaged_split_files_are_named_and_no_report_is_written(tmp_path, cifar_batches):
    for i, (name, damage, message) in enumerate(DAMAGE + [
            (n, lambda d, n=n: ((d / n).unlink(), os.mkfifo(d / n)), "not a regular file")
            for n in ("summary.json", "config.json", "metrics.csv")]):
        (tmp_path / str(i)).mkdir()
        out = _study(tmp_path / str(i), cifar_batches)
        d = _finished_split(out, 1.0)
        assert len(collect(out)["rows"]) == 1  # intact, it is a finished split
        damage(d)
        _refused(_invoke("--report-only", "--out", out), str(d / name), message)
        assert not (out / "report.md").exists()


def test_resume_refuses_a_split_with_a_damaged_summary_before_training(tmp_path, cifar_batches,
                                                                       monkeypatch):
    monkeypatch.setattr(launch, "train_split", lambda *a, **k: pytest.fail("trained"))
    out = _study(tmp_path, cifar_batches, splits=(0.5, 1.0))
    d = _finished_split(out, 1.0)
    (d / "summary.json").write_text('{"test_accuracy": 0.5, "train')  # cut short
    (d / "best.pt").write_text("weights")
    assert split_state(out, 1.0) == "new"  # not finished: its summary does not parse
    r = _invoke("--resume", "--out", out, "--no-isolate", "--quiet")
    _refused(r, "split 1 can neither be kept nor continued", str(d / "summary.json"))
    assert (d / "best.pt").read_text() == "weights"


def test_resume_restarts_a_split_stopped_before_it_could_be_continued(tmp_path, cifar_batches,
                                                                      monkeypatch):
    def reached(self):
        raise VggCifarError(f"reached the training of {self.run_dir.name}")

    monkeypatch.setattr(trainer._Run, "setup", reached)
    out = _study(tmp_path, cifar_batches)
    d = out / run_name(1.0)
    d.mkdir()
    (d / "config.json").write_text("{}")  # stopped before its first epoch
    (d / "metrics.csv").write_text(METRICS_HEADER)
    (d / ".lock").write_text("12345")
    _refused(_invoke("--resume", "--out", out, "--no-isolate", "--quiet"),
             "reached the training of split-1")
    # Stopped after an epoch but before its first last.pt (--save-every, or killed while
    # writing it): nothing to continue from, so the split starts again.
    (d / "metrics.csv").write_text(METRICS_HEADER + "1,13,2.3,0.1,0.01,,,3.0,2.5,150.0,100.0\n")
    (d / "best.pt").write_text("weights")
    _refused(_invoke("--resume", "--out", out, "--no-isolate", "--quiet"),
             "reached the training of split-1")
