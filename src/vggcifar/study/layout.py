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

from ..checks import is_finite_number
from ..errors import VggCifarError
from ..io import atomic_write, read_regular

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


def read_json(path: str | os.PathLike):
    """A study's JSON file, parsed.

    Raises:
        VggCifarError: missing, not a regular file (a FIFO would block the read), oversized,
            unreadable or not JSON; the message names the file.
    """
    try:
        return json.loads(read_regular(path, MAX_RESULT_BYTES))
    except OSError as e:
        raise VggCifarError(f"cannot read {path} ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:
        raise VggCifarError(f"{path} is damaged: not JSON ({str(e)[:100]})") from None


# What the report needs of a finished split's summary.json: numbers, and the per-class dict.
SUMMARY_NUMBERS = ("test_accuracy", "train_images", "batch_size", "epochs", "steps",
                   "total_time_s")


def read_summary(run_dir: str | os.PathLike) -> dict:
    """A split's ``summary.json``, checked to hold what the report reads.

    Raises:
        VggCifarError: as :func:`read_json`, or a summary without those values.
    """
    p = Path(run_dir) / "summary.json"
    summary = read_json(p)
    if not isinstance(summary, dict):
        raise VggCifarError(f"{p} is damaged: not a JSON object")
    bad = [k for k in SUMMARY_NUMBERS if not is_finite_number(summary.get(k))]
    if not isinstance(summary.get("per_class_accuracy"), dict):
        bad.append("per_class_accuracy")
    if bad:
        raise VggCifarError(f"{p} is damaged: no valid {', '.join(bad)}")
    return summary


def split_state(study_dir: str | os.PathLike, split: float) -> str:
    """``"done"`` (a valid summary.json), ``"partial"`` (last.pt but no valid summary) or
    ``"new"``."""
    d = Path(study_dir) / run_name(split)
    try:
        read_summary(d)
        return "done"
    except VggCifarError:
        pass
    if (d / "last.pt").is_file():
        return "partial"
    return "new"


# Manifest entries the code indexes, with the JSON type each must have when present.
_MANIFEST_TYPES = {"runs": dict, "sessions": list, "split_epochs": dict, "min_steps": int}


def read_manifest(study_dir: str | os.PathLike) -> dict:
    """The study's ``study.json`` as a dict, checked to have the shape the study's code reads
    (a list of split fractions, a dict of options, ...).

    Raises:
        VggCifarError: missing, unreadable or damaged.
    """
    p = Path(study_dir) / MANIFEST
    if not os.path.lexists(p):
        raise VggCifarError(f"{study_dir} holds no study ({MANIFEST} is missing); start one "
                            "without --resume")
    manifest = read_json(p)
    if not isinstance(manifest, dict):
        problem = "not a JSON object"
    elif not (isinstance(manifest.get("splits"), list) and manifest["splits"]
              and all(is_finite_number(s) for s in manifest["splits"])):
        problem = "'splits' is not a list of fractions"
    elif not isinstance(manifest.get("config"), dict):
        problem = "'config' is not a dict of options"
    else:
        problem = next((f"'{k}' is not a {t.__name__}" for k, t in _MANIFEST_TYPES.items()
                        if manifest.get(k) is not None and (not isinstance(manifest[k], t)
                                                            or isinstance(manifest[k], bool))),
                       None)
        sessions = manifest.get("sessions") or []
        runs = manifest.get("runs") or {}
        if problem is None and not (
                all(isinstance(x, dict) for x in sessions)
                and all(isinstance(r, dict) and isinstance(r.get("sessions", []), list)
                        and all(isinstance(x, dict) for x in r.get("sessions", []))
                        for r in runs.values())):
            problem = "a session record is not a JSON object"
    if problem:
        raise VggCifarError(f"{p} is damaged ({problem}); restore it, e.g. from a "
                            "--copy-results copy")
    return manifest


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


def check_copy_destination(study_dir: str | os.PathLike, dest: str | os.PathLike,
                           created: str | None) -> None:
    """Refuse a ``--copy-results`` folder inside the study folder (or holding it), or one that
    holds another study than the one ``created`` at that time (``None``: a study not started
    yet, so any study there is another). Checked before a study trains, so that hours of
    training do not end in this error.

    Raises:
        VggCifarError: as described.
    """
    src, dst = Path(study_dir), Path(dest)
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise VggCifarError(f"--copy-results {dest}: give a folder outside the study folder "
                            f"{study_dir} (and not one that contains it)")
    if (dst / MANIFEST).exists():
        other = read_manifest(dst)
        if created is None or other.get("created") != created:
            raise VggCifarError(f"--copy-results {dest} holds another study (created "
                                f"{other.get('created')}, this one {created or 'not started'})"
                                "; choose an empty folder")


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
    check_copy_destination(src, dst, manifest.get("created"))
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
