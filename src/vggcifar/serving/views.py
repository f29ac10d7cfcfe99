"""Test-time augmentation: the views of a batch that a TTA mode averages over.

The modes are :data:`~vggcifar.serving.names.TTA_MODES`; ``flip-shift`` adds to the image and its
mirror image four copies shifted by one pixel (right, left, down, up), the gap filled with zeros
as training's padded random crop fills it.
"""

from __future__ import annotations

import numpy as np

from .names import check_tta

# (dy, dx) of the shifted views of "flip-shift".
SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))
# Model inputs per image in each mode.
VIEW_COUNT = {"none": 1, "flip": 2, "flip-shift": 2 + len(SHIFTS)}


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``[N, C, H, W]`` moved by ``dy`` rows and ``dx`` columns (any sign), zeros filling the
    gap; same dtype and shape."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def tta_views(x: np.ndarray, tta) -> list[np.ndarray]:
    """The views of ``x`` (``[N, 3, S, S]``, uint8 pixels or float input) that mode ``tta``
    averages over, each ``[N, 3, S, S]`` and C-contiguous: ``[x]`` for one view."""
    mode = check_tta(tta)
    views = [x]
    if mode in ("flip", "flip-shift"):
        views.append(np.ascontiguousarray(x[..., ::-1]))
    if mode == "flip-shift":
        views += [shifted(x, dy, dx) for dy, dx in SHIFTS]
    return views


def mean_over_views(run, x: np.ndarray, tta):
    """``run`` (a batch -> an array ``[N, ...]`` or a tuple of them) on every view of ``x`` in one
    call, averaged over the views: the same structure as ``run(x)``."""
    views = tta_views(x, tta)
    if len(views) == 1:
        return run(x)
    out = run(np.concatenate(views))
    n, k = len(x), np.float32(1.0 / len(views))

    def mean(a):
        return a.reshape(len(views), n, *a.shape[1:]).sum(0) * k

    return tuple(mean(a) for a in out) if isinstance(out, tuple) else mean(out)
