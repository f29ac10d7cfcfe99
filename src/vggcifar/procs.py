"""A command in its own process group, with a deadline: the group (the command and every worker
it started, e.g. `vgg-study`'s spawned split process) is killed as a whole when time is up, and
any process left in it after a normal exit is killed too, so nothing outlives its slot.

POSIX only (process groups, ``killpg``); standard library only, so importing it is cheap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``.

    Reads ``/proc`` where there is one: ``killpg(pgid, 0)`` also succeeds while only zombies are
    left (killed workers whose parent died are reaped by init only later).
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_group(pgid: int, proc: subprocess.Popen | None = None, grace_s: float = 3.0) -> bool:
    """SIGTERM the process group, SIGKILL what is left after ``grace_s``.

    Args:
        proc: the group's leader, reaped on the way (else it stays a zombie and counts as gone).
    Returns:
        True when no live process is left in the group.
    """
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        t = time.perf_counter()
        while True:
            if proc is not None:
                proc.poll()
            if not group_alive(pgid):
                return True
            if time.perf_counter() - t >= wait:
                break
            time.sleep(0.1)
    return False


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def kill_group_now(pgid: int, proc: subprocess.Popen | None = None, grace_s: float = 3.0) -> bool:
    """:func:`kill_group` with SIGINT, SIGTERM and SIGHUP held back until it is done: a second
    Ctrl-C or SIGTERM arriving in the grace period would otherwise raise inside its sleep and
    skip the SIGKILL, leaving the group running. Signals held back are delivered afterwards."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return kill_group(pgid, proc, grace_s)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run_group(cmd: list[str], log: Path, timeout: float, env: dict | None = None,
              cwd: Path | None = None, label: str = "run_group") -> dict:
    """Run ``cmd`` in its own session (process group), stdout and stderr appended to ``log``.

    The command line goes first in the log, a ``[label] status ...`` line last. On timeout the
    whole group is killed; after a normal exit any process left in it is killed as well. An
    interrupt (KeyboardInterrupt, e.g. from a SIGTERM handler) takes the group down, then
    propagates.

    Returns:
        ``{"status": "ok" | "failed" | "timeout", "rc": exit code (None on timeout),
        "wall_s": seconds, "group_gone": no live process left in the group}``.
    """
    t = time.perf_counter()
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=max(0.1, timeout))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
        except BaseException:  # interrupted: take the group down with us
            kill_group_now(p.pid, p, grace_s=1.0)
            p.wait()
            raise
        gone = kill_group_now(p.pid, p, grace_s=3.0 if status == "timeout" else 0.5)
        if p.returncode is None:
            p.wait()
        wall = time.perf_counter() - t
        f.write(f"\n[{label}] {status} rc={rc} after {wall:.1f}s (limit {timeout:.0f}s); "
                f"process group {'gone' if gone else 'NOT gone'}\n".encode())
    return {"status": status, "rc": rc, "wall_s": round(wall, 2), "group_gone": gone}
