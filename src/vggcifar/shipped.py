"""The shipped model: a compact (fp16) checkpoint stored as parts under ``models/`` with a JSON
manifest carrying sha256 digests, and the rule that picks the default model for the CLIs."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from .checkpoint import atomic_write, read_checkpoint
from .errors import VggCifarError

SHIPPED_FORMAT = "vggcifar-shipped"
MANIFEST_NAME = "vggcifar-default.json"
PART_BYTES = 15 * 2**20  # under 16 MB per file


def models_dir() -> Path:
    """``$VGGCIFAR_MODELS``, else the ``models/`` folder of the source checkout."""
    env = os.environ.get("VGGCIFAR_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def pack_shipped(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                 name: str = "vggcifar-default", part_bytes: int = PART_BYTES) -> Path:
    """Store a checkpoint compactly: fp16 weights (BatchNorm statistics stay fp32), no training
    state, split into parts of at most ``part_bytes``, plus ``<name>.json`` with the sha256 of
    every part and of the whole. Returns the manifest path."""
    ckpt = read_checkpoint(checkpoint)
    ckpt.pop("training_state", None)
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
                "test_accuracy": ckpt.get("test_accuracy"), "dtype": "float16"}
    path = out_dir / f"{name}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return path


def read_shipped(manifest_path: str | os.PathLike) -> dict:
    """Join and verify a shipped model's parts; return the checkpoint dict.

    Raises:
        VggCifarError: a missing part, or any sha256 mismatch (the file was changed or damaged).
    """
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VggCifarError(f"{path} is not a readable shipped-model manifest ({e})") from e
    if manifest.get("format") != SHIPPED_FORMAT:
        raise VggCifarError(f"{path} is not a vggcifar shipped-model manifest")
    chunks = []
    for part in manifest["parts"]:
        f = path.parent / part["file"]
        if not f.is_file():
            raise VggCifarError(f"shipped model part {f} is missing; reinstall vggcifar")
        data = f.read_bytes()
        if hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise VggCifarError(f"sha256 mismatch for {f}: the shipped model is damaged or was "
                                "modified; restore it (git checkout models/) or reinstall")
        chunks.append(data)
    blob = b"".join(chunks)
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        raise VggCifarError(f"sha256 mismatch for the model described by {path}; restore models/")
    tmp = io.BytesIO(blob)
    ckpt = torch.load(tmp, map_location="cpu", weights_only=True)
    ckpt["sha256"] = manifest["sha256"]
    return ckpt


def default_model(runs_dir: str | os.PathLike = "runs") -> tuple[Path, str]:
    """The model to use when none is given: the newest ``runs/*/best.pt``, else the shipped
    model. Returns ``(path, human-readable reason)``.

    Raises:
        VggCifarError: neither exists.
    """
    runs = sorted(Path(runs_dir).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1], f"newest run checkpoint {runs[-1]}"
    shipped = models_dir() / MANIFEST_NAME
    if shipped.is_file():
        return shipped, f"shipped model {shipped}"
    raise VggCifarError("no model found: no runs/*/best.pt and no shipped model under models/; "
                        "train one with vgg-train or name a model file explicitly")
