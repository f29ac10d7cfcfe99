"""A study folder's layout: the manifest (``study.json``) and the run folder of each split.

Read by the runner (to train and resume) and by the report (to describe what was trained); it
imports neither, so they do not import each other. Standard library only.

Layout::

    study.json          what was asked (splits, training options, preset, commands, hardware)
    split-0.01/         a normal `vgg-train` run folder per split (config.json, metrics.csv, ...)
    split-0.1/ ...
    report.md, report.json, figures/*.png   written by :func:`vggcifar.study.write_report`
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import VggCifarError
from ..io import atomic_write

MANIFEST = "study.json"
MANIFEST_VERSION = 1


def run_name(split: float) -> str:
    """Run-folder name of a split inside the study folder: ``split-0.01``."""
    return f"split-{split:g}"


def split_state(study_dir: str | os.PathLike, split: float) -> str:
    """``"done"`` (summary.json present), ``"partial"`` (last.pt but no summary) or ``"new"``."""
    d = Path(study_dir) / run_name(split)
    if (d / "summary.json").is_file():
        return "done"
    if (d / "last.pt").is_file():
        return "partial"
    return "new"


def read_manifest(study_dir: str | os.PathLike) -> dict:
    """The study's ``study.json`` as a dict.

    Raises:
        VggCifarError: missing or unreadable.
    """
    p = Path(study_dir) / MANIFEST
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise VggCifarError(f"{study_dir} holds no study ({MANIFEST} is missing); start one "
                            "without --resume") from None
    except (OSError, ValueError) as e:
        raise VggCifarError(f"cannot read {p}: {e}") from None


def write_manifest(study_dir: str | os.PathLike, manifest: dict) -> None:
    """Atomically (re)write ``study.json``."""
    atomic_write(Path(study_dir) / MANIFEST,
                 lambda t: Path(t).write_text(json.dumps(manifest, indent=2)))


def set_note(study_dir: str | os.PathLike, note: str) -> None:
    """Replace the note shown at the top of a study's report ("" removes it)."""
    manifest = read_manifest(study_dir)
    manifest["note"] = note or None
    write_manifest(study_dir, manifest)
