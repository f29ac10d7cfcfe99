"""Figures written as PNG files: matplotlib on its non-interactive backend, atomic writes."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_write


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: only the
    figure writers need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Atomically write ``fig`` as a PNG and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    pyplot().close(fig)
