"""One job per folder: a run folder or a study folder that a live process is writing refuses a
second job (a `--resume` started while the first still runs, or a split process left behind by
a killed study), with a clear error, and a killed study takes its split process with it."""

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

from vggcifar.errors import VggCifarError
from vggcifar.io import LOCK_NAME, FolderLock


def test_a_held_folder_refuses_a_second_lock_until_released(tmp_path):
    with FolderLock(tmp_path, "run folder"):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(VggCifarError, match=rf"another process \(pid {os.getpid()}\) is "
                                                 r"writing the run folder"):
            FolderLock(tmp_path, "run folder")
    assert not (tmp_path / LOCK_NAME).exists()  # released: gone, and free again
    FolderLock(tmp_path, "run folder").release()


def test_a_planted_lock_link_is_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).symlink_to(secret)
    with pytest.raises(VggCifarError, match="not a plain file"):
        FolderLock(folder, "run folder")
    assert secret.read_text() == "password"
    (folder / LOCK_NAME).unlink()
    os.mkfifo(folder / LOCK_NAME)  # would block an open for writing that waits for a reader
    with pytest.raises(VggCifarError, match="is not a plain file"):
        FolderLock(folder, "run folder")
    (folder / LOCK_NAME).unlink()
    os.link(secret, folder / LOCK_NAME)  # a hard link: the lock would truncate the file
    with pytest.raises(VggCifarError, match="is not a plain file"):
        FolderLock(folder, "run folder")
    assert secret.read_text() == "password"


def test_a_lock_file_released_between_open_and_flock_is_not_held(tmp_path, monkeypatch):
    # The holder unlinks .lock and then closes it; a process that opened the old file just
    # before would lock an unlinked inode while a third one locks the new file: two holders.
    real = FolderLock._open_locked
    calls = []

    def open_then_lose_it(self, *a):
        fd = real(self, *a)
        calls.append(fd)
        if len(calls) == 1:
            self.path.unlink()  # as the previous holder's release()
        return fd

    monkeypatch.setattr(FolderLock, "_open_locked", open_then_lose_it)
    lock = FolderLock(tmp_path, "run folder")
    assert len(calls) == 2 and lock.fd == calls[1]
    st, now = os.fstat(lock.fd), os.lstat(tmp_path / LOCK_NAME)
    assert (st.st_ino, st.st_dev) == (now.st_ino, now.st_dev)
    lock.release()


def test_vgg_train_refuses_a_run_folder_another_process_writes(tmp_path, cifar_batches):
    from vggcifar.training.cli import main

    run = tmp_path / "run"
    run.mkdir()
    with FolderLock(run, "run folder"):
        r = CliRunner().invoke(main, ["--data", str(cifar_batches), "--out", str(run),
                                      "--device", "cpu", "--epochs", "1", "--width", "0.125",
                                      "--quiet"])
        assert r.exit_code == 2, r.output
        assert "another process" in r.output and "Traceback" not in r.output
        assert (run / LOCK_NAME).read_text() == str(os.getpid())  # the holder's lock stays
    assert list(run.iterdir()) == []  # the refused start left nothing behind


def test_vgg_study_resume_refuses_a_study_that_is_running(tmp_path):
    from vggcifar.study.cli import main

    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"splits": [0.5], "config": {}}))
    with FolderLock(study, "study folder"):
        r = CliRunner().invoke(main, ["--out", str(study), "--resume", "--quiet"])
    assert r.exit_code == 2, r.output
    assert "another process" in r.output and "study folder" in r.output


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_study_takes_its_split_process_with_it(tmp_path, cifar_batches):
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "vggcifar.study.cli", "--splits", "1", "--arch", "vgg11",
           "--width", "0.125", "--epochs", "2000", "--batch-size", "32", "--device", "cpu",
           "--quiet", "--data", str(cifar_batches), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    lock = out / "split-1" / LOCK_NAME
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().isdigit()):
            assert proc.poll() is None, "the study ended early"
            assert time.monotonic() < deadline, "the split never started"
            time.sleep(0.05)
        child = int(lock.read_text())
        assert child != proc.pid and _alive(child)
        proc.send_signal(signal.SIGKILL)  # the study alone, not its process group
        proc.wait()
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the split's process outlived its study"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
