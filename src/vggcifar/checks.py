"""Checks of values read from files (checkpoints, manifests, study records). Standard library
only, so the light modules (the study's layout) can use them without importing torch."""

from __future__ import annotations

import math


def is_finite_number(v) -> bool:
    """An int or float (not a bool) that is finite: what numeric options read from files must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


MAX_CLASSES = 1000  # what a checkpoint may hold; a data folder with more cannot make one
MAX_CLASS_NAME = 200  # characters; a folder name is at most 255 bytes


def class_names_problem(names) -> str | None:
    """What is wrong with class names read from a data folder (folder names or a
    ``batches.meta``) or a model file, or None: they become the model's outputs, file names'
    neighbours in CSV reports, labels on pages and in terminals, so they must be 1..MAX_CLASSES
    distinct, non-empty strings of at most MAX_CLASS_NAME characters that encode as UTF-8 (no
    undecodable bytes from the file system) and hold no control characters (a newline would
    break the reports, an escape sequence drive a terminal)."""
    if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= MAX_CLASSES:
        n = len(names) if isinstance(names, (list, tuple)) else 0
        return f"{n} classes; a model has 1 to {MAX_CLASSES}"
    seen = set()
    for n in names:
        if not isinstance(n, str) or not n:
            return "a class name is empty or not text"
        try:
            n.encode("utf-8")
        except UnicodeEncodeError:
            return f"class name {ascii(n)[:60]} is not valid UTF-8"
        if len(n) > MAX_CLASS_NAME:
            return f"class name {ascii(n)[:60]}... is over {MAX_CLASS_NAME} characters"
        # C0, DEL and C1: a newline breaks the reports, ESC (or C1's CSI) drives terminals
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in n):
            return f"class name {ascii(n)[:60]} holds control characters"
        if n in seen:
            return f"class name {ascii(n)[:60]} appears twice"
        seen.add(n)
    return None
