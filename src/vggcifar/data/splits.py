"""Stratified train/validation splits of the CIFAR-10 training set."""

from __future__ import annotations

import math

import torch

from ..errors import VggCifarError


def check_fraction(split: float) -> float:
    """Validate a training fraction: 0 < split <= 1."""
    try:
        split = float(split)
    except (TypeError, ValueError):
        raise VggCifarError(f"split must be a number in (0, 1], got {split!r}") from None
    if not (0.0 < split <= 1.0) or math.isnan(split):
        raise VggCifarError(f"split must be in (0, 1] (a fraction of the training set), got {split}")
    return split


def stratified_split(labels: torch.Tensor, split: float, seed: int = 0,
                     val_size: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``split`` of the images of every class for training, stratified and seeded.

    Args:
        labels: ``[N]`` int64 class labels.
        split: fraction of each class used for training, in (0, 1].
        seed: fixes the choice.
        val_size: cap on the validation set, drawn from the remaining images, also stratified.
    Returns:
        ``(train_idx, val_idx)``: sorted int64 index tensors, disjoint; ``val_idx`` is empty when
        ``split == 1`` or ``val_size == 0``.
    """
    split = check_fraction(split)
    g = torch.Generator().manual_seed(int(seed))
    classes = torch.unique(labels)
    train_parts, rest_parts = [], []
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_train = max(1, int(round(split * len(idx))))
        train_parts.append(idx[:n_train])
        rest_parts.append(idx[n_train:])
    n_rest = sum(len(r) for r in rest_parts)
    n_val = min(int(val_size), n_rest)
    val_parts = []
    if n_val > 0:
        # Proportional share per class (largest remainders), so validation stays stratified.
        quotas = [n_val * len(r) / n_rest for r in rest_parts]
        take = [int(q) for q in quotas]
        order = sorted(range(len(quotas)), key=lambda i: quotas[i] - take[i], reverse=True)
        for i in order[: n_val - sum(take)]:
            take[i] += 1
        val_parts = [r[:k] for r, k in zip(rest_parts, take)]
    train_idx = torch.sort(torch.cat(train_parts)).values
    val_idx = (torch.sort(torch.cat(val_parts)).values if val_parts
               else torch.empty(0, dtype=torch.int64))
    if len(train_idx) == 0:
        raise VggCifarError(f"split {split} leaves no training images")
    return train_idx, val_idx
