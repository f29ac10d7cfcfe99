"""Evaluation: loss, accuracy and confusion matrix, reduced across distributed ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def predict_logits(model, x: torch.Tensor, *, amp_dtype=None, tta: bool = False) -> torch.Tensor:
    """Logits ``[N, C]`` (float32) for a normalised batch ``[N, 3, H, W]``; with ``tta`` the
    average of the image's and its mirror image's logits."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = model(x).float()
        if tta:
            logits = 0.5 * (logits + model(x.flip(3)).float())
    return logits


@torch.no_grad()
def evaluate(model, loader, num_classes: int, *, amp_dtype=None, tta: bool = False,
             info: DistInfo | None = None) -> dict:
    """Evaluate ``model`` (switched to eval mode) over ``loader``.

    Returns:
        ``{"loss": float, "accuracy": float (fraction), "n": int,
        "confusion": [C, C] int64 CPU tensor (rows: true class, columns: predicted)}``, summed
        over all ranks.
    """
    info = info or DistInfo()
    model.eval()
    device = loader.device
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in loader:
        logits = predict_logits(model, x, amp_dtype=amp_dtype, tta=tta)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes)
    all_reduce_sum(confusion, info)
    all_reduce_sum(loss_sum, info)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    return {"loss": float(loss_sum) / max(1, n), "accuracy": float(confusion.trace()) / max(1, n),
            "n": n, "confusion": confusion}


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each class (fraction) from a ``[C, C]`` confusion matrix."""
    totals = confusion.sum(1).clamp(min=1)
    return (confusion.diag().double() / totals.double()).tolist()
