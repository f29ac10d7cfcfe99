"""Run-folder artefacts: metrics.csv, per_class.csv and the figures (curves, confusion matrix,
sample predictions)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ..io import atomic_write
from ..plotting import pyplot, save_figure


# The per-epoch table vgg-train prints: column, format.
TABLE_COLS = [("epoch", "{:>5}"), ("train_loss", "{:>10.4f}"), ("train_acc", "{:>9.2%}"),
              ("val_loss", "{:>8.4f}"), ("val_acc", "{:>8.2%}"), ("lr", "{:>8.4f}"),
              ("epoch_time_s", "{:>7.1f}s"), ("images_per_s", "{:>8.0f}"),
              ("peak_mem_mb", "{:>8.0f}")]


def _width(fmt: str) -> int:
    return len(fmt.format(0.0 if "f" in fmt or "%" in fmt else 0))


def table_header() -> str:
    """The column names of the per-epoch table, each as wide as its values."""
    return " ".join(f"{name:>{_width(fmt)}}" for name, fmt in TABLE_COLS)


def table_row(row: dict) -> str:
    """One epoch's ``metrics.csv`` row as a line of the table (``-`` where a value is None)."""
    return " ".join(("{:>%d}" % _width(fmt)).format("-") if row.get(name) is None
                    else fmt.format(row[name]) for name, fmt in TABLE_COLS)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Atomically write dict rows (columns: the union of keys, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss, accuracy and learning-rate panels over epochs, train and validation."""
    plt = pyplot()
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    ax[0].plot(ep, [r["train_loss"] for r in rows], label="train")
    val = [(r["epoch"], r["val_loss"], r["val_acc"]) for r in rows if r.get("val_acc") is not None]
    if val:
        ax[0].plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation")
    ax[0].set(title="loss", xlabel="epoch")
    ax[1].plot(ep, [100 * r["train_acc"] for r in rows], label="train")
    if val:
        ax[1].plot([v[0] for v in val], [100 * v[2] for v in val], "o-", label="validation")
    ax[1].set(title="accuracy (%)", xlabel="epoch")
    ax[2].plot(ep, [r["lr"] for r in rows])
    ax[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for a in ax[:2]:
        a.legend()
    for a in ax:
        a.grid(alpha=0.3)
    save_figure(fig, path)


def plot_confusion(confusion: torch.Tensor, classes, path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix with counts."""
    plt = pyplot()
    cm = confusion.double()
    norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (test)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


def plot_samples(images: torch.Tensor, true, pred, classes, path: Path, cols: int = 8) -> None:
    """Grid of ``[N, 3, 32, 32]`` uint8 images titled 'true / predicted' (red when wrong)."""
    plt = pyplot()
    n = len(images)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.7))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k].permute(1, 2, 0).numpy(), interpolation="nearest")
            ok = int(true[k]) == int(pred[k])
            ax.set_title(f"{classes[int(true[k])]}\n{classes[int(pred[k])]}", fontsize=7,
                         color="black" if ok else "red")
    fig.suptitle("test samples: true (top) / predicted (bottom)", fontsize=9)
    save_figure(fig, path)
