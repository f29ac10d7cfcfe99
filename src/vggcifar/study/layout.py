"""A study folder's layout: the manifest (``study.json``) and the run folder of each split.

Read by the runner (to train and resume) and by the report (to describe what was trained); it
imports neither, so they do not import each other. Standard library only.

Layout::

    study.json          what was asked (splits, training options, preset, commands, hardware)
    split-0.01/         a normal `vgg-train` run folder per split (config.json, metrics.csv, ...)
    split-0.1/ ...
    report.md, report.json, figures/*.png   written by :func:`vggcifar.study.write_report`

A study's results without its checkpoints (:func:`copy_results`) are a few hundred kilobytes:
small enough to commit, and all that the report and ``--resume`` need of a finished split, so a
study can go on on another machine from a copy of them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from ..errors import VggCifarError
from ..io import atomic_write

MANIFEST = "study.json"
MANIFEST_VERSION = 1

# What copy_results takes: the study's own files and figures, and of every finished split what
# the report reads plus the run's figures. Never checkpoints (best.pt, last.pt: 60-120 MB each).
STUDY_RESULT_FILES = (MANIFEST, "report.md", "report.json")
SPLIT_RESULT_FILES = ("config.json", "summary.json", "metrics.csv")
FIGURE_SUFFIX = ".png"
# A result file larger than this is not one the study wrote (a figure is about 100 kB).
MAX_RESULT_BYTES = 8 * 2**20


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


def _regular_file(p: Path) -> bool:
    """A plain file of sensible size, not a link (a link in a study folder could point anywhere:
    its target would be copied into a folder meant for committing)."""
    try:
        st = os.lstat(p)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= MAX_RESULT_BYTES


def copy_results(study_dir: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy a study's results, without checkpoints, into ``dest``; returns the files copied
    (relative paths).

    Copied: ``study.json``, the report (``report.md``, ``report.json``, ``figures/*.png``) and,
    of each finished split (one with a ``summary.json``), ``config.json``, ``summary.json``,
    ``metrics.csv`` and its ``*.png`` figures. An unfinished split is left out: its progress is
    in its ``last.pt``, which stays behind. Links and oversized files are skipped.

    A copy of ``dest`` is a study folder: ``vgg-study --resume --out COPY`` keeps the finished
    splits and trains the rest, on any machine.

    Raises:
        VggCifarError: ``study_dir`` holds no study, ``dest`` is inside it (or the reverse), or
            ``dest`` holds another study (a different ``created`` in its ``study.json``).
    """
    src, dst = Path(study_dir), Path(dest)
    manifest = read_manifest(src)
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise VggCifarError(f"--copy-results {dest}: give a folder outside the study folder "
                            f"{study_dir} (and not one that contains it)")
    if (dst / MANIFEST).exists():
        other = read_manifest(dst)
        if other.get("created") != manifest.get("created"):
            raise VggCifarError(f"--copy-results {dest} holds another study (created "
                                f"{other.get('created')}, this one {manifest.get('created')}); "
                                "choose an empty folder")
    names = list(STUDY_RESULT_FILES)
    figures = src / "figures"
    if figures.is_dir() and not figures.is_symlink():
        names += sorted(f"figures/{p.name}" for p in figures.iterdir()
                        if p.suffix == FIGURE_SUFFIX)
    for split in sorted(manifest.get("splits", [])):
        run = src / run_name(split)
        if run.is_symlink() or split_state(src, split) != "done":
            continue
        names += [f"{run.name}/{n}" for n in SPLIT_RESULT_FILES]
        names += sorted(f"{run.name}/{p.name}" for p in run.iterdir()
                        if p.suffix == FIGURE_SUFFIX)
    copied = []
    for rel in names:
        if not _regular_file(src / rel):
            continue
        atomic_write(dst / rel, lambda t, s=src / rel: shutil.copyfile(s, t))
        copied.append(rel)
    return copied
