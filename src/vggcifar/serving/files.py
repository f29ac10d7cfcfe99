"""Turning command-line arguments (files, folders, globs) into a list of image files."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..image_formats import IMAGE_EXTENSIONS

_GLOB_CHARS = set("*?[")


def is_image_name(path: str | os.PathLike) -> bool:
    """True for file names with an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def walk_images(folder: Path, problems: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted, hidden files and folders skipped).

    A folder that cannot be listed (no permission, removed meanwhile) is appended to
    ``problems`` as ``(folder, one-line reason)`` instead of being skipped silently: its images
    were asked for and not predicted.
    """
    def unreadable(e: OSError) -> None:
        if problems is not None:
            problems.append((e.filename or str(folder),
                             f"cannot read this folder ({e.strerror or type(e).__name__})"))

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and is_image_name(f)]
    return found


def expand_inputs(args) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders and glob patterns.

    A named file is always included (even without an image extension: the user asked for it,
    and decoding will say what is wrong). Folders and glob matches contribute files with image
    extensions. Duplicates are dropped, first occurrence kept.

    Returns:
        ``(files, problems)``: ``problems`` are ``(argument, one-line reason)`` for arguments
        that gave nothing (a path that does not exist, a folder without images, a pattern
        matching nothing) and for folders that could not be read.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for arg in args:
        p = Path(arg)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            before = len(problems)
            found = walk_images(p, problems)
            if found:
                files += found
            elif len(problems) == before:
                kinds = ", ".join(IMAGE_EXTENSIONS)
                problems.append((arg, f"folder holds no image files ({kinds})"))
        elif _GLOB_CHARS & set(arg):
            found = []
            for m in sorted(glob.glob(arg, recursive=True)):
                mp = Path(m)
                if mp.is_dir():
                    found += walk_images(mp, problems)
                elif mp.is_file() and is_image_name(mp):
                    found.append(mp)
            if found:
                files += found
            else:
                problems.append((arg, "no image files match this pattern"))
        else:
            problems.append((arg, "no such file or folder"))
    seen = set()
    unique = []
    for f in files:
        key = os.path.normpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems
