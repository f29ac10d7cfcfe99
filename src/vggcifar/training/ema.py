"""An exponential moving average (EMA) of a model's weights, for ``vgg-train --ema DECAY``.

The average covers the parameters and the floating-point buffers (BatchNorm's running mean and
variance), so the averaged model is complete and evaluates on its own; integer buffers (the
BatchNorm step counter) are copied. The decay ramps up as ``min(decay, (1 + t) / (10 + t))``
after ``t`` updates, so the first steps do not drag the random initialisation along.
"""

from __future__ import annotations

import copy

import torch


class WeightEMA:
    """``module``: an eval-mode copy of the model holding the average; call :meth:`update` after
    every optimizer step.

    Args:
        model: the model being trained (not a DDP wrapper).
        decay: per-step decay in (0, 1); the average spans about ``1 / (1 - decay)`` steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # Same order in both: state_dict() of a deep copy lists the same entries.
        live, avg = model.state_dict(keep_vars=True), self.module.state_dict(keep_vars=True)
        self._float = [(avg[k], v) for k, v in live.items() if v.is_floating_point()]
        self._other = [(avg[k], v) for k, v in live.items() if not v.is_floating_point()]

    def current_decay(self) -> float:
        """The decay the next update uses (ramped up over the first steps)."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the live weights by ``1 - decay``."""
        d = self.current_decay()
        self.updates += 1
        avg = [a for a, _ in self._float]
        live = [v.detach() for _, v in self._float]
        torch._foreach_lerp_(avg, live, 1.0 - d)
        for a, v in self._other:
            a.copy_(v)

    def state(self) -> dict:
        """What :meth:`load_state` needs besides the averaged weights (saved as the checkpoint's
        ``state_dict``)."""
        return {"decay": self.decay, "updates": self.updates}

    def load_state(self, state_dict: dict, state: dict) -> None:
        """Restore the average (``state_dict``) and its update count from a checkpoint."""
        updates = state.get("updates", 0) if isinstance(state, dict) else None
        # A damaged count would break the decay ramp: negative makes it overshoot or divide by
        # zero, a float inf overflows int().
        if not isinstance(updates, int) or isinstance(updates, bool) or updates < 0:
            raise ValueError(f"the EMA's update count {str(updates)[:30]} is not a whole number")
        self.module.load_state_dict(state_dict)
        self.updates = updates
