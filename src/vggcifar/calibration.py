"""Calibration: temperature scaling and the figures that say whether probabilities mean what they
say.

Temperature scaling (Guo et al., 2017) divides a model's logits by one scalar ``T`` before the
softmax: ``probabilities = softmax(logits / T)``. It never changes the arg-max (so accuracy is
unchanged), only how confident the probabilities are: ``T > 1`` softens over-confident models,
``T < 1`` sharpens under-confident ones (label smoothing makes a model under-confident).
``T`` is fitted by minimising the negative log-likelihood on *held-out* images: images used
neither for training nor for any reported figure (vgg-train uses its validation split; see
docs/recipe.md, "Calibration"). Every model file carries its ``T`` (absent: 1).

The figures (all on ``[N, C]`` probabilities and ``[N]`` integer labels):

* :func:`ece`: expected calibration error, 15 equal-width bins of the top-1 probability, the
  bin-size-weighted mean of |accuracy - mean top-1 probability|;
* :func:`nll`: mean negative log-likelihood of the true class;
* :func:`brier`: mean over images of the squared error summed over classes (0 perfect, 2 worst).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

ECE_BINS = 15
# The range searched for T, and the range a model file may carry (serving refuses others).
T_MIN, T_MAX = 0.05, 20.0


def softmax(logits, temperature: float = 1.0, dtype=np.float64) -> np.ndarray:
    """``[N, C]`` logits -> ``[N, C]`` softmax(logits / temperature) of ``dtype``, computed
    stably (float64 for the calibration figures; serving uses float32)."""
    z = np.array(logits, dtype=dtype)
    if temperature != 1.0:
        z /= dtype(temperature)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _check(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(np.int64)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise ValueError(f"expected [N, C] probabilities and N labels, got {p.shape} and {y.shape}")
    return p, y


def bin_sums(probs, labels, bins: int = ECE_BINS) -> np.ndarray:
    """``[3, bins]`` float64: per bin of the top-1 probability (equal-width bins of (0, 1]; a
    top-1 probability ``c`` falls in bin ``ceil(c * bins) - 1``, so each bin is ``(lo, hi]``),
    the image count, the sum of top-1 probabilities and the number correct. Sums, so that data
    split across ranks can be added up before :func:`ece_from_sums`."""
    p, y = _check(probs, labels)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    return np.stack([np.bincount(idx, minlength=bins).astype(np.float64),
                     np.bincount(idx, conf, bins), np.bincount(idx, correct, bins)])


def reliability_bins(probs, labels, bins: int = ECE_BINS) -> dict:
    """Top-1 probability against correctness in ``bins`` equal-width bins (see :func:`bin_sums`).

    Returns:
        ``{"count": [B] int, "confidence": [B] mean top-1 probability, "accuracy": [B]
        fraction correct}`` numpy arrays; empty bins have ``nan`` confidence and accuracy.
    """
    count, conf, correct = bin_sums(probs, labels, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count.astype(np.int64), "confidence": conf / count,
                "accuracy": correct / count}


def ece_from_sums(sums: np.ndarray) -> float:
    """ECE from :func:`bin_sums`: sum over bins of |correct - confidence sum| / images."""
    count, conf, correct = sums
    return float(np.abs(correct - conf).sum() / max(count.sum(), 1))


def ece(probs, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-1 probability (``bins`` equal-width bins): the
    bin-size-weighted mean of |accuracy - mean top-1 probability|."""
    return ece_from_sums(bin_sums(probs, labels, bins))


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class (probabilities floored at 1e-12)."""
    p, y = _check(probs, labels)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean over images of sum over classes of (p - one-hot)^2."""
    p, y = _check(probs, labels)
    err = p.copy()
    err[np.arange(len(y)), y] -= 1.0
    return float((err ** 2).sum(1).mean())


def calibration_figures(probs, labels, bins: int = ECE_BINS) -> dict:
    """``{"ece", "nll", "brier"}`` of ``[N, C]`` probabilities."""
    return {"ece": ece(probs, labels, bins), "nll": nll(probs, labels),
            "brier": brier(probs, labels)}


def fit_temperature(logits, labels, *, reduce: Callable | None = None,
                    tol: float = 1e-5) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1/T``, hence unimodal in ``log T``: a golden-section search over
    ``log T`` in ``[log T_MIN, log T_MAX]`` finds the minimum to ``tol`` (relative) in about 30
    evaluations, with no step size to tune.

    Args:
        logits: ``[N, C]`` float logits of held-out images (numpy or torch, any device).
        labels: ``[N]`` integer class indices.
        reduce: for data split across distributed ranks: maps a local ``[2]`` float64 tensor
            (NLL sum, image count) to the sum over ranks, so every rank takes the same steps.
    Returns:
        ``T`` in ``[T_MIN, T_MAX]`` (a bound when the optimum lies beyond it).
    """
    import torch

    z = torch.as_tensor(logits).detach().double()
    y = torch.as_tensor(labels).detach().long().to(z.device)

    def loss(log_t: float) -> float:
        lp = torch.log_softmax(z / math.exp(log_t), dim=1)
        s = torch.stack([-lp.gather(1, y[:, None]).sum(), torch.tensor(float(len(y)),
                                                                         dtype=z.dtype,
                                                                         device=z.device)])
        s = reduce(s) if reduce is not None else s
        return float(s[0] / s[1].clamp(min=1))

    g = (math.sqrt(5) - 1) / 2
    a, b = math.log(T_MIN), math.log(T_MAX)
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    return float(min(max(math.exp((a + b) / 2), T_MIN), T_MAX))


def plot_reliability(panels: dict, path, title: str, bins: int = ECE_BINS) -> None:
    """Write a reliability diagram (PNG): per panel, accuracy against mean top-1 probability in
    each bin, before and after temperature scaling, with the diagonal (perfect calibration) and
    each curve's ECE in the legend.

    Args:
        panels: ``{panel title: (probs before [N, C], probs after [N, C], labels [N])}``.
        path: the PNG to write.
        title: the figure's title (model, data, temperature).
    """
    from .plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (name, (before, after, labels)) in zip(axes[0], panels.items()):
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        for probs, style, what in ((before, "o-", "before T"), (after, "s--", "after T")):
            b = reliability_bins(probs, labels, bins)
            used = b["count"] > 0
            ax.plot(b["confidence"][used], b["accuracy"][used], style, markersize=4,
                    label=f"{what} (ECE {ece(probs, labels, bins):.3f})")
        # Where the images are (after T): the ECE weights each bin by its share.
        share = b["count"] / b["count"].sum()
        ax.bar((np.arange(bins) + 0.5) / bins, share, width=1 / bins, color="grey", alpha=0.2,
               label="share of images (after T)")
        ax.set(title=name, xlabel="mean top-1 probability in bin", ylabel="accuracy in bin",
               xlim=(0, 1), ylim=(0, 1), aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
