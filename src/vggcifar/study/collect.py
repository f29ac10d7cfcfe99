"""Read a study back from disk: the manifest and every finished split's run folder, as the rows
the report shows, and the `vgg-study` command line that repeats the study's settings."""

from __future__ import annotations

import csv
import io
import os
import shlex
import statistics
from dataclasses import replace
from pathlib import Path

from ..errors import VggCifarError
from ..io import read_regular
from ..training.config import TrainConfig
from ..training.plan import plan_run
from .layout import MAX_RESULT_BYTES, read_json, read_manifest, read_summary, run_name

# TrainConfig fields without a `vgg-study` option (left at their defaults by the CLI).
_NO_OPTION = {"eval_batch_size", "model_kwargs"}


def _num(v: str):
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):  # text, or the list DictReader makes of surplus fields
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_metrics(path: Path) -> list[dict]:
    """A run's ``metrics.csv`` rows, numbers converted.

    Raises:
        VggCifarError: missing, not a regular file, unreadable or not CSV text.
    """
    try:
        text = read_regular(path, MAX_RESULT_BYTES).decode()
        return [{k: _num(v) for k, v in row.items()}
                for row in csv.DictReader(io.StringIO(text, newline=""))]
    except OSError as e:
        raise VggCifarError(f"cannot read {path} ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise VggCifarError(f"{path} is damaged: not CSV text ({e})") from None


# The columns of metrics.csv the report computes with.
_METRIC_NUMBERS = ("step", "train_acc", "train_time_s", "epoch_time_s", "images_per_s")


def _split_metrics(path: Path) -> list[dict]:
    """A finished split's metrics.csv: at least one epoch, with numbers where the report needs
    them."""
    rows = read_metrics(path)
    if not rows:
        raise VggCifarError(f"{path} is damaged: it holds no epoch")
    for i, r in enumerate(rows, 1):
        bad = [k for k in _METRIC_NUMBERS if not isinstance(r.get(k), (int, float))]
        if bad:
            raise VggCifarError(f"{path} is damaged: row {i} has no number in "
                                f"{', '.join(bad)}")
    return rows


def _epoch_times(metrics: list[dict], spe: int, images_per_epoch: int, summary: dict) -> dict:
    """Training and wall time of one epoch and the throughput, from a run's ``metrics.csv`` rows
    (``spe``: its steps per epoch)."""
    full, prev = [], 0
    for r in metrics:
        if r["step"] - prev == spe:
            full.append(r)
        prev = r["step"]
    if full:
        # Medians: robust to the first epoch's warm-up and to epochs slowed by other work.
        train_epoch = statistics.median(r["train_time_s"] for r in full)
        ips = statistics.median(r["images_per_s"] for r in full)
        val_per_epoch = statistics.fmean(r["epoch_time_s"] - r["train_time_s"] for r in full)
        estimated = False
    else:  # only a partial epoch (a short --steps budget): extrapolate from the throughput
        ips = summary["mean_images_per_s"]
        train_epoch = images_per_epoch / ips
        val_per_epoch = statistics.fmean(r["epoch_time_s"] - r["train_time_s"] for r in metrics)
        estimated = True
    return {"train_epoch_time_s": train_epoch, "train_epoch_time_estimated": estimated,
            "mean_epoch_time_s": train_epoch + max(0.0, val_per_epoch), "images_per_s": ips,
            "epoch_images_per_s_range": ([min(r["images_per_s"] for r in full),
                                          max(r["images_per_s"] for r in full)] if full else None)}


def _sessions(split: float, manifest: dict, cuda: bool) -> dict:
    """What the study recorded about how a split ran: resumed, own process, load, CPU share."""
    sessions = manifest.get("runs", {}).get(f"{split:g}", {}).get("sessions", [])
    finished = [s for s in sessions if s.get("wall_time_s") is not None]
    return {
        "resumed": any(s.get("resumed") for s in sessions),
        "isolated": (all(s.get("isolated") for s in sessions) if sessions else None),
        "load_avg_1min_at_start": [s.get("load_avg_1min_at_start") for s in sessions],
        # On CUDA the CPU mostly waits for the GPU, so its CPU share says nothing about sharing.
        "cpu_share": finished[-1].get("cpu_share") if finished and not cuda else None,
    }


def _machine(split: float, manifest: dict, summary: dict, cuda: bool) -> str | None:
    """What the split was trained on: the GPU, or the CPU model of its last run record, else of
    the session that trained it, else what the run itself recorded. A study resumed on another
    machine (a folder copied with ``--copy-results``) has splits from different CPUs."""
    versions = summary.get("versions") or {}
    if cuda:
        return versions.get("gpu")
    for rec in reversed(manifest.get("runs", {}).get(f"{split:g}", {}).get("sessions", [])):
        if rec.get("cpu"):
            return rec["cpu"]
    for sess in reversed(manifest.get("sessions", [])):
        if split in (sess.get("trained") or []) and (sess.get("hardware") or {}).get("cpu"):
            return sess["hardware"]["cpu"]
    return versions.get("cpu")


def _total_time(summary: dict, metrics: list[dict], manifest: dict, split: float) -> dict:
    """The split's run time over all its segments.

    Since the trainer records ``resumed_after_epochs`` its ``total_time_s`` spans every segment
    of a resumed run. A resumed run's summary from before that counted only its last segment,
    so for those the row takes the sum of the epochs' own times instead (start-up and the final
    test evaluation not counted) and says it is an estimate.
    """
    resumed = any(s.get("resumed") for s in
                  manifest.get("runs", {}).get(f"{split:g}", {}).get("sessions", []))
    if "resumed_after_epochs" in summary or not resumed:
        return {"total_time_s": summary["total_time_s"], "total_time_estimated": False}
    epochs = sum(float(r.get("epoch_time_s") or 0.0) for r in metrics)
    return {"total_time_s": max(epochs, float(summary["total_time_s"])),
            "total_time_estimated": True}


def _split_row(split: float, run_dir: Path, manifest: dict) -> dict:
    """The report's row of a finished split.

    Raises:
        VggCifarError: one of its files is missing or damaged (named). A report without a
            finished split would pass for a complete one, so it is not left out silently.
    """
    summary = read_summary(run_dir)
    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise VggCifarError(f"{run_dir / 'config.json'} is damaged: not a JSON object")
    metrics = _split_metrics(run_dir / "metrics.csv")
    try:
        return _row(split, run_dir, manifest, summary, config, metrics)
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError,
            statistics.StatisticsError) as e:
        raise VggCifarError(f"{run_dir}: its config.json, summary.json or metrics.csv is "
                            f"damaged ({type(e).__name__}: {str(e)[:100]})") from None


def _row(split: float, run_dir: Path, manifest: dict, summary: dict, config: dict,
         metrics: list[dict]) -> dict:
    n, b = int(summary["train_images"]), int(summary["batch_size"])
    # The run's own plan, from its recorded (resolved) options: the epoch it trained.
    plan = plan_run(replace(TrainConfig.from_dict(config), batch_size=b), n,
                    summary.get("device", "cpu"), int(summary.get("world_size") or 1))
    cuda = str(summary.get("device", "cpu")).startswith("cuda")
    resolved = config.get("resolved", {})
    return {
        "split": split, "run_dir": run_name(split), "train_images": n,
        "val_images": summary.get("val_images"), "test_images": summary.get("test_images"),
        "batch_size": b, "lr": summary.get("lr"),
        "epochs": summary["epochs"], "steps": summary["steps"],
        "steps_per_epoch": plan.steps_per_epoch,
        "best_val_accuracy": summary.get("best_val_accuracy"),
        "best_epoch": summary.get("best_epoch"),
        "test_accuracy": summary["test_accuracy"],
        # One view (no flip TTA): the figure the original study and serving give. Runs from
        # before the trainer recorded it have none.
        "test_accuracy_one_view": summary.get("test_accuracy_one_view"),
        "tta": summary.get("tta", config.get("tta")),
        "per_class_accuracy": summary["per_class_accuracy"],
        "final_train_accuracy": metrics[-1]["train_acc"] if metrics else None,
        **_epoch_times(metrics, plan.steps_per_epoch, plan.images_per_epoch, summary),
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "peak_reserved_mb": summary.get("peak_reserved_mb") if cuda else None,
        "memory_kind": "gpu" if cuda else "rss",
        **_total_time(summary, metrics, manifest, split),
        "train_time_s": summary.get("train_time_s"),
        "params": summary.get("params"), "device": summary.get("device"),
        "machine": _machine(split, manifest, summary, cuda),
        "versions": summary.get("versions", {}), "data_format": resolved.get("data_format"),
        "data_source": resolved.get("data_source"),
        **_sessions(split, manifest, cuda),
        "metrics": metrics,
    }


def collect(study_dir: str | os.PathLike) -> dict:
    """Read the manifest and every finished split's run folder."""
    study_dir = Path(study_dir)
    manifest = read_manifest(study_dir)
    rows, unfinished = [], []
    for s in sorted(manifest["splits"]):
        d = study_dir / run_name(s)
        if os.path.lexists(d / "summary.json"):
            rows.append(_split_row(s, d, manifest))
        else:
            unfinished.append(s)
    return {"manifest": manifest, "rows": rows, "unfinished": unfinished}



def explicit_command(manifest: dict, out: str | None = None) -> str:
    """A `vgg-study` command line that repeats the study's settings without relying on a preset."""
    cfg = manifest["config"]
    default = TrainConfig().to_dict()
    args = ["vgg-study", "--splits", ",".join(f"{s:g}" for s in manifest["splits"])]
    keys = ["arch", "epochs", "steps"] + sorted(cfg)
    seen = set()
    for k in keys:
        if k in seen or k not in cfg or k in _NO_OPTION:
            continue
        seen.add(k)
        v = cfg[k]
        always = k in ("arch", "seed", "data") or (k == "epochs" and not cfg.get("steps"))
        if v == default.get(k) and not always:
            continue
        if k == "progress":
            if not v:
                args.append("--quiet")
        elif k == "compile":
            if v:
                args.append("--compile")
        elif isinstance(v, bool):
            args.append(f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
        elif v is None:
            continue
        else:
            args += [f"--{k.replace('_', '-')}", f"{v:g}" if isinstance(v, float) else str(v)]
    if manifest.get("min_steps"):
        args += ["--min-steps", str(manifest["min_steps"])]
    if manifest.get("split_epochs"):
        named = manifest["split_epochs"].items()
        args += ["--split-epochs", ",".join(f"{k}:{v}" for k, v in named)]
    if "seed" not in seen:
        args += ["--seed", str(cfg.get("seed", 0))]
    if out:
        args += ["--out", out]
    return shlex.join(args)
