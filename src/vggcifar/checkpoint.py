"""Checkpoints: saving atomically, loading safely, and rebuilding a ready-to-use model.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` accepts:

    format, format_version       "vggcifar-checkpoint", FORMAT_VERSION
    arch, head, width, num_classes, dropout
    preprocessing                Preprocessing.to_dict(): mean, std, input_size, class_names
    state_dict                   model weights (fp32, or fp16 for the compact shipped model)
    config                       the resolved training options (JSON-able)
    metrics                      one dict per epoch
    epoch, test_accuracy, versions, created
    training_state (last.pt)     optimizer, scheduler, RNG states, best so far: for --resume
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from .errors import VggCifarError
from .models import create_model
from .preprocessing import Preprocessing

FORMAT = "vggcifar-checkpoint"
FORMAT_VERSION = 1
META_KEYS = ("arch", "head", "width", "num_classes", "dropout", "preprocessing", "config",
             "metrics", "epoch", "test_accuracy", "test_accuracy_one_view", "versions", "created",
             "format_version")


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename ``tmp_path`` to ``path``: a crash never leaves a
    half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Atomically save a checkpoint dict built by :func:`make_checkpoint`."""
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def make_checkpoint(model: torch.nn.Module, *, arch: str, head: str, width: float,
                    num_classes: int, dropout: float, preprocessing: Preprocessing,
                    config: dict | None = None, metrics: list | None = None, epoch: int = 0,
                    test_accuracy: float | None = None, training_state: dict | None = None,
                    versions: dict | None = None, created: str | None = None,
                    test_accuracy_one_view: float | None = None) -> dict:
    """Assemble the checkpoint dict (see module docstring). ``test_accuracy`` is the run's
    figure (with flip TTA when the run used it); ``test_accuracy_one_view`` is without TTA, i.e.
    what serving, which classifies one view, delivers."""
    model = unwrap_model(model)
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": arch, "head": head, "width": float(width), "num_classes": int(num_classes),
        "dropout": float(dropout), "preprocessing": preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config or {}, "metrics": metrics or [], "epoch": int(epoch),
        "test_accuracy": test_accuracy, "test_accuracy_one_view": test_accuracy_one_view,
        "versions": versions or {}, "created": created,
    }
    if training_state is not None:
        ckpt["training_state"] = training_state
    return ckpt


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and validate a checkpoint dict (weights only, no code execution).

    Raises:
        VggCifarError: missing file, unreadable/corrupt file, or a file that is not a vggcifar
            checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise VggCifarError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise VggCifarError(f"checkpoint {path} is a folder; pass the .pt file inside it")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        hint = [ln for ln in lines if "Unpickler error" in ln or "Unsupported global" in ln]
        reason = (hint or lines or [type(e).__name__])[0][:200]
        raise VggCifarError(
            f"{path} is not a readable vggcifar checkpoint ({reason}); "
            "pass a best.pt/last.pt written by vgg-train") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VggCifarError(
            f"{path} is not a vggcifar checkpoint (no '{FORMAT}' marker); "
            "pass a best.pt/last.pt written by vgg-train")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise VggCifarError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than this vggcifar "
            f"understands ({FORMAT_VERSION}); upgrade vggcifar")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """Rebuild the fp32 model from a checkpoint dict, in eval mode."""
    model = create_model(ckpt["arch"], num_classes=ckpt["num_classes"], head=ckpt["head"],
                         width=ckpt.get("width", 1.0), dropout=ckpt.get("dropout", 0.2))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise VggCifarError(f"checkpoint weights do not match {ckpt['arch']}: "
                            f"{str(e).splitlines()[0]}") from e
    return model.eval()


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint and return ``(model, meta)``.

    ``model`` is in eval mode, on ``map_location``, expecting ``[N, 3, 32, 32]`` normalised input
    and returning ``[N, num_classes]`` logits. ``meta`` holds everything else in the checkpoint
    (arch, head, preprocessing, config, metrics, test_accuracy, ...) plus ``path`` and a
    ``Preprocessing`` object under ``"preproc"``. Files ending in ``.json`` are treated as the
    manifest of a shipped model stored in parts (see :mod:`vggcifar.shipped`).
    """
    path = Path(path)
    if path.suffix == ".json":
        from .shipped import read_shipped
        ckpt = read_shipped(path)
    else:
        ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt).to(map_location)
    meta = {k: ckpt.get(k) for k in META_KEYS}
    meta["path"] = str(path)
    meta["preproc"] = Preprocessing.from_dict(ckpt["preprocessing"])
    return model, meta


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
