"""How a study launches one split: in this process, or in its own spawned process so that the
split's peak memory and CPU time are its own (``vgg-study --isolate``, the default)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback

from ..errors import VggCifarError
from ..training import trainer
from ..training.config import TrainConfig


def cpu_seconds(children: bool) -> float:
    """User + system CPU time of this process, or of its finished child processes."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def threads() -> int:
    """PyTorch's intra-op threads: what a split's CPU share is measured against."""
    import torch

    return max(1, torch.get_num_threads())


def train_split(cfg: TrainConfig, isolate: bool, restart: bool = False) -> dict:
    """Train one split by :func:`vggcifar.training.train` and return its summary (``restart``:
    as the trainer's, for a split that stopped before it could be continued).

    Raises:
        VggCifarError: the split's training refused an option, or its process died.
        KeyboardInterrupt: interrupted (in the child too).
    """
    if not isolate:
        return trainer.train(cfg, restart=restart)
    ctx = multiprocessing.get_context("spawn")
    recv_conn, send_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(cfg.to_dict(), send_conn, os.getpid(), restart),
                       name=f"vgg-study-{cfg.name}")
    proc.start()
    send_conn.close()
    try:
        try:
            msg = recv_conn.recv()
        except EOFError:
            msg = None
        proc.join()
    except KeyboardInterrupt:
        # The child got the same Ctrl-C; give it time to stop, then make sure it is gone.
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        raise
    finally:
        recv_conn.close()
    if msg is None:
        code = proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        hint = " (signal 9 is often the out-of-memory killer)" if code == -9 else ""
        raise VggCifarError(f"training split {cfg.split:g} stopped: its process died ({how})"
                            f"{hint}; continue the study with --resume")
    kind, payload = msg
    if kind == "ok":
        return payload
    if kind == "user":
        raise VggCifarError(f"split {cfg.split:g}: {payload}")
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise RuntimeError(f"training split {cfg.split:g} failed in its process:\n{payload}")


def _die_with_parent(parent_pid: int) -> None:
    """End this process when the study's process ends, however it ends (Linux: the kernel
    sends SIGTERM). Otherwise a split whose study was killed trains on unseen, and a
    ``--resume`` of the study would meet it writing the same run folder (the folder's lock
    refuses that, but the study could not continue until the orphan finished)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: no such call; the run folder's lock remains
        return
    if os.getppid() != parent_pid:  # the parent died before the call above took effect
        os._exit(1)


def _worker(cfg_dict: dict, conn, parent_pid: int | None = None, restart: bool = False) -> None:
    """Entry point of a split's own process (spawned): train and send back the summary."""
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    try:
        summary = trainer.train(TrainConfig.from_dict(cfg_dict), restart=restart)
        conn.send(("ok", summary))
    except VggCifarError as e:
        conn.send(("user", str(e)))
    except KeyboardInterrupt:
        conn.send(("interrupt", ""))
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
