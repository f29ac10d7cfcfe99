"""Checks of values read from files (checkpoints, manifests, study records). Standard library
only, so the light modules (the study's layout) can use them without importing torch."""

from __future__ import annotations

import math


def is_finite_number(v) -> bool:
    """An int or float (not a bool) that is finite: what numeric options read from files must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
