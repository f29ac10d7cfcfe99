"""The study report's figures (``figures/*.png``), drawn from the rows of
:func:`vggcifar.study.collect.collect`. matplotlib is imported inside the functions."""

from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure
from .analysis import pct
from .presets import REFERENCE

FIGURES = {
    "accuracy": "figures/accuracy_vs_fraction.png",
    "epoch_time": "figures/epoch_time_vs_fraction.png",
    "memory": "figures/memory_vs_fraction.png",
    "curves": "figures/curves.png",
    "per_class": "figures/per_class_heatmap.png",
}


def plot_all(study_dir: Path, rows: list[dict], arch: str, analysis: dict, kind: str,
             isolated: bool | None) -> dict:
    """Draw every figure into ``study_dir/figures``; returns :data:`FIGURES`."""
    (study_dir / "figures").mkdir(exist_ok=True)
    plot_accuracy(rows, study_dir / FIGURES["accuracy"], arch)
    plot_epoch_time(rows, study_dir / FIGURES["epoch_time"], analysis["time"].get("linear_fit"))
    plot_memory(rows, study_dir / FIGURES["memory"], kind, isolated)
    plot_curves_overlay(rows, study_dir / FIGURES["curves"])
    plot_per_class(rows, study_dir / FIGURES["per_class"])
    return dict(FIGURES)


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
    # One view is the original study's figure; flip TTA (when the runs used it) beside it.
    one = [(r["split"], 100 * r["test_accuracy_one_view"]) for r in rows
           if r.get("test_accuracy_one_view") is not None]
    tta = [(r["split"], 100 * r["test_accuracy"]) for r in rows if r.get("tta")]
    main = one if len(one) == len(rows) else [(r["split"], 100 * r["test_accuracy"]) for r in rows]
    label = "one view" if main is one else "as evaluated"
    ax.plot([f for f, _ in main], [a for _, a in main], "o-", color="tab:blue", lw=2,
            label=f"this study: test, {label} ({arch})")
    if tta and main is one:
        ax.plot([f for f, _ in tta], [a for _, a in tta], "v--", color="tab:blue", alpha=0.5,
                label="this study: test, flip TTA")
    val = [(r["split"], 100 * r["best_val_accuracy"]) for r in rows
           if r.get("best_val_accuracy") is not None]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "^--", color="tab:cyan", alpha=0.8,
                label="this study: best validation")
    ref = sorted(REFERENCE["test_accuracy"].items())
    ax.plot([f for f, _ in ref], [100 * a for _, a in ref], "s:", color="tab:gray",
            label=f"{REFERENCE['source']}: test")
    for f, a in main:
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
