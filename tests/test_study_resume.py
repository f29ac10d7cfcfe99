"""A study killed at an arbitrary moment (SIGKILL to its whole process group, as when a machine
goes away) and resumed with `vgg-study --resume` ends with the same report as an uninterrupted
study of the same options. Tiny synthetic data, a width-reduced VGG11."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggcifar.study import read_manifest
from vggcifar.study.collect import read_metrics
from vggcifar.study.cli import main
from vggcifar.training import trainer

# Two splits: 0.5 (7 steps per epoch) finishes, 1 (15 steps per epoch) is killed after its first
# of three epochs.
STUDY = ["--splits", "0.5,1", "--arch", "vgg11", "--width", "0.125", "--epochs", "3",
         "--batch-size", "32", "--device", "cpu", "--quiet"]
# Row fields that depend on when and how the study ran, not on what it trained.
TIMING = {"train_epoch_time_s", "train_epoch_time_estimated", "mean_epoch_time_s", "images_per_s",
          "epoch_images_per_s_range", "peak_memory_mb", "peak_reserved_mb", "total_time_s",
          "train_time_s", "cpu_share", "load_avg_1min_at_start", "resumed", "isolated"}


@pytest.fixture
def one_thread(monkeypatch):
    """One PyTorch thread here and in the study's processes: the killed and the uninterrupted
    study compute alike, and tiny models run much faster on a busy machine (two threads that
    wait for each other at every operation lose most of their time when the cores are shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def _skip_run_figures(monkeypatch):
    """The run folders' own figures are the trainer's tests' business; here they only cost time."""
    for fig in ("plot_samples", "plot_confusion", "plot_curves"):
        monkeypatch.setattr(trainer, fig, lambda *a, **k: None)


def _kill_during_last_split(out: Path, data: Path) -> None:
    """Start the study in its own process group (each split in its own process, the default)
    and SIGKILL the whole group once the last split has written its first last.pt."""
    cmd = [sys.executable, "-m", "vggcifar.study.cli", *STUDY, "--data", str(data),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    last = out / "split-1" / "last.pt"
    deadline = time.monotonic() + 120
    try:
        while not last.exists():
            if proc.poll() is not None:
                pytest.fail(f"the study ended before it could be killed: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the last split wrote no last.pt within 120 s")
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def _same(a, b, path="") -> None:
    """Recursive equality; floats to 1e-9 (accuracies are counts over a fixed set)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-9), path
    else:
        assert a == b, path


def _trained(rep: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rep["splits"]]


def test_killed_study_resumes_to_the_same_report(tmp_path, cifar_batches, monkeypatch,
                                                   one_thread):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _kill_during_last_split(killed, cifar_batches)
    assert (killed / "split-0.5" / "summary.json").is_file()
    assert (killed / "split-1" / "last.pt").is_file()
    assert not (killed / "split-1" / "summary.json").exists()  # killed mid-split
    assert not (killed / "report.json").exists()

    _skip_run_figures(monkeypatch)
    r = CliRunner().invoke(main, ["--out", str(killed), "--resume", "--no-isolate", "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*STUDY, "--data", str(cifar_batches), "--out", str(whole),
                                  "--no-isolate"])
    assert r.exit_code == 0, r.output

    got = json.loads((killed / "report.json").read_text())
    want = json.loads((whole / "report.json").read_text())
    _same(_trained(got), _trained(want))
    for part in ("accuracy", "reference"):
        _same(got["analysis"][part], want["analysis"][part])
    assert got["unfinished"] == [] and [r["split"] for r in got["splits"]] == [0.5, 1.0]
    rows = {r["split"]: r for r in got["splits"]}
    assert rows[1.0]["resumed"] and not rows[0.5]["resumed"]
    assert rows[1.0]["epochs"] == 3  # the epoch before the kill and the two after it
    metrics = (killed / "split-1" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 3
    # The resumed split's time adds up both segments (all 3 epochs), and is no estimate.
    epoch_times = sum(m["epoch_time_s"] for m in read_metrics(killed / "split-1" / "metrics.csv"))
    assert rows[1.0]["total_time_s"] >= epoch_times and not rows[1.0]["total_time_estimated"]

    # Each start and each resume, with its time and command.
    start, resume = got["study"]["sessions"]
    assert (start["kind"], resume["kind"]) == ("start", "resume")
    assert start["command"].startswith("vgg-study --splits 0.5,1 ")
    assert resume["command"] == f"vgg-study --out {killed} --resume --no-isolate --quiet"
    assert start["started"] <= resume["started"] and resume["finished"]
    assert start["finished"] is None and start["in_progress"] == 1.0
    assert start["trained"] == [0.5] and resume["skipped"] == [0.5]
    assert resume["trained"] == [1.0]
    # The resume announced (and recorded) only the work left: split 1 from its second epoch.
    left = read_manifest(killed)["sessions"][1]["estimate"]["splits"]
    assert list(left) == ["1"] and (left["1"]["epochs_done"], left["1"]["epochs"]) == (1, 3)
    md = (killed / "report.md").read_text()
    assert "stopped during split 100%" in md and "Session resumed" in md
    assert "total time adds up its sessions" in md and "≈" not in md

    # A resumed split whose summary came from a trainer that timed only its last segment:
    # the report rebuilds its time from the epochs and marks it as an estimate.
    summary_path = killed / "split-1" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["resumed_after_epochs"]
    summary["total_time_s"] = 0.001
    summary_path.write_text(json.dumps(summary))
    r = CliRunner().invoke(main, ["--out", str(killed), "--report-only"])
    assert r.exit_code == 0, r.output
    row = next(r for r in json.loads((killed / "report.json").read_text())["splits"]
               if r["split"] == 1.0)
    assert row["total_time_estimated"] and row["total_time_s"] == pytest.approx(epoch_times)
    assert "≈ " in (killed / "report.md").read_text()
