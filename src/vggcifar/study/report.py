"""The study report: ``report.md``, ``report.json`` and ``figures/*.png`` in the study folder,
built only from what the runs wrote to disk (so it can be rebuilt with `vgg-study --report-only`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import statistics
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ..errors import VggCifarError
from ..io import atomic_write
from ..training.config import TrainConfig
from ..training.plan import plan_run
from ..training.report import pyplot, save_figure
from . import analysis
from .analysis import pct
from .layout import read_manifest, run_name
from .presets import REFERENCE

FIGURES = {
    "accuracy": "figures/accuracy_vs_fraction.png",
    "epoch_time": "figures/epoch_time_vs_fraction.png",
    "memory": "figures/memory_vs_fraction.png",
    "curves": "figures/curves.png",
    "per_class": "figures/per_class_heatmap.png",
}
# TrainConfig fields without a `vgg-study` option (left at their defaults by the CLI).
_NO_OPTION = {"eval_batch_size", "model_kwargs"}


# ---------------------------------------------------------------------- reading the runs
def _num(v: str):
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _split_row(split: float, run_dir: Path, manifest: dict) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    metrics = read_metrics(run_dir / "metrics.csv")
    n, b = int(summary["train_images"]), int(summary["batch_size"])
    # The run's own plan, from its recorded (resolved) options: the epoch it trained.
    plan = plan_run(replace(TrainConfig.from_dict(config), batch_size=b), n,
                    summary.get("device", "cpu"), int(summary.get("world_size") or 1))
    spe = plan.steps_per_epoch
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
        train_epoch = plan.images_per_epoch / ips
        val_per_epoch = statistics.fmean(r["epoch_time_s"] - r["train_time_s"] for r in metrics)
        estimated = True
    wall_epoch = train_epoch + max(0.0, val_per_epoch)
    sessions = manifest.get("runs", {}).get(f"{split:g}", {}).get("sessions", [])
    cuda = str(summary.get("device", "cpu")).startswith("cuda")
    return {
        "split": split, "run_dir": run_name(split), "train_images": n,
        "val_images": summary.get("val_images"), "test_images": summary.get("test_images"),
        "batch_size": b, "lr": summary.get("lr"),
        "epochs": summary["epochs"], "steps": summary["steps"], "steps_per_epoch": spe,
        "best_val_accuracy": summary.get("best_val_accuracy"),
        "best_epoch": summary.get("best_epoch"),
        "test_accuracy": summary["test_accuracy"],
        "per_class_accuracy": summary["per_class_accuracy"],
        "final_train_accuracy": metrics[-1]["train_acc"] if metrics else None,
        "train_epoch_time_s": train_epoch, "train_epoch_time_estimated": estimated,
        "mean_epoch_time_s": wall_epoch,
        "images_per_s": ips,
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "peak_reserved_mb": summary.get("peak_reserved_mb") if cuda else None,
        "memory_kind": "gpu" if cuda else "rss",
        "total_time_s": summary["total_time_s"], "train_time_s": summary.get("train_time_s"),
        "params": summary.get("params"), "device": summary.get("device"),
        "versions": summary.get("versions", {}), "data_format": config.get("resolved", {}).get(
            "data_format"), "data_source": config.get("resolved", {}).get("data_source"),
        "resumed": any(s.get("resumed") for s in sessions),
        "isolated": (all(s.get("isolated") for s in sessions) if sessions else None),
        "load_avg_1min_at_start": [s.get("load_avg_1min_at_start") for s in sessions],
        # On CUDA the CPU mostly waits for the GPU, so its CPU share says nothing about sharing.
        "cpu_share": sessions[-1].get("cpu_share") if sessions and not cuda else None,
        "epoch_images_per_s_range": ([min(r["images_per_s"] for r in full),
                                      max(r["images_per_s"] for r in full)] if full else None),
        "metrics": metrics,
    }


def collect(study_dir: str | os.PathLike) -> dict:
    """Read the manifest and every finished split's run folder."""
    study_dir = Path(study_dir)
    manifest = read_manifest(study_dir)
    rows, unfinished = [], []
    for s in sorted(manifest["splits"]):
        d = study_dir / run_name(s)
        if (d / "summary.json").is_file():
            rows.append(_split_row(s, d, manifest))
        else:
            unfinished.append(s)
    return {"manifest": manifest, "rows": rows, "unfinished": unfinished}


# ---------------------------------------------------------------------- commands
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
    if "seed" not in seen:
        args += ["--seed", str(cfg.get("seed", 0))]
    if out:
        args += ["--out", out]
    return shlex.join(args)


# ---------------------------------------------------------------------- figures
def _fraction_axis(ax, splits):
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.set_xticks(splits, [pct(s) for s in splits])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training fraction (log scale)")
    ax.grid(alpha=0.3)


def _log_y(ax, values):
    """Log y axis with plain-number labels when the values span more than a factor of 5."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    vals = [v for v in values if v and v > 0]
    if not vals or max(vals) / min(vals) <= 5:
        ax.set_ylim(0, 1.2 * max(vals or [1]))
        return False
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return True


def plot_accuracy(rows, path: Path, arch: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    fs = [r["split"] for r in rows]
    acc = [100 * r["test_accuracy"] for r in rows]
    ax.plot(fs, acc, "o-", color="tab:blue", lw=2, label=f"this study: test ({arch})")
    val = [(r["split"], 100 * r["best_val_accuracy"]) for r in rows
           if r.get("best_val_accuracy") is not None]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "^--", color="tab:cyan", alpha=0.8,
                label="this study: best validation")
    ref = sorted(REFERENCE["test_accuracy"].items())
    ax.plot([f for f, _ in ref], [100 * a for _, a in ref], "s:", color="tab:gray",
            label=f"{REFERENCE['source']}: test")
    for f, a in zip(fs, acc):
        ax.annotate(f"{a:.1f}%", (f, a), textcoords="offset points", xytext=(0, -16),
                    ha="center", fontsize=9, color="tab:blue")
    ax.axhline(100 * REFERENCE["final_test_accuracy"], color="tab:gray", lw=0.8, ls="--")
    ax.text(max(fs + [f for f, _ in ref]), 100 * REFERENCE["final_test_accuracy"] + 1.2,
            f"original final VGG16 {100 * REFERENCE['final_test_accuracy']:.2f}%", fontsize=8,
            color="tab:gray", ha="right")
    _fraction_axis(ax, sorted(set(fs) | {f for f, _ in ref}))
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Test accuracy against training fraction")
    ax.legend(loc="upper left", bbox_to_anchor=(0, 0.9), fontsize=8)
    save_figure(fig, path)


def plot_epoch_time(rows, path: Path, fit: dict | None) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.4))
    fs = [r["split"] for r in rows]
    ax[0].plot(fs, [r["train_epoch_time_s"] for r in rows], "o-", lw=2, label="training")
    walls = [(r["split"], r["mean_epoch_time_s"]) for r in rows if r.get("mean_epoch_time_s")]
    if walls:
        ax[0].plot([w[0] for w in walls], [w[1] for w in walls], "s--", alpha=0.8,
                   label="wall (training + mean validation)")
    if fit is not None:
        lo, hi = min(fs), max(fs)
        xs = [lo * (hi / lo) ** (i / 49) for i in range(50)] if hi > lo else [lo]
        per = {r["split"]: r["train_images"] / r["split"] for r in rows}  # images per unit fraction
        scale = sum(per.values()) / len(per)
        ax[0].plot(xs, [fit["intercept_s"] + fit["seconds_per_1000_images"] * scale * x / 1000
                        for x in xs], color="gray", lw=1, ls=":",
                   label=f"fit: {fit['seconds_per_1000_images']:.2f} s / 1,000 images")
    for r in rows:
        ax[0].annotate(f"{r['train_epoch_time_s']:.3g} s", (r["split"], r["train_epoch_time_s"]),
                       textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    log = _log_y(ax[0], [r["train_epoch_time_s"] for r in rows] + [w[1] for w in walls])
    if log:  # room for the labels above the points
        lo_, hi_ = ax[0].get_ylim()
        ax[0].set_ylim(lo_ / 1.3, hi_ * 1.8)
    _fraction_axis(ax[0], fs)
    ax[0].set_ylabel("seconds per epoch" + (" (log scale)" if log else ""))
    ax[0].set_title("Epoch time against training fraction")
    ax[0].legend(fontsize=8)
    ax[1].plot(fs, [r["images_per_s"] for r in rows], "o-", lw=2, color="tab:green")
    for r in rows:
        ax[1].annotate(f"b={r['batch_size']}", (r["split"], r["images_per_s"]),
                       textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    _fraction_axis(ax[1], fs)
    ax[1].set_ylim(0, 1.2 * max(r["images_per_s"] for r in rows))
    ax[1].set_ylabel("training images per second")
    ax[1].set_title("Training throughput (b = batch size)")
    save_figure(fig, path)


def plot_memory(rows, path: Path, kind: str, isolated: bool | None = True) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    fs = [r["split"] for r in rows]
    if kind == "gpu":
        ax.plot(fs, [r["peak_memory_mb"] for r in rows], "o-", lw=2, label="peak allocated")
        ax.plot(fs, [r["peak_reserved_mb"] or 0 for r in rows], "s--", label="peak reserved")
        ax.legend(fontsize=8)
        ax.set_ylabel("GPU memory (MB)")
    else:
        ax.plot(fs, [r["peak_memory_mb"] for r in rows], "o-", lw=2, color="tab:purple")
        ax.set_ylabel("peak process RSS (MB)")
    for r in rows:
        ax.annotate(f"{r['peak_memory_mb']:.0f} MB\nb={r['batch_size']}",
                    (r["split"], r["peak_memory_mb"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    _fraction_axis(ax, fs)
    ax.set_ylim(0, 1.25 * max(max(r["peak_memory_mb"], r.get("peak_reserved_mb") or 0)
                               for r in rows))
    ax.set_title("Peak memory against training fraction (b = batch size)" + (
        "\n(all splits in one process: high-water mark so far, not per split)"
        if kind == "rss" and isolated is False else ""))
    save_figure(fig, path)


def plot_curves_overlay(rows, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        c = colours(i % 10)
        m = r["metrics"]
        steps = [x["step"] for x in m]
        lab = f"{pct(r['split'])} ({r['train_images']:,} images)"
        axes[0, 0].plot(steps, [x["train_loss"] for x in m], ".-", ms=4, color=c, label=lab)
        axes[1, 0].plot(steps, [100 * x["train_acc"] for x in m], ".-", ms=4, color=c,
                        label=lab)
        v = [x for x in m if x.get("val_acc") is not None]
        if v:
            axes[0, 1].plot([x["step"] for x in v], [x["val_loss"] for x in v], "o-", ms=3,
                            color=c, label=lab)
            axes[1, 1].plot([x["step"] for x in v], [100 * x["val_acc"] for x in v], "o-",
                            ms=3, color=c, label=lab)
    titles = [["training loss (epoch mean)", "validation loss"],
              ["training accuracy % (epoch mean, augmented)", "validation accuracy %"]]
    for i in range(2):
        for j in range(2):
            a = axes[i, j]
            a.set_title(titles[i][j])
            a.grid(alpha=0.3)
            if i == 1:
                a.set_xlabel("optimisation step")
    axes[1, 0].set_ylim(0, 100)
    axes[1, 1].set_ylim(0, 100)
    axes[0, 0].legend(fontsize=8, title="split", title_fontsize=8)
    fig.suptitle("Learning curves of all splits (points at the end of each epoch)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_per_class(rows, path: Path) -> None:
    plt = pyplot()
    classes = list(rows[0]["per_class_accuracy"])
    data = [[100 * r["per_class_accuracy"][c] for r in rows] for c in classes]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(rows), 0.45 * len(classes) + 1.6))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(rows)), [pct(r["split"]) for r in rows])
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("training fraction")
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=9,
                    color="black" if v > 60 else "white")
    ax.set_title("Per-class test accuracy (%)")
    fig.colorbar(im, ax=ax, fraction=0.06)
    save_figure(fig, path)


# ---------------------------------------------------------------------- markdown
def _fmt_acc(a):
    return "–" if a is None else f"{100 * a:.2f}%"


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---:"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _duration(s: float) -> str:
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def main_table(rows: list[dict], kind: str) -> tuple[list[str], list[list[str]]]:
    mem_col = ("peak GPU alloc / reserved (MB)" if kind == "gpu" else "peak RSS (MB)")
    header = ["split", "training images", "batch", "epochs", "steps", "best val acc", "test acc",
              "train s/epoch", "wall s/epoch", "images/s", mem_col, "total time (s)"]
    body = []
    for r in rows:
        mem = (f"{r['peak_memory_mb']:.0f} / {r['peak_reserved_mb']:.0f}" if kind == "gpu"
               else f"{r['peak_memory_mb']:.0f}")
        body.append([
            pct(r["split"]) + (" †" if r["resumed"] else ""), f"{r['train_images']:,}",
            str(r["batch_size"]), str(r["epochs"]), str(r["steps"]),
            _fmt_acc(r["best_val_accuracy"]), _fmt_acc(r["test_accuracy"]),
            f"{r['train_epoch_time_s']:.1f}" + ("*" if r["train_epoch_time_estimated"] else ""),
            f"{r['mean_epoch_time_s']:.1f}", f"{r['images_per_s']:.0f}", mem,
            f"{r['total_time_s']:.1f}"])
    return header, body


def _markdown(rep: dict, rows: list[dict]) -> str:
    st, an = rep["study"], rep["analysis"]
    kind = an["memory"]["kind"]
    cfg = st["config"]
    L = []
    L.append("# VGG on CIFAR-10: accuracy, time and memory against training-set size\n")
    at_least = (f", at least {st['min_steps']} optimisation steps" if st.get("min_steps")
                else "")
    length = (f"{cfg['steps']} optimisation steps per split" if cfg.get("steps") else
              f"{cfg['epochs']} epochs per split{at_least}")
    width = cfg.get("width", 1)
    width_txt = "" if width == 1 else f" (width {width:g})"
    L.append(f"Study folder `{st['name']}`: {cfg['arch']}{width_txt}, "
             f"{len(rows)} split{'s' if len(rows) != 1 else ''} of the CIFAR-10 training set, "
             f"{length}, seed {cfg['seed']}, on {st['device_description']}. "
             f"{'Preset `' + st['preset'] + '`. ' if st.get('preset') else ''}"
             f"Report generated {rep['generated']}.\n")
    if st.get("note"):
        L.append(f"> Note: {st['note']}\n")
    if rep["unfinished"]:
        L.append(f"> **Unfinished splits** (not in the tables): "
                 f"{', '.join(pct(s) for s in rep['unfinished'])}. Continue with `--resume`.\n")
    L.append("## Results\n")
    header, body = main_table(rows, kind)
    L.append(_table(header, body, ["---"] + ["---:"] * (len(header) - 1)))
    L.append("")
    ds = st.get("dataset") or {}
    n_all = f"{ds['train_images']:,} " if ds.get("train_images") else ""
    n_test = f"{rows[0]['test_images']:,}-image " if rows[0].get("test_images") else ""
    notes = [
        f"*split*: fraction of the {n_all}training images used for training (stratified by "
        "class); validation images come from the rest (up to the validation size); the test set "
        f"is the whole {n_test}test set, evaluated once on the checkpoint with the best "
        "validation accuracy (the last epoch when there is no validation set).",
        "*train s/epoch*: training time of a full epoch (no validation), median over the full "
        "epochs, so the first epoch's warm-up and epochs slowed by other work do not skew it; "
        "*wall s/epoch*: that plus the mean validation time per epoch; *images/s*: median "
        "training throughput of the same epochs; *total time*: the split's whole run (start-up, "
        "data loading, training, validation, test, figures).",
        ("*peak RSS*: the process's peak resident set size (see below)." if kind == "rss" else
         "*peak GPU alloc / reserved*: PyTorch's peak allocated / reserved CUDA memory, reset "
         "every epoch, maximum over epochs."),
    ]
    if any(r["train_epoch_time_estimated"] for r in rows):
        notes.append("\\* no full epoch was trained (a --steps budget shorter than an epoch): "
                     "estimated as images per epoch / measured throughput.")
    if any(r["resumed"] for r in rows):
        notes.append("† resumed after an interruption: total time counts the last session only.")
    L += [f"- {n}" for n in notes]
    L.append("")
    L.append("### Per-class test accuracy\n")
    classes = list(rows[0]["per_class_accuracy"])
    L.append(_table(["class"] + [pct(r["split"]) for r in rows],
                    [[c] + [_fmt_acc(r["per_class_accuracy"][c]) for r in rows] for c in classes],
                    ["---"] + ["---:"] * len(rows)))
    L.append("")
    L.append("## What the numbers say\n")
    L.append("Generated from the measured numbers above.\n")
    L.append("**Accuracy.** " + " ".join(an["accuracy"]["text"]) + "\n")
    L.append("**Time.** " + " ".join(an["time"]["text"]) + "\n")
    L.append("**Memory.** " + " ".join(an["memory"]["text"]) + "\n")
    ref = an["reference"]
    para = "**Compared with the original study.** " + " ".join(ref["text"])
    differs = []
    if cfg["arch"] != "vgg16" or width != 1:
        differs.append(f"a {cfg['arch']}{'' if width == 1 else f' at width {width:g}'} instead "
                       "of the original's VGG16")
    if cfg.get("steps") or (cfg.get("epochs", 0) < 30):
        differs.append(f"a short training budget ({length})")
    if differs:
        para += (" This study used " + " and ".join(differs) + ", so compare the trend rather "
                 "than the levels.")
    L.append(para + "\n")
    L.append(_table(["split", REFERENCE["source"], "this study", "difference (points)"],
                    [[pct(r["split"]), f"{100 * r['reference_accuracy']:.1f}%",
                      _fmt_acc(r["test_accuracy"]),
                      "–" if r["difference_points"] is None else f"{r['difference_points']:+.1f}"]
                     for r in ref["rows"]], ["---", "---:", "---:", "---:"]))
    L.append(f"\nThe original study's final VGG16 reached "
             f"{100 * REFERENCE['final_test_accuracy']:.2f}% test accuracy.\n")
    L.append("## Figures\n")
    captions = {
        "accuracy": "Test accuracy against training fraction (log x), with the original study's "
                    "numbers",
        "epoch_time": "Epoch time and training throughput against training fraction",
        "memory": "Peak memory against training fraction",
        "curves": "Loss and accuracy curves of all splits",
        "per_class": "Per-class test accuracy (class × split)",
    }
    for key, rel in rep["figures"].items():
        L.append(f"![{captions[key]}]({rel})\n")
        L.append(f"*{captions[key]}.*\n")
    L.append("## Reproduce\n")
    for s in st["sessions"]:
        if s.get("command"):
            when = f" (session started {s['started']})" if len(st["sessions"]) > 1 else ""
            L.append(f"- Command{when}: `{s['command']}`")
    L.append(f"- Same settings without a preset: `{st['explicit_command']}`")
    L.append(f"- Seed: {cfg['seed']} (fixes the class-stratified split, the initialisation and "
             "the augmentation order)")
    L.append(f"- Device: {st['device_description']}")
    v = st.get("versions") or {}
    L.append("- Versions: " + ", ".join(f"{k} {v[k]}" for k in
                                         ("vggcifar", "torch", "torchvision", "python", "cuda")
                                         if k in v)
             + (f"; {v['platform']}" if "platform" in v else ""))
    L.append(f"- Data: `{st.get('data_source') or cfg['data']}` ({st.get('data_format') or '?'})")
    where = "in its own process" if st["isolated"] else "in one shared process"
    L.append(f"- Each split ran {where}; "
             f"study wall time {_duration(st['wall_time_s'])} over {len(st['sessions'])} "
             f"session{'s' if len(st['sessions']) != 1 else ''} (sum of the splits' run times "
             f"{_duration(st['sum_split_time_s'])}).")
    loads = [(r["split"], r["load_avg_1min_at_start"][-1]) for r in rows
             if r["load_avg_1min_at_start"] and r["load_avg_1min_at_start"][-1] is not None]
    if loads:
        cpus = (st.get("hardware") or {}).get("logical_cpus")
        L.append(f"- System load (1-minute average) when each split started"
                 f"{f' ({cpus} logical CPUs)' if cpus else ''}: "
                 + ", ".join(f"{pct(f)}: {x:.1f}" for f, x in loads)
                 + ". A load above the CPU count means other work shared the CPU, which slows "
                   "the timings.")
    folders = ", ".join(f"`{r['run_dir']}/`" for r in rows)
    L.append(f"- Per-split run folders: {folders} "
             "(config.json, metrics.csv, summary.json, curves, confusion matrix)")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------- entry point
def _device_description(rows: list[dict], hw: dict) -> str:
    dev = rows[0]["device"] if rows else "?"
    v = rows[0]["versions"] if rows else {}
    if str(dev).startswith("cuda"):
        return f"{dev} ({v.get('gpu') or ', '.join(hw.get('gpus', [])) or 'GPU'})"
    cpu = hw.get("cpu") or v.get("cpu") or "CPU"
    threads = v.get("threads") or hw.get("torch_threads")
    return (f"CPU ({cpu}, {hw.get('logical_cpus', '?')} logical CPUs, {threads} PyTorch threads"
            f"{', no GPU' if not hw.get('gpus') else ''})")


def write_report(study_dir: str | os.PathLike) -> dict:
    """Write ``report.md``, ``report.json`` and ``figures/`` for the finished splits of a study.

    Returns the report dict (the content of ``report.json``).

    Raises:
        VggCifarError: no study in ``study_dir``, or no split has finished yet.
    """
    study_dir = Path(study_dir)
    got = collect(study_dir)
    manifest, rows = got["manifest"], got["rows"]
    if not rows:
        raise VggCifarError(f"no split of the study in {study_dir} has finished yet; nothing to "
                            "report")
    sessions = manifest.get("sessions", [])
    hw = next((s["hardware"] for s in reversed(sessions) if s.get("hardware")), {})
    kind = rows[0]["memory_kind"]
    isolated_flags = [r["isolated"] for r in rows if r["isolated"] is not None]
    isolated = all(isolated_flags) if isolated_flags else None
    an = {"accuracy": analysis.accuracy_findings(rows),
          "time": analysis.time_findings(rows, hw.get("logical_cpus")),
          "memory": analysis.memory_findings(rows, kind, isolated),
          "reference": analysis.reference_comparison(rows)}
    study = {
        "name": study_dir.name, "created": manifest.get("created"),
        "preset": manifest.get("preset"),
        "splits": manifest["splits"], "min_steps": manifest.get("min_steps", 0),
        "config": manifest["config"], "note": manifest.get("note"),
        "sessions": [{k: s.get(k) for k in ("started", "finished", "command", "wall_time_s",
                                           "trained", "skipped", "isolate")} for s in sessions],
        "explicit_command": explicit_command(manifest, out=str(study_dir)),
        "seed": manifest["config"].get("seed"), "device": rows[0]["device"],
        "device_description": _device_description(rows, hw), "hardware": hw,
        "versions": rows[0]["versions"], "isolated": isolated,
        "data_source": rows[0]["data_source"], "data_format": rows[0]["data_format"],
        "dataset": manifest.get("dataset"),
        "wall_time_s": sum(s.get("wall_time_s") or 0 for s in sessions),
        "sum_split_time_s": sum(r["total_time_s"] for r in rows),
    }
    figures_dir = study_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    arch = manifest["config"]["arch"]
    plot_accuracy(rows, study_dir / FIGURES["accuracy"], arch)
    plot_epoch_time(rows, study_dir / FIGURES["epoch_time"], an["time"].get("linear_fit"))
    plot_memory(rows, study_dir / FIGURES["memory"], kind, isolated)
    plot_curves_overlay(rows, study_dir / FIGURES["curves"])
    plot_per_class(rows, study_dir / FIGURES["per_class"])
    table_rows = [{k: v for k, v in r.items() if k not in ("metrics", "versions")} for r in rows]
    rep = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "study": study, "splits": table_rows, "unfinished": got["unfinished"],
        "analysis": an,
        "reference": {"source": REFERENCE["source"],
                      "test_accuracy": {f"{k:g}": v for k, v in REFERENCE["test_accuracy"].items()},
                      "final_test_accuracy": REFERENCE["final_test_accuracy"]},
        "figures": dict(FIGURES),
    }
    md = _markdown(rep, rows)
    atomic_write(study_dir / "report.json",
                 lambda t: Path(t).write_text(json.dumps(rep, indent=2, default=_json_default)))
    atomic_write(study_dir / "report.md", lambda t: Path(t).write_text(md))
    return rep


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    return str(o)
