"""A study killed at an arbitrary moment (SIGKILL to its whole process group, as when a machine
goes away) and resumed with `vgg-study --resume` ends with the same report as an uninterrupted
study of the same options. Tiny synthetic data, a width-reduced VGG11."""

from __future__ import annotations

import json
import os
import shutil
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
    return [{k: v for k, v in r.items() if k not in TIMING | {"machine"}} for r in rep["splits"]]


def _invoke(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def _resume_and_run_whole(resumed: Path, whole: Path, data: Path) -> tuple[dict, dict]:
    """Resume the study in ``resumed``, run the same study uninterrupted into ``whole``; both
    reports."""
    _invoke("--out", resumed, "--resume", "--no-isolate", "--quiet")
    _invoke(*STUDY, "--data", data, "--out", whole, "--no-isolate")
    return (json.loads((resumed / "report.json").read_text()),
            json.loads((whole / "report.json").read_text()))


def test_killed_study_resumes_to_the_same_report(tmp_path, cifar_batches, monkeypatch,
                                                   one_thread):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _kill_during_last_split(killed, cifar_batches)
    assert (killed / "split-0.5" / "summary.json").is_file()
    assert (killed / "split-1" / "last.pt").is_file()
    assert not (killed / "split-1" / "summary.json").exists()  # killed mid-split
    assert not (killed / "report.json").exists()

    _skip_run_figures(monkeypatch)
    # Before resuming: keep the results without checkpoints (what gets committed), as if the
    # machine were about to go away.
    kept = tmp_path / "kept"
    assert "finished splits: split-0.5" in _invoke("--out", killed, "--report-only",
                                                   "--copy-results", kept)
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert "study.json" in files and "split-0.5/summary.json" in files
    assert "split-0.5/metrics.csv" in files and "report.json" in files
    assert not any(f.endswith(".pt") or f.startswith("split-1/") for f in files), files
    assert sum((kept / f).stat().st_size for f in files) < 2 * 2**20

    got, want = _resume_and_run_whole(killed, whole, cifar_batches)
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


def test_kept_results_resume_on_another_machine(tmp_path, cifar_batches, monkeypatch, one_thread):
    """A study's results copied without checkpoints (--copy-results) continue elsewhere: a copy
    of them resumed on a machine with another CPU keeps the finished split, trains the rest to
    the same result as a study that never moved, and the report says which split ran where."""
    from vggcifar.study import runner

    _skip_run_figures(monkeypatch)
    first, kept, moved, whole = (tmp_path / n for n in ("first", "kept", "moved", "whole"))
    _invoke(*STUDY[:1], "0.5", *STUDY[2:], "--data", cifar_batches, "--out", first,
            "--no-isolate")
    # The first machine's study folder, with split 1 added to its plan as not yet trained.
    manifest = json.loads((first / "study.json").read_text())
    manifest["splits"] = [0.5, 1.0]
    (first / "study.json").write_text(json.dumps(manifest))
    _invoke("--out", first, "--report-only", "--copy-results", kept)
    shutil.copytree(kept, moved)
    monkeypatch.setattr(runner, "cpu_model", lambda: "Other CPU 9000")
    got, want = _resume_and_run_whole(moved, whole, cifar_batches)
    _same(_trained(got), _trained(want))
    rows = {r["split"]: r for r in got["splits"]}
    assert rows[1.0]["machine"] == "Other CPU 9000" != rows[0.5]["machine"]
    assert got["study"]["sessions"][-1]["skipped"] == [0.5]
    assert "Other CPU 9000 for 100%" in got["study"]["device_description"]
    assert "ran on different machines" in " ".join(got["analysis"]["time"]["text"])
    md = (moved / "report.md").read_text()
    assert "| machine |" in md and "Other CPU 9000" in md

    # The copy refuses what would mix studies or copy a study into itself.
    r = CliRunner().invoke(main, ["--out", str(whole), "--report-only", "--copy-results",
                                  str(moved)])
    assert r.exit_code != 0 and "holds another study" in r.output
    r = CliRunner().invoke(main, ["--out", str(whole), "--report-only", "--copy-results",
                                  str(whole / "inside")])
    assert r.exit_code != 0 and "outside the study folder" in r.output


def test_copy_results_skips_links_checkpoints_and_unfinished_splits(tmp_path):
    """The copy is meant for committing: a link planted in a study folder (to a secret, say) is
    not followed, checkpoints and oversized files stay behind, unfinished splits are left out."""
    from vggcifar.study.layout import MAX_RESULT_BYTES, copy_results

    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    study, dest = tmp_path / "study", tmp_path / "dest"
    done, partial = study / "split-0.5", study / "split-1"
    for d in (done, partial, study / "figures"):
        d.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"created": "x", "splits": [0.5, 1.0],
                                                   "config": {}}))
    (done / "summary.json").write_text(json.dumps({  # what a finished split's summary holds
        "test_accuracy": 0.5, "train_images": 10, "batch_size": 2, "epochs": 1, "steps": 5,
        "total_time_s": 1.0, "per_class_accuracy": {}}))
    (done / "config.json").write_text("{}")
    (done / "metrics.csv").symlink_to(secret)
    (done / "curves.png").symlink_to(secret)
    (done / "best.pt").write_bytes(b"weights")
    (done / "big.png").write_bytes(b"0" * (MAX_RESULT_BYTES + 1))
    (partial / "last.pt").write_bytes(b"weights")
    (partial / "metrics.csv").write_text("epoch\n1\n")
    (study / "figures" / "accuracy.png").write_bytes(b"png")
    (study / "report.md").symlink_to(secret)

    copied = copy_results(study, dest)
    assert sorted(copied) == ["figures/accuracy.png", "split-0.5/config.json",
                              "split-0.5/summary.json", "study.json"]
    on_disk = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert "password" not in "".join(p.read_text() for p in dest.rglob("*") if p.is_file())
    assert not any(p.endswith(".pt") or p.startswith("split-1") for p in on_disk)
