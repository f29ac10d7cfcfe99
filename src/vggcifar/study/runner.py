"""Run a training-fraction study: one ordinary run folder per split, all trained by
:func:`vggcifar.training.train`, inside one study folder that can be resumed (its layout:
:mod:`vggcifar.study.layout`).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..data.splits import check_fraction
from ..errors import VggCifarError
from ..io import FolderLock, check_writable, read_regular
from ..runtime.devices import cpu_model, local_cpu_kind, resolve_device
from ..training import trainer
from ..training.config import TrainConfig
from ..training.distributed import DistInfo
from ..training.plan import plan_run
from . import estimate, launch
from .layout import (MANIFEST, MANIFEST_VERSION, MAX_RESULT_BYTES, read_manifest, read_summary,
                     run_name, split_state, write_manifest)
from .presets import PRESETS
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
          "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
          "cpu": cpu_model() or platform.processor() or platform.machine(),
          "cpu_kind": local_cpu_kind()}
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


def parse_split_epochs(text, splits: list[float]) -> dict[float, int]:
    """``"0.01:300,0.1:150"`` (or a mapping) -> ``{0.01: 300, 0.1: 150}``, keyed by the matching
    fractions of ``splits``; None or ``""`` -> ``{}``.

    Raises:
        VggCifarError: a malformed item, epochs below 1, or a fraction not in ``splits``.
    """
    if not text:
        return {}
    if isinstance(text, str):
        pairs = []
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            f, sep, e = item.partition(":")
            if not sep:
                raise VggCifarError(f"--split-epochs: {item!r} is not SPLIT:EPOCHS; give e.g. "
                                    "0.01:300,0.1:150")
            pairs.append((f.strip(), e.strip()))
    else:
        pairs = list(dict(text).items())
    out: dict[float, int] = {}
    for f, e in pairs:
        try:
            frac, epochs = float(f), int(e)
        except (TypeError, ValueError):
            raise VggCifarError(f"--split-epochs: {f}:{e} is not SPLIT:EPOCHS (a fraction and a "
                                "whole number of epochs)") from None
        if epochs < 1:
            raise VggCifarError(f"--split-epochs: {f}:{e} trains no epoch; give 1 or more")
        match = next((s for s in splits if math.isclose(s, frac, rel_tol=1e-9)), None)
        if match is None:
            raise VggCifarError(f"--split-epochs names {f}, which is not one of --splits "
                                f"({','.join(f'{s:g}' for s in splits)})")
        out[match] = epochs
    return out


def _keyed(split_epochs: dict[float, int]) -> dict[str, int]:
    """Split epochs as the manifest stores them (JSON keys are strings)."""
    return {f"{s:g}": e for s, e in sorted(split_epochs.items())}


def _check_options(config: TrainConfig, splits: list[float], min_steps: int,
                   split_epochs: dict) -> TrainConfig:
    """Every option checked before any training starts; returns the study's copy of ``config``."""
    if min_steps < 0:
        raise VggCifarError(f"--min-steps must be >= 0, got {min_steps}")
    if split_epochs and config.steps:
        raise VggCifarError("--split-epochs sets each split's epochs; it cannot be combined "
                            "with --steps")
    config = replace(config)
    for s in splits:
        replace(config, split=s).validate()
    return config


def _check_resume(saved: dict, splits: list[float], config: TrainConfig, min_steps: int,
                  split_epochs: dict[float, int], study_dir: Path) -> dict[str, list]:
    """Raise when a resumed study is asked to change something its finished splits depend on.

    A split that has not started yet may get a new length (``--split-epochs``): nothing trained
    depends on it, and a study planned on a fast machine can then finish on a slower one.
    Returns those changes, ``{"0.5": [old, new]}`` (``None``: the study's ``--epochs``).
    """
    problems = []
    if [round(s, 12) for s in saved["splits"]] != [round(s, 12) for s in splits]:
        problems.append(f"--splits {','.join(f'{s:g}' for s in splits)} (the study has "
                        f"{','.join(f'{s:g}' for s in saved['splits'])})")
    if int(saved.get("min_steps", 0)) != int(min_steps):
        problems.append(f"--min-steps {min_steps} (the study has {saved.get('min_steps', 0)})")
    old_se, new_se = saved.get("split_epochs") or {}, _keyed(split_epochs)
    changed = {k: [old_se.get(k), new_se.get(k)] for k in sorted({*old_se, *new_se}, key=float)
               if old_se.get(k) != new_se.get(k)}
    started = [k for k in changed if split_state(study_dir, float(k)) != "new"]
    if started:
        def show(v):
            return "the study's --epochs" if v is None else f"{v} epochs"
        problems.append("--split-epochs changes the length of "
                        + ", ".join(f"split {k} ({show(changed[k][0])} -> {show(changed[k][1])})"
                                    for k in started)
                        + ", which has already started or finished; only a split not yet "
                          "started may get a new length")
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
    return changed


def plan_epochs(config: TrainConfig, splits: list[float], min_steps: int,
                split_epochs: dict[float, int] | None = None) -> dict:
    """:func:`plan_splits` for the dataset of ``config.data``, plus ``"dataset"``: its
    training/test image counts, format, source and the device type. Loads the dataset labels
    (from the decoded-data cache after the first time)."""
    from ..data import load_cifar10

    data = load_cifar10(config.data, download=config.download, verbose=config.progress)
    device = resolve_device(config.device)
    plan = plan_splits(config, data.train_y, splits, min_steps, split_epochs, device,
                       DistInfo.from_env().world_size)
    plan["dataset"] = {"train_images": len(data.train_y), "test_images": len(data.test_y),
                       "format": data.kind, "source": data.source, "device": device.type}
    del data
    return plan


def plan_splits(config: TrainConfig, train_labels, splits: list[float], min_steps: int = 0,
                split_epochs: dict[float, int] | None = None, device="cpu",
                world: int = 1) -> dict:
    """Per split (keyed by the split): training and validation images, batch size, steps per
    epoch, the epochs and steps to train, the validation cadence and precision.

    A split named in ``split_epochs`` trains exactly that many epochs. Otherwise, with
    ``min_steps`` > 0 (and no ``--steps``), a split whose ``config.epochs`` would give fewer than
    ``min_steps`` optimisation steps trains for ``ceil(min_steps / steps_per_epoch)`` epochs
    instead. ``train_labels``: ``[N]`` int64 labels of the whole training set.
    """
    from ..data import stratified_split

    split_epochs = split_epochs or {}
    plan = {}
    for s in splits:
        train_idx, val_idx = stratified_split(train_labels, s, config.seed, config.val_size)
        cfg, floor = config, min_steps
        if s in split_epochs:
            cfg, floor = replace(config, epochs=split_epochs[s], steps=None), 0
        run = plan_run(cfg, len(train_idx), device, world, n_val=len(val_idx), min_steps=floor)
        plan[s] = {"train_images": len(train_idx), "val_images": len(val_idx),
                   "batch_size": run.batch_size, "steps_per_epoch": run.steps_per_epoch,
                   "epochs": run.epochs, "steps": run.total_steps, "val_every": run.val_every,
                   "amp": run.amp}
    return plan


def _log_fn(progress: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if progress:
            print(f"vgg-study: {msg}", file=sys.stderr, flush=True)
    return log


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Study:
    """One session of a study: its folder, manifest (rewritten as splits start and finish), this
    session's record in it, and how splits are launched."""

    dir: Path
    manifest: dict
    session: dict
    isolate: bool
    main: bool
    log: Callable[[str], None]
    t0: float = field(default_factory=time.perf_counter)

    def save(self) -> None:
        self.session["wall_time_s"] = time.perf_counter() - self.t0
        if self.main:
            write_manifest(self.dir, self.manifest)


def run_study(out: str | os.PathLike, splits, config: TrainConfig, *, min_steps: int = 0,
              split_epochs=None, preset: str | None = None, resume: bool = False,
              isolate: bool = True, command: str | None = None,
              note: str | None = None, only=None) -> dict:
    """Train one run per split into ``out`` and write the report; returns the report dict.

    Args:
        out: study folder (created).
        splits: training fractions (a comma-separated string or numbers), each in (0, 1], unique.
        config: shared training options; ``split``, ``name``, ``out`` and ``resume`` are set per
            split. ``config.epochs`` or ``config.steps`` is the training length of every split
            not in ``split_epochs``. Each split writes ``last.pt`` every ``config.save_every``
            epochs (default 1: a stopped split loses at most the epoch it was in).
        min_steps: with ``epochs``: train each split for at least this many optimisation steps
            (more epochs for small splits).
        split_epochs: epochs of particular splits (``"0.01:300,0.1:150"`` or a mapping),
            replacing ``epochs`` and ``min_steps`` for them.
        preset: the preset name the options came from (recorded; its budget is checked in the
            estimate printed at the start).
        resume: continue the study already in ``out``: splits with a ``summary.json`` are kept,
            a split with only a ``last.pt`` continues from it, the rest are trained.
        isolate: train each split in its own (spawned) process, so that the trainer's peak memory
            (process RSS high-water mark on CPU; GPU caches on CUDA) belongs to that split alone.
            Ignored (off) under torchrun.
        command: the command line as typed, and note: a line for the top of the report;
            both recorded in the manifest and shown in the report.
        only: train only these of the study's splits in this call (a string like ``"0.8"`` or
            numbers); the others are left for a later ``resume``. Lets a study whose splits
            take a working session each run its most telling split first. The report written
            at the end lists the splits not yet trained as unfinished.

    Raises:
        VggCifarError: bad splits or options, an unwritable folder, an existing study without
            ``resume`` (or none with it), or a split whose training failed.
    """
    splits = parse_splits(splits)
    todo = _only_splits(only, splits)
    split_epochs = parse_split_epochs(split_epochs, splits)
    config = _check_options(config, splits, min_steps, split_epochs)
    dist = DistInfo.from_env()
    if dist.enabled:  # the ranks must train together, in the processes torchrun started
        isolate = False
    study_dir = Path(out)
    saved = _saved_manifest(study_dir, resume)
    if dist.is_main:
        check_writable(study_dir, "study folder")
    # One study process per folder: a second --resume while this one runs is refused.
    with FolderLock(study_dir, "study folder") if dist.is_main else contextlib.nullcontext():
        changed = {}
        if saved is not None:
            changed = _check_resume(saved, splits, config, min_steps, split_epochs, study_dir)
        _check_startable(study_dir, splits, resume)
        plan = plan_epochs(config, splits, min_steps, split_epochs)
        dataset = plan.pop("dataset")
        session = {"kind": "resume" if resume else "start", "started": _now(), "command": command,
                   "isolate": isolate, "hardware": hardware(), "trained": [], "skipped": []}
        if len(todo) < len(splits):
            session["only"] = todo
        manifest = saved or {"version": MANIFEST_VERSION, "created": session["started"],
                             "splits": splits, "min_steps": int(min_steps),
                             "split_epochs": _keyed(split_epochs), "preset": preset,
                             "config": _shared_config(config), "note": note, "runs": {},
                             "sessions": []}
        if saved is not None:  # what may change on resume (data, device, verbosity): this call's
            manifest.setdefault("runs", {})
            manifest.setdefault("sessions", [])
            for k in RESUME_MAY_CHANGE:
                manifest["config"][k] = getattr(config, k)
            manifest["note"] = note or manifest.get("note")
            if changed:  # new lengths of splits not yet started, and when they were set
                manifest["split_epochs"] = _keyed(split_epochs)
                session["split_epochs_changed"] = changed
        manifest["plan"] = {f"{s:g}": p for s, p in plan.items()}
        manifest["dataset"] = dataset
        manifest["sessions"].append(session)
        st = _Study(study_dir, manifest, session, isolate, dist.is_main,
                    _log_fn(config.progress and dist.is_main))
        _announce(st, {s: plan[s] for s in todo}, dataset, config, preset)
        for s in splits:
            if s not in todo:
                st.log(f"split {s:g}: not in --only, left for a later --resume")
        st.save()
        for i, s in enumerate(todo, 1):
            _run_split(st, s, f"{i}/{len(todo)}", plan[s], config)
        session["finished"] = _now()
        st.save()
        if not st.main:
            return {"study_dir": str(study_dir)}
        result = write_report(study_dir)
        st.log(f"report: {study_dir / 'report.md'}")
        return result


def _only_splits(only, splits: list[float]) -> list[float]:
    """The splits to train in this call: ``only`` (each one of ``splits``), or all of them."""
    if only is None or (isinstance(only, str) and not only.strip()):
        return splits
    try:
        wanted = parse_splits(only)
    except VggCifarError as e:
        raise VggCifarError(str(e).replace("--splits", "--only", 1)) from None
    todo = [s for s in splits if any(math.isclose(s, w, rel_tol=1e-9, abs_tol=1e-12)
                                     for w in wanted)]
    if len(todo) < len(wanted):
        missing = [w for w in wanted if not any(math.isclose(s, w, rel_tol=1e-9, abs_tol=1e-12)
                                                for s in splits)]
        raise VggCifarError(f"--only {','.join(f'{w:g}' for w in missing)}: not a split of this "
                            f"study (its splits: {','.join(f'{s:g}' for s in splits)})")
    return todo


def _saved_manifest(study_dir: Path, resume: bool) -> dict | None:
    """The manifest of the study to resume (None when starting one, which must not exist)."""
    if resume:
        if not (study_dir / MANIFEST).is_file():
            raise VggCifarError(f"nothing to resume: {study_dir} holds no study ({MANIFEST} is "
                                "missing); start it without --resume")
        return read_manifest(study_dir)
    if (study_dir / MANIFEST).exists():
        raise VggCifarError(f"{study_dir} already holds a study; continue it with --resume "
                            "or choose another --out")
    return None


def _check_startable(study_dir: Path, splits: list[float], resume: bool) -> None:
    """Refuse, before any split trains, a split to be trained afresh whose folder holds what the
    trainer would refuse to overwrite (:func:`vggcifar.training.trainer.existing_run`; in a
    resumed study, a split stopped before its first last.pt restarts over what it left)."""
    for s in splits:
        run_dir = study_dir / run_name(s)
        found = split_state(study_dir, s) == "new" and trainer.existing_run(run_dir, resume)
        if not found:
            continue
        why = f"it holds {found} of a run this study cannot continue"
        if found == "last.pt":
            why = f"{run_dir / found} is not a file"
        elif found == "summary.json":  # a valid one would make the split finished
            try:
                read_summary(run_dir)
            except VggCifarError as e:
                why = str(e)
        raise VggCifarError(f"split {s:g} can neither be kept nor continued: {why}; restore "
                            f"it, or remove {run_dir / found} to train the split again")


def _epochs_done(study_dir: Path, split: float) -> int | str:
    """``"all"`` for a finished split, else the epochs its metrics.csv records (0 if none)."""
    state = split_state(study_dir, split)
    if state == "done":
        return "all"
    try:
        lines = read_regular(study_dir / run_name(split) / "metrics.csv",
                             MAX_RESULT_BYTES).splitlines()
    except (OSError, VggCifarError):  # missing, or not a file (a FIFO would block the read)
        return 0
    return max(0, len(lines) - 1) if state == "partial" else 0


def _announce(st: _Study, plan: dict, dataset: dict, config: TrainConfig,
              preset: str | None) -> None:
    """Log what this session will train and how long it should take; record the estimate."""
    done = {s: _epochs_done(st.dir, s) for s in plan}
    amp = all(p["amp"] for p in plan.values())
    speed = estimate.measured_speed(st.manifest["config"], dataset["device"], amp,
                                    local_cpu_kind())
    budget = PRESETS[preset].budget if preset in PRESETS else None
    est = estimate.estimate(plan, dataset["test_images"], config.tta, speed, budget, done)
    st.session["estimate"] = {
        "basis": None if speed is None else asdict(speed),
        "seconds": est["seconds"], "budget_seconds": est["budget_seconds"],
        "splits": {f"{s:g}": r for s, r in est["splits"].items()}}
    st.log(f"{len(plan)} splits ({', '.join(f'{s:g}' for s in plan)}) of {config.arch} into "
           f"{st.dir}; each split {'in its own process' if st.isolate else 'in this process'}")
    for k, (was, now) in st.session.get("split_epochs_changed", {}).items():
        st.log(f"split {k}: {now or config.epochs} epochs instead of "
               f"{was or config.epochs} (not started yet; recorded in {MANIFEST})")
    for line in estimate.estimate_lines(plan, est, speed, budget, config.arch):
        st.log(line)


def _run_split(st: _Study, s: float, pos: str, p: dict, config: TrainConfig) -> None:
    """Train (or continue, or skip) one split, recording its session in the manifest."""
    state = split_state(st.dir, s)
    if state == "done":
        st.log(f"split {s:g} ({pos}): finished earlier, kept")
        st.session["skipped"].append(s)
        return
    run_dir = st.dir / run_name(s)
    cfg = replace(config, split=s, name=run_name(s), out=str(st.dir), epochs=p["epochs"],
                  resume=str(run_dir / "last.pt") if state == "partial" else None)
    if state == "partial":
        st.log(f"split {s:g} ({pos}): continuing from {cfg.resume}")
    else:
        st.log(f"split {s:g} ({pos}): {p['train_images']:,} training images, {p['epochs']} "
               f"epochs ({p['steps']} steps of batch {p['batch_size']})")
    record = {"started": _now(), "resumed": state == "partial", "isolated": st.isolate,
              "cpu": st.session["hardware"].get("cpu"),
              "load_avg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg")
              else None}
    st.manifest["runs"].setdefault(f"{s:g}", {"sessions": []})["sessions"].append(record)
    st.session["in_progress"] = s  # still there if the study is stopped during this split
    st.save()
    cpu0, wall0 = launch.cpu_seconds(st.isolate), time.perf_counter()
    # A resumed study's split stopped before it could be continued (no last.pt) trains afresh
    # over what it left.
    restart = state == "new" and st.session["kind"] == "resume"
    summary = launch.train_split(cfg, st.isolate, restart=restart)
    cpu, wall = launch.cpu_seconds(st.isolate) - cpu0, time.perf_counter() - wall0
    record.update({
        "finished": _now(), "total_time_s": summary.get("total_time_s"), "wall_time_s": wall,
        "cpu_time_s": cpu, "threads": launch.threads(),
        # Share of the time its threads could have run that the split got: well below 1
        # means other work was using the CPU (or the threads were waiting on something).
        "cpu_share": cpu / (wall * launch.threads()) if wall > 0 else None})
    del st.session["in_progress"]
    st.session["trained"].append(s)
    st.save()
    one_view = summary.get("test_accuracy_one_view")
    st.log(f"split {s:g}: test accuracy {summary['test_accuracy']:.2%}"
           + (f" ({one_view:.2%} one view)" if one_view is not None else "")
           + f" in {summary['total_time_s']:.0f}s")
