"""The checkpoint file format: reading a file into a checkpoint dict of the current version.

The lowest checkpoint layer: it knows the format marker and versions, but builds no model, so
both :mod:`vggcifar.shipped` (the shipped model's parts) and :mod:`vggcifar.checkpoint` (models
from checkpoints) use it without importing each other.

Format versions:
    1   the architecture's options at top level: ``head``, ``width``, ``dropout`` (VGG only).
    2   ``arch`` plus ``model_kwargs``, the registered builder's options (any architecture).
Version-1 dicts are upgraded in memory by :func:`upgrade`; files are never rewritten.

An optional ``temperature`` (temperature scaling, :mod:`vggcifar.calibration`) needs no new
version: files without it, of either version, load as ``T = 1`` (:func:`temperature_of`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .errors import VggCifarError
from .io import open_regular

FORMAT = "vggcifar-checkpoint"
FORMAT_VERSION = 2
# Version 1's architecture options, with the defaults its writer used when one was missing.
V1_MODEL_KWARGS = {"head": "mlp", "width": 1.0, "dropout": 0.2}


def not_torch_file(head: bytes) -> bool:
    """Whether a file's first bytes rule out anything ``torch.load`` reads: a zip archive
    (``torch.save``'s format) or a pickle (protocol 2 and later start with 0x80). Such files
    make the loader fail with internal errors ("list index out of range") that mean nothing
    to the user."""
    return not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80")


def torch_load_reason(e: Exception, head: bytes | None = None) -> str:
    """One line saying why ``torch.load`` refused a file.

    torch's message for a file the weights-only loader refuses advises loading it again with
    ``weights_only=False``, which runs any code the file holds; that advice is dropped, and so
    are its links and boilerplate. What is left is the loader's actual finding, e.g.
    ``Unsupported operand 110`` or ``... unsupported GLOBAL posix.system ...``.
    """
    if head == b"":
        return "the file is empty"
    if head is not None and not_torch_file(head):
        return "not a PyTorch file: neither a zip archive nor a pickle"
    noise = ("weights only load failed", "weights_only", "please file an issue",
             "check the documentation", "trusted source")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not any(n in ln.lower() for n in noise)]
    reason = (keep or [type(e).__name__])[0]
    return reason.split(". ")[0].rstrip(".")[:200]


def check_format(ckpt, where) -> None:
    """Refuse anything but a vggcifar checkpoint dict of a format version we understand."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VggCifarError(
            f"{where} is not a vggcifar checkpoint (no '{FORMAT}' marker); "
            "pass a best.pt/last.pt written by vgg-train")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise VggCifarError(f"{where} has a malformed checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise VggCifarError(
            f"{where} has checkpoint format {version}, newer than this vggcifar "
            f"understands ({FORMAT_VERSION}); upgrade vggcifar")


def upgrade(ckpt: dict) -> dict:
    """A checkpoint dict (already through :func:`check_format`) in the current version's form.

    Version 1 (and 0) kept VGG's options at top level; they move into ``model_kwargs``, missing
    ones taking the defaults version 1's writer used, and ``format_version`` becomes the current
    one, so the dict saved again (``pack_shipped``, a resumed run) is a consistent version-2
    file. A version-2 dict is returned as it is.
    """
    if ckpt.get("format_version", 0) >= 2:
        return ckpt
    out = {k: v for k, v in ckpt.items() if k not in V1_MODEL_KWARGS}
    out["model_kwargs"] = {k: ckpt.get(k, d) for k, d in V1_MODEL_KWARGS.items()}
    out["format_version"] = FORMAT_VERSION
    return out


def temperature_of(ckpt: dict, where) -> float:
    """A checkpoint's (or manifest's) temperature: ``ckpt["temperature"]``, 1.0 when absent.

    Raises:
        VggCifarError: a value that is not a finite number in ``[T_MIN, T_MAX]`` (a damaged or
            tampered file; a real fit lies far inside).
    """
    from .calibration import T_MAX, T_MIN

    t = ckpt.get("temperature")
    if t is None:
        return 1.0
    if (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
            or not T_MIN <= t <= T_MAX):
        raise VggCifarError(f"{where}: temperature {str(t)[:40]} is not a number in "
                            f"[{T_MIN:g}, {T_MAX:g}]; the file is damaged or was not written "
                            "by vggcifar")
    return float(t)


def model_spec(ckpt: dict) -> tuple[str, dict]:
    """``(arch, model_kwargs)`` of a checkpoint dict (either version) or of the ``meta`` of
    :func:`vggcifar.checkpoint.load_checkpoint`: what ``create_model(arch, num_classes,
    **model_kwargs)`` needs besides the class count. The values are as stored (unchecked)."""
    if "model_kwargs" in ckpt:
        kwargs = ckpt["model_kwargs"]
    else:  # a version-1 dict that did not go through upgrade()
        kwargs = {k: ckpt.get(k, d) for k, d in V1_MODEL_KWARGS.items()}
    return ckpt.get("arch"), kwargs


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict onto the CPU (weights only, no code execution), check its format
    and return it in the current version's form (:func:`upgrade`).

    Raises:
        VggCifarError: missing file, anything but a regular file (a FIFO would block the read),
            unreadable/corrupt file, or a file that is not a vggcifar checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise VggCifarError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise VggCifarError(f"checkpoint {path} is a folder; pass the .pt file inside it")
    head = None
    try:
        f = open_regular(path)
    except OSError as e:
        raise VggCifarError(f"cannot read checkpoint {path} ({e.strerror or e})") from None
    try:
        with f:
            head = f.read(4)
            f.seek(0)
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise VggCifarError(
            f"{path} is not a readable vggcifar checkpoint ({torch_load_reason(e, head)}); "
            "pass a best.pt/last.pt written by vgg-train") from e
    check_format(ckpt, path)
    return upgrade(ckpt)
