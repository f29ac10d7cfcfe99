"""Learning-rate schedules as pure functions of the optimisation step (so a resumed run only
needs the step count)."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, schedule: str, warmup: float = 0.2) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps.

    - ``onecycle``: linear warm-up from 1/25 to 1 over ``warmup`` of the steps, then cosine to 0.
    - ``cosine``: cosine from 1 to 0.
    - ``step``: 1, then 0.1 from 50% and 0.01 from 75% of the steps.
    - ``linear``: the same warm-up as ``onecycle``, then a straight line to 0.
    """
    total = max(1, total)
    t = min(step, total) / total
    if schedule in ("onecycle", "linear"):
        if warmup > 0 and t < warmup:
            return 0.04 + 0.96 * t / warmup
        u = (t - warmup) / max(1e-12, 1 - warmup)
        return 0.5 * (1 + math.cos(math.pi * u)) if schedule == "onecycle" else 1 - u
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    raise ValueError(f"unknown schedule {schedule!r}")
