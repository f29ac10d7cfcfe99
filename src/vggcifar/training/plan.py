"""The run plan: the one place where a run's batch size, learning rate, steps, epochs,
validation cadence and precision are worked out from its options and its data.

Used by the trainer (to run), the study (to announce and record each split's plan before
training) and the study report (to read a finished run's epochs back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..errors import VggCifarError
from .config import TrainConfig, auto_batch_size, auto_lr, resolve_amp


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimisation steps in one epoch of ``n_train`` images at global batch ``batch_size``: both
    loaders drop an incomplete last batch when there is more than one batch, and a split
    smaller than one batch is one (smaller) step."""
    return n_train // batch_size if n_train > batch_size else 1


@dataclass(frozen=True)
class RunPlan:
    """A run's resolved numbers (see :func:`plan_run`).

    Attributes:
        batch_size: global batch (all ranks together); per_rank_batch: each rank's share.
        lr: peak learning rate.
        steps_per_epoch, images_per_epoch: one epoch of the training split.
        total_steps, epochs: the run's length (a ``--steps`` budget ends inside the last epoch).
        val_every: validate every this many epochs (and after the last one).
        amp, amp_reason: bf16 autocast and why; channels_last: memory format of inputs/model.
        world_size: processes sharing each batch.
    """

    batch_size: int
    per_rank_batch: int
    lr: float
    steps_per_epoch: int
    images_per_epoch: int
    total_steps: int
    epochs: int
    val_every: int
    amp: bool
    amp_reason: str
    channels_last: bool
    world_size: int = 1

    def resolve(self, config: TrainConfig) -> TrainConfig:
        """A copy of ``config`` with the automatic options (0 / None) replaced by this plan's
        values: what ``config.json`` and checkpoints record, so that a resumed run keeps them."""
        return replace(config, batch_size=self.batch_size, lr=self.lr, amp=self.amp,
                       channels_last=self.channels_last)


def plan_run(config: TrainConfig, n_train: int, device, world: int = 1, *, n_val: int = 0,
             min_steps: int = 0, resumed: bool = False) -> RunPlan:
    """Work out a run's numbers; ``config`` is not changed.

    Args:
        config: the run's options; 0 (``batch_size``, ``lr``, ``val_every``) and None (``amp``,
            ``channels_last``) mean automatic.
        n_train, n_val: training and validation images.
        device: ``torch.device`` (or its name) the run trains on: the automatic batch size and
            precision depend on it.
        world: number of processes sharing each (global) batch.
        min_steps: with ``epochs`` (no ``steps``), train at least this many steps (the study's
            ``--min-steps``: more epochs for small splits).
        resumed: ``config`` comes from a run being resumed, whose explicit ``amp`` is kept.

    Raises:
        VggCifarError: a batch size the world size does not divide.
    """
    device = torch.device(device)
    batch = config.batch_size or auto_batch_size(n_train, device)
    if batch % world:
        raise VggCifarError(f"batch size {batch} is global and must be divisible by the world "
                            f"size {world}")
    if resumed and config.amp is not None:
        amp, amp_reason = bool(config.amp), "kept from the resumed run"
    else:
        amp, amp_reason = resolve_amp(config.amp, device)
    spe = steps_per_epoch(n_train, batch)
    if config.steps:
        total, epochs = int(config.steps), math.ceil(config.steps / spe)
    else:
        epochs = config.epochs
        if min_steps:
            epochs = max(epochs, math.ceil(min_steps / spe))
        total = epochs * spe
    return RunPlan(
        batch_size=batch, per_rank_batch=batch // world, lr=config.lr or auto_lr(batch),
        steps_per_epoch=spe, images_per_epoch=spe * batch if n_train > batch else n_train,
        total_steps=total, epochs=epochs,
        # Validating 5,000 images after every epoch of a 500-image split would dominate the run.
        val_every=config.val_every or max(1, math.ceil(n_val / (2 * n_train))),
        amp=amp, amp_reason=amp_reason,
        # Faster for these convs on CUDA and on x86 CPUs alike.
        channels_last=True if config.channels_last is None else bool(config.channels_last),
        world_size=world)
