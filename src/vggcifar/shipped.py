"""The shipped model's files: a compact (fp16) checkpoint stored as parts in the package's
``weights/`` folder (package data, so every wheel carries it) with a JSON manifest carrying sha256
digests, and the rule that picks the default model for the CLIs.

This module reads and writes the files only: :func:`vggcifar.source.resolve_source` joins
and verifies the parts of a ``.json`` manifest once per load, building the model from them is
:func:`vggcifar.checkpoint.load_checkpoint`, and :func:`vggcifar.pretrained.load_pretrained` is the shipped model
ready to use.

The manifest also carries the model's ``temperature`` (temperature scaling,
:mod:`vggcifar.calibration`), which applies over the one in the parts; a manifest without one
(the models shipped before it existed) loads as ``T = 1``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import time
from pathlib import Path

import torch

from .checkpoint_file import read_checkpoint, temperature_of
from .errors import VggCifarError
from .io import atomic_write, read_plain_file

SHIPPED_FORMAT = "vggcifar-shipped"
MANIFEST_NAME = "vggcifar-default.json"
PART_BYTES = 15 * 2**20  # under 16 MB per file
# Bounds on what a manifest may make us read: the largest model here (VGG19, fp16) is 40 MB.
MAX_SHIPPED_BYTES = 2**30
MAX_PARTS = 1000
MAX_MANIFEST_BYTES = 2**20


def models_dir() -> Path:
    """``$VGGCIFAR_MODELS``, else the ``weights/`` folder inside the installed package (found
    from the package itself, so it works from any working folder and in a wheel install)."""
    env = os.environ.get("VGGCIFAR_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent / "weights"


def shipped_manifest() -> Path:
    """The shipped model's manifest, ``models_dir() / MANIFEST_NAME``.

    Raises:
        VggCifarError: it is not there (a partial install, or ``$VGGCIFAR_MODELS`` set wrong).
    """
    path = models_dir() / MANIFEST_NAME
    if not path.is_file():
        raise VggCifarError(f"the shipped model is missing ({path} not found); reinstall "
                            "vggcifar, or unset VGGCIFAR_MODELS")
    return path


def pack_shipped(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                 name: str = "vggcifar-default", part_bytes: int = PART_BYTES,
                 accuracy: dict | None = None) -> Path:
    """Store a checkpoint compactly: fp16 weights (BatchNorm statistics stay fp32), no training
    state, split into parts of at most ``part_bytes``, plus ``<name>.json`` with the sha256 of
    every part and of the whole. Returns the manifest path.

    ``accuracy``: ``{"one_view": fraction, "tta": fraction}`` (and optionally ``"flip_shift"``,
    6-view TTA) measured on the packed weights
    (``scripts/ship_model.py`` does that with ``vgg-eval``'s code); it replaces the training
    run's figures in the checkpoint and the manifest, so the card, the manifest and the demo
    quote the figure ``vgg-eval`` gives for these very files. The checkpoint's ``temperature``
    (1 when it has none) is recorded in the manifest too."""
    ckpt = read_checkpoint(checkpoint)
    ckpt.pop("training_state", None)
    if accuracy is not None:
        # the TTA figure is test_accuracy when the config says tta (see served_accuracy)
        ckpt["config"] = {**(ckpt.get("config") or {}), "tta": True}
        ckpt["test_accuracy"] = float(accuracy["tta"])
        ckpt["test_accuracy_one_view"] = float(accuracy["one_view"])
        if accuracy.get("flip_shift") is not None:
            ckpt["test_accuracy_flip_shift"] = float(accuracy["flip_shift"])
    ckpt["state_dict"] = {
        k: (v.half() if v.is_floating_point() and "running_" not in k else v)
        for k, v in ckpt["state_dict"].items()}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    blob = buf.getvalue()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(blob), part_bytes):
        chunk = blob[i:i + part_bytes]
        file = f"{name}.pt.part{len(parts):02d}"
        atomic_write(out_dir / file, lambda tmp, c=chunk: Path(tmp).write_bytes(c))
        parts.append({"file": file, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"format": SHIPPED_FORMAT, "sha256": hashlib.sha256(blob).hexdigest(),
                "bytes": len(blob), "parts": parts, "arch": ckpt["arch"],
                "test_accuracy": ckpt.get("test_accuracy"),
                "test_accuracy_one_view": ckpt.get("test_accuracy_one_view"),
                "test_accuracy_flip_shift": ckpt.get("test_accuracy_flip_shift"), "dtype": "float16",
                "temperature": temperature_of(ckpt, checkpoint)}
    path = out_dir / f"{name}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return path


def _manifest_error(path, what: str) -> VggCifarError:
    return VggCifarError(f"{path} is not a valid shipped-model manifest ({what}); reinstall "
                         "vggcifar")


def _plain_name(name) -> bool:
    """A file name without any folder part, on POSIX and on Windows: no ``/``, ``\\``, drive,
    ``.`` or ``..``, so a part can only be a file in the manifest's own folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and ":" not in name and "\0" not in name)


def read_manifest(manifest_path: str | os.PathLike) -> dict:
    """Read a shipped-model manifest and check its form: ``format``, a hex ``sha256``, and
    ``parts``, a list of at most ``MAX_PARTS`` ``{file, bytes, sha256}`` whose ``file`` is a plain
    name in the manifest's folder and whose sizes add up to at most ``MAX_SHIPPED_BYTES``.

    Raises:
        VggCifarError: unreadable, not a manifest, or malformed (names the first problem).
    """
    path = Path(manifest_path)
    try:
        # The user's path may be a link; a FIFO or device is refused, never waited on.
        raw = read_plain_file(path, MAX_MANIFEST_BYTES, follow_links=True)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError(f"over {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(raw)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: "[" * 200000
        raise VggCifarError(f"{path} is not a readable shipped-model manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != SHIPPED_FORMAT:
        raise VggCifarError(f"{path} is not a vggcifar shipped-model manifest")
    if not _is_sha256(manifest.get("sha256")):
        raise _manifest_error(path, "no sha256 of the model")
    parts = manifest.get("parts")
    if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS:
        raise _manifest_error(path, f"'parts' is not a list of 1 to {MAX_PARTS} entries")
    for part in parts:
        if not isinstance(part, dict) or not _is_sha256(part.get("sha256")):
            raise _manifest_error(path, "a part without a sha256")
        if not _plain_name(part.get("file")):
            raise _manifest_error(path, f"part file {str(part.get('file'))[:80]!r} is not a plain "
                                        "file name in the manifest's folder")
        size = part.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _manifest_error(path, f"part {part['file']} has no valid size")
    total = sum(part["bytes"] for part in parts)
    if total > MAX_SHIPPED_BYTES:
        raise _manifest_error(path, f"{total:,} bytes, over the {MAX_SHIPPED_BYTES:,}-byte limit")
    if manifest.get("bytes", total) != total:
        raise _manifest_error(path, "the parts' sizes do not add up to 'bytes'")
    temperature_of(manifest, path)  # refuses a bad value before any part is read
    return manifest


def _is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def join_parts(manifest_path: str | os.PathLike, manifest: dict) -> tuple[bytes, str]:
    """Join a shipped model's parts, verifying each part's size and sha256 and the whole's
    sha256 against ``manifest`` (as :func:`read_manifest` returned it). Returns ``(checkpoint
    bytes, sha256)``; the bytes are those of a ``torch.save`` file. The one place the parts are
    verified: :func:`vggcifar.source.resolve_source` calls it once per load.

    Raises:
        VggCifarError: a missing part, or any size or sha256 mismatch (the files were changed
            or damaged).
    """
    path = Path(manifest_path)
    chunks = []
    for part in manifest["parts"]:
        f = path.parent / part["file"]
        try:
            # At most the recorded size (+1), so a damaged or replaced part is never read
            # whole; a FIFO or device is refused, never read from.
            data = read_plain_file(f, part["bytes"], follow_links=True)
        except FileNotFoundError:
            raise VggCifarError(f"shipped model part {f} is missing; reinstall vggcifar") from None
        except OSError as e:  # a name too long, no permission, I/O error, not a regular file
            raise VggCifarError(f"cannot read shipped model part {f} ({e.strerror or e}); "
                                "reinstall vggcifar") from None
        if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise VggCifarError(f"sha256 mismatch for {f}: the shipped model is damaged or was "
                                "modified; reinstall vggcifar "
                                "(or git checkout src/vggcifar/weights)")
        chunks.append(data)
    blob = b"".join(chunks)
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        raise VggCifarError(f"sha256 mismatch for the model described by {path}; "
                            "reinstall vggcifar")
    return blob, manifest["sha256"]


def manifest_temperature(manifest: dict, manifest_path) -> float | None:
    """The temperature a checked manifest records (it applies over the one in the parts), or
    ``None`` when it records none (the parts' own, or 1, then applies)."""
    if manifest.get("temperature") is None:
        return None
    return temperature_of(manifest, manifest_path)


def _own_checkpoints(paths) -> list[Path]:
    """``paths`` that are regular files of this user (links followed: a run folder may be
    linked in) with a modification time not in the future, oldest first. In a shared working
    folder, a ``runs/x/best.pt`` planted by someone else, or dated 2100 to always be the
    newest, must not become the model served; a dangling link is skipped."""
    now = time.time() + 60  # clocks of network file systems drift a little
    found = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_mtime > now:
            continue
        if os.name == "posix" and st.st_uid != os.geteuid():
            continue
        found.append((st.st_mtime, str(p), p))
    return [p for *_, p in sorted(found)]


def default_model(runs_dir: str | os.PathLike = "runs") -> tuple[Path, str]:
    """The model to use when none is given: the newest ``runs/*/best.pt``, else the shipped
    model. Returns ``(path, human-readable reason)``.

    Raises:
        VggCifarError: neither exists.
    """
    runs = _own_checkpoints(Path(runs_dir).glob("*/best.pt"))
    if runs:
        return runs[-1], f"newest run checkpoint {runs[-1]}"
    shipped = models_dir() / MANIFEST_NAME
    if shipped.is_file():
        return shipped, f"shipped model {shipped}"
    raise VggCifarError(f"no model found: no runs/*/best.pt and no shipped model in {models_dir()}; "
                        "train one with vgg-train or name a model file explicitly")
