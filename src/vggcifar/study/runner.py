"""Run a training-fraction study: one ordinary run folder per split, all trained by
:func:`vggcifar.training.train`, inside one study folder that can be resumed (its layout:
:mod:`vggcifar.study.layout`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..data.splits import check_fraction
from ..errors import VggCifarError
from ..io import check_writable
from ..training import trainer
from ..training.config import TrainConfig, resolve_device
from ..training.distributed import DistInfo
from ..training.plan import plan_run
from .layout import (MANIFEST, MANIFEST_VERSION, read_manifest, run_name,  # noqa: F401
                     set_note, split_state, write_manifest)
from .report import write_report

# Options a resumed study may change: where the data is, which device, how chatty, how splits
# are launched. Everything else must match the interrupted study.
RESUME_MAY_CHANGE = {"data", "download", "device", "progress", "workers"}
# TrainConfig fields that the study sets per split (never part of the shared options).
PER_SPLIT_FIELDS = {"split", "name", "out", "resume"}


def parse_splits(text: str | list | tuple) -> list[float]:
    """``"0.01,0.1,0.5"`` (or a sequence of numbers) -> sorted fractions.

    Raises:
        VggCifarError: empty list, a value that is not a number or outside (0, 1], or the same
            fraction twice.
    """
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    items = [s for s in items if not (isinstance(s, str) and s == "")]
    if not items:
        raise VggCifarError("--splits needs at least one training fraction, e.g. 0.01,0.1,0.5,0.8")
    out: list[float] = []
    for s in items:
        try:
            f = float(s)
        except (TypeError, ValueError):
            raise VggCifarError(f"--splits: {s!r} is not a number; give fractions in (0, 1] "
                                "separated by commas, e.g. 0.01,0.1,0.5,0.8") from None
        try:
            f = check_fraction(f)
        except VggCifarError:
            raise VggCifarError(f"--splits: {s} is outside (0, 1]; each split is the fraction of "
                                "the training set to train on, e.g. 0.01 for 1%") from None
        if any(math.isclose(f, g, rel_tol=1e-9, abs_tol=1e-12) for g in out):
            raise VggCifarError(f"--splits: {s} is given twice; each fraction may appear once")
        out.append(f)
    return sorted(out)


def hardware() -> dict:
    """CPU model, core count and PyTorch threads (plus GPU names when CUDA is available)."""
    import torch

    hw = {"machine": platform.machine(), "system": platform.platform(),
          "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                hw["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw.setdefault("cpu", platform.processor() or platform.machine())
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hw


def _shared_config(config: TrainConfig) -> dict:
    d = config.to_dict()
    for k in PER_SPLIT_FIELDS:
        d.pop(k, None)
    return d


def _option(field: str) -> str:
    special = {"progress": "--quiet", "compile": "--compile"}
    return special.get(field, "--" + field.replace("_", "-"))


def _check_resume(saved: dict, splits: list[float], config: TrainConfig, min_steps: int) -> None:
    """Raise when a resumed study is asked to change something its finished splits depend on."""
    problems = []
    if [round(s, 12) for s in saved["splits"]] != [round(s, 12) for s in splits]:
        problems.append(f"--splits {','.join(f'{s:g}' for s in splits)} (the study has "
                        f"{','.join(f'{s:g}' for s in saved['splits'])})")
    if int(saved.get("min_steps", 0)) != int(min_steps):
        problems.append(f"--min-steps {min_steps} (the study has {saved.get('min_steps', 0)})")
    new = _shared_config(config)
    for k, old in saved["config"].items():
        if k in RESUME_MAY_CHANGE or k not in new:
            continue
        if new[k] != old:
            problems.append(f"{_option(k)} {new[k]} (the study has {old})")
    if problems:
        raise VggCifarError("--resume continues a study with its own options, but these differ: "
                            + "; ".join(problems) + ". Drop them, or start a new study in another "
                            "--out")


def plan_epochs(config: TrainConfig, splits: list[float], min_steps: int) -> dict:
    """Per split: training images, batch size, steps per epoch and the epochs to train (keyed by
    the split), plus ``"dataset"``: the dataset's training/test image counts, format and source.

    With ``min_steps`` > 0 (and no ``--steps``), a split whose ``config.epochs`` would give fewer
    than ``min_steps`` optimisation steps trains for ``ceil(min_steps / steps_per_epoch)`` epochs
    instead. Loads the dataset labels (from the decoded-data cache after the first time).
    """
    from ..data import load_cifar10, stratified_split

    data = load_cifar10(config.data, download=config.download, verbose=config.progress)
    device = resolve_device(config.device)
    world = DistInfo.from_env().world_size
    plan = {}
    for s in splits:
        train_idx, val_idx = stratified_split(data.train_y, s, config.seed, config.val_size)
        run = plan_run(config, len(train_idx), device, world, n_val=len(val_idx),
                       min_steps=min_steps)
        plan[s] = {"train_images": len(train_idx), "val_images": len(val_idx),
                   "batch_size": run.batch_size, "steps_per_epoch": run.steps_per_epoch,
                   "epochs": run.epochs, "steps": run.total_steps}
    plan["dataset"] = {"train_images": len(data.train_y), "test_images": len(data.test_y),
                       "format": data.kind, "source": data.source}
    del data
    return plan


def _log_fn(progress: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if progress:
            print(f"vgg-study: {msg}", file=sys.stderr, flush=True)
    return log


def run_study(out: str | os.PathLike, splits, config: TrainConfig, *, min_steps: int = 0,
              preset: str | None = None, resume: bool = False, isolate: bool = True,
              command: str | None = None, note: str | None = None) -> dict:
    """Train one run per split into ``out`` and write the report; returns the report dict.

    Args:
        out: study folder (created).
        splits: training fractions (a comma-separated string or numbers), each in (0, 1], unique.
        config: shared training options; ``split``, ``name``, ``out`` and ``resume`` are set per
            split. ``config.epochs`` or ``config.steps`` is the training length of every split.
        min_steps: with ``epochs``: train each split for at least this many optimisation steps
            (more epochs for small splits).
        preset: the preset name the options came from (recorded only).
        resume: continue the study already in ``out``: splits with a ``summary.json`` are kept,
            a split with only a ``last.pt`` continues from it, the rest are trained.
        isolate: train each split in its own (spawned) process, so that the trainer's peak memory
            (process RSS high-water mark on CPU; GPU caches on CUDA) belongs to that split alone.
            Ignored (off) under torchrun.
        command: the command line as typed, and note: a line for the top of the report;
            both recorded in the manifest and shown in the report.

    Raises:
        VggCifarError: bad splits or options, an unwritable folder, an existing study without
            ``resume`` (or none with it), or a split whose training failed.
    """
    splits = parse_splits(splits)
    if min_steps < 0:
        raise VggCifarError(f"--min-steps must be >= 0, got {min_steps}")
    config = replace(config)
    for s in splits:  # every option checked before any training starts
        replace(config, split=s).validate()
    study_dir = Path(out)
    dist = DistInfo.from_env()
    main = dist.is_main
    if dist.enabled:  # the ranks must train together, in the processes torchrun started
        isolate = False
    log = _log_fn(config.progress and main)
    manifest_path = study_dir / MANIFEST
    if resume:
        if not manifest_path.is_file():
            raise VggCifarError(f"nothing to resume: {study_dir} holds no study ({MANIFEST} is "
                                "missing); start it without --resume")
        manifest = read_manifest(study_dir)
        _check_resume(manifest, splits, config, min_steps)
    else:
        if manifest_path.exists():
            raise VggCifarError(f"{study_dir} already holds a study; continue it with --resume "
                                "or choose another --out")
        manifest = None
    if main:
        check_writable(study_dir, "study folder")

    plan = plan_epochs(config, splits, min_steps)
    dataset = plan.pop("dataset")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    session = {"started": now, "command": command, "isolate": isolate, "hardware": hardware(),
               "trained": [], "skipped": []}
    if manifest is None:
        manifest = {"version": MANIFEST_VERSION, "created": now, "splits": splits,
                    "min_steps": int(min_steps), "preset": preset,
                    "config": _shared_config(config), "note": note, "plan": {},
                    "runs": {}, "sessions": []}
    else:
        # What may change on resume (data, device, verbosity) is taken from this call.
        for k in RESUME_MAY_CHANGE:
            manifest["config"][k] = getattr(config, k)
        if note:
            manifest["note"] = note
    manifest["plan"] = {f"{s:g}": p for s, p in plan.items()}
    manifest["dataset"] = dataset
    manifest["sessions"].append(session)
    if main:
        write_manifest(study_dir, manifest)

    t0 = time.perf_counter()
    log(f"{len(splits)} splits ({', '.join(f'{s:g}' for s in splits)}) of {config.arch} into "
        f"{study_dir}; each split {'in its own process' if isolate else 'in this process'}")
    for i, s in enumerate(splits, 1):
        state = split_state(study_dir, s)
        p = plan[s]
        if state == "done":
            log(f"split {s:g} ({i}/{len(splits)}): finished earlier, kept")
            session["skipped"].append(s)
            continue
        run_dir = study_dir / run_name(s)
        cfg = replace(config, split=s, name=run_name(s), out=str(study_dir),
                      epochs=p["epochs"], resume=None)
        if state == "partial":
            cfg.resume = str(run_dir / "last.pt")
            log(f"split {s:g} ({i}/{len(splits)}): continuing from {cfg.resume}")
        else:
            log(f"split {s:g} ({i}/{len(splits)}): {p['train_images']:,} training images, "
                f"{p['epochs']} epochs ({p['steps']} steps of batch {p['batch_size']})")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        cpu0, wall0 = _cpu_seconds(isolate), time.perf_counter()
        summary = _train_split(cfg, isolate)
        cpu, wall = _cpu_seconds(isolate) - cpu0, time.perf_counter() - wall0
        run_info = manifest["runs"].setdefault(f"{s:g}", {"sessions": []})
        run_info["sessions"].append({
            "started": started, "resumed": state == "partial", "load_avg_1min_at_start": load,
            "isolated": isolate, "total_time_s": summary.get("total_time_s"),
            "wall_time_s": wall, "cpu_time_s": cpu, "threads": _threads(),
            # Share of the time its threads could have run that the split got: well below 1
            # means other work was using the CPU (or the threads were waiting on something).
            "cpu_share": cpu / (wall * _threads()) if wall > 0 else None})
        session["trained"].append(s)
        session["wall_time_s"] = time.perf_counter() - t0
        if main:
            write_manifest(study_dir, manifest)
        log(f"split {s:g}: test accuracy {summary['test_accuracy']:.2%} in "
            f"{summary['total_time_s']:.0f}s")
    session["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    session["wall_time_s"] = time.perf_counter() - t0
    if not main:
        return {"study_dir": str(study_dir)}
    write_manifest(study_dir, manifest)
    result = write_report(study_dir)
    log(f"report: {study_dir / 'report.md'}")
    return result


# ---------------------------------------------------------------------- one split
def _cpu_seconds(children: bool) -> float:
    """User + system CPU time of this process, or of its finished child processes."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def _train_split(cfg: TrainConfig, isolate: bool) -> dict:
    if not isolate:
        return trainer.train(cfg)
    ctx = multiprocessing.get_context("spawn")
    recv_conn, send_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(cfg.to_dict(), send_conn),
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


def _worker(cfg_dict: dict, conn) -> None:
    """Entry point of a split's own process (spawned): train and send back the summary."""
    try:
        summary = trainer.train(TrainConfig.from_dict(cfg_dict))
        conn.send(("ok", summary))
    except VggCifarError as e:
        conn.send(("user", str(e)))
    except KeyboardInterrupt:
        conn.send(("interrupt", ""))
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
