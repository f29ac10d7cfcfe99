"""Temperature scaling at the end of a training run: T fitted on the validation split, images
held out from training and from every reported figure (never the test set)."""

from __future__ import annotations

import numpy as np
import torch

from ..calibration import bin_sums, ece_from_sums, fit_temperature, softmax
from .distributed import DistInfo, all_reduce_sum
from .evaluate import predict_logits

# Why a run without held-out images keeps T = 1 (docs/recipe.md, "Calibration").
NO_HELD_OUT = ("no held-out images (--split 1 or --val-size 0): T = 1; train with a validation "
               "split (e.g. --split 0.98) to fit it, see docs/recipe.md, Calibration")


def fit_run_temperature(model, val_loader, *, amp_dtype=None, info=None,
                        log=lambda msg: None) -> tuple[float, dict]:
    """``(T, record)`` for a run's chosen weights ``model``: fitted on ``val_loader`` (its
    validation split); without one T stays 1 and the record says why."""
    if val_loader is None:
        log(f"temperature scaling: {NO_HELD_OUT}")
        return 1.0, {"temperature": 1.0, "fitted_on": None, "reason": NO_HELD_OUT}
    cal = fit_on_loader(model, val_loader, amp_dtype=amp_dtype, info=info)
    if cal["fitted_on"] is None:
        log(f"temperature scaling: {cal['reason']}")
        return 1.0, cal
    log(f"temperature scaling: T = {cal['temperature']:.4f} fitted on {cal['images']:,} "
        f"validation images (NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}, "
        f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f})")
    return cal["temperature"], cal


def fit_on_loader(model, loader, *, amp_dtype=None, info=None) -> dict:
    """Fit the temperature of ``model`` on the held-out images of ``loader`` (vgg-train's
    validation split: batches of normalised ``[B, 3, S, S]`` images and ``[B]`` labels), one
    view, the logits computed as the run evaluates them. With distributed training each rank
    holds its shard; every sum is added over ranks, so all ranks fit the same ``T``.

    Returns:
        ``{"temperature", "fitted_on", "images", "nll_before", "nll_after", "ece_before",
        "ece_after"}`` (JSON-able; ``before`` is T = 1).
    """
    info = info or DistInfo()
    model.eval()
    zs, ys = [], []
    for x, y in loader:
        zs.append(predict_logits(model, x, amp_dtype=amp_dtype).float().cpu())
        ys.append(y.cpu())
    # A rank may hold no validation images (--val-size below the number of ranks): its sums
    # are zero, whatever the class count, so a [0, 1] stand-in serves.
    z = torch.cat(zs) if zs else torch.empty(0, 1)
    y = torch.cat(ys) if ys else torch.empty(0, dtype=torch.long)
    device = loader.device if hasattr(loader, "device") else "cpu"

    def total(t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t.to(device), info).cpu()

    # One inf or NaN logit makes every NLL NaN and the search end at T_MAX, which would ship
    # near-uniform probabilities: such a model keeps T = 1, and the record says why.
    counts = total(torch.tensor([float((~torch.isfinite(z)).any(dim=1).sum()), float(len(y))],
                                dtype=torch.float64))
    if counts[0] > 0 or counts[1] == 0:
        reason = (f"{int(counts[0]):,} of {int(counts[1]):,} validation images have non-finite "
                  "logits: T = 1" if counts[1] else "no validation images: T = 1")
        return {"temperature": 1.0, "fitted_on": None, "reason": reason,
                "images": int(counts[1])}
    t = fit_temperature(z, y, reduce=total)
    out = {"temperature": t, "fitted_on": "validation split (held out from training)"}
    for when, temp in (("before", 1.0), ("after", t)):
        p = softmax(z.numpy(), temp)
        nll_sum = -np.log(np.maximum(p[np.arange(len(y)), y.numpy()], 1e-12)).sum()
        local = np.concatenate([[nll_sum, len(y)], bin_sums(p, y.numpy()).ravel()])
        sums = total(torch.from_numpy(local)).numpy()
        out["images"] = int(sums[1])
        out[f"nll_{when}"] = float(sums[0] / max(sums[1], 1))
        out[f"ece_{when}"] = ece_from_sums(sums[2:].reshape(3, -1))
    return out
