"""A model file resolved once: :class:`ModelSource` holds its path, its kind, and for the kinds
PyTorch loads (a ``.pt`` checkpoint, a shipped ``.json`` manifest) the verified bytes, their
sha256 and the manifest's temperature.

Serving (``create_backend``), the ONNX cache and the exporter resolve a path here once and pass
the source down, so the kind is decided once and each digest is checked once per load: a
shipped model's parts are joined and verified here and nowhere else, and the checkpoint is then
loaded from the very bytes that were hashed (the file cannot change between the check and the
load).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint_file import check_format, torch_load_reason, upgrade
from .errors import VggCifarError
from .runtime.contract import KIND_TEXT, model_kind
from .shipped import join_parts, manifest_temperature, read_manifest

# Kinds whose file PyTorch loads (a checkpoint, or the shipped manifest of one).
CHECKPOINT_KINDS = ("checkpoint", "shipped")


@dataclass(frozen=True)
class ModelSource:
    """One model file, resolved by :func:`resolve_source`.

    ``kind``: :func:`~vggcifar.runtime.contract.model_kind` of ``path``. For the checkpoint
    kinds, ``data`` is the ``torch.save`` bytes (a ``.pt`` file's content, or a shipped model's
    joined parts), ``sha256`` their verified digest, and ``temperature`` the manifest's ``T``
    for a shipped model that records one (it lies outside the parts' digest), else ``None``.
    For ``.onnx`` files and engines only ``path`` and ``kind`` are set: their runtimes read them.
    """

    path: Path
    kind: str
    sha256: str | None = None
    temperature: float | None = None
    data: bytes | None = field(default=None, repr=False)

    @property
    def is_checkpoint(self) -> bool:
        return self.kind in CHECKPOINT_KINDS

    def checkpoint(self) -> dict:
        """The checkpoint dict, loaded weights-only from the verified bytes, in the current
        format version's form; a shipped model's carries its ``sha256`` and the manifest's
        ``temperature`` (when it has one) in place of the parts' own.

        Raises:
            VggCifarError: not a checkpoint kind, or bytes that are not a vggcifar checkpoint.
        """
        if not self.is_checkpoint:
            raise VggCifarError(f"{self.path} is {KIND_TEXT[self.kind]}, not a checkpoint; pass "
                                "a best.pt/last.pt written by vgg-train or a shipped .json "
                                "manifest")
        try:
            ckpt = torch.load(io.BytesIO(self.data), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for bad files
            if self.kind == "shipped":
                raise VggCifarError(f"the model described by {self.path} is not a readable "
                                    f"checkpoint ({torch_load_reason(e, self.data[:4])}); reinstall "
                                    "vggcifar") from e
            raise VggCifarError(f"{self.path} is not a readable vggcifar checkpoint "
                                f"({torch_load_reason(e, self.data[:4])}); pass a best.pt/last.pt written by "
                                "vgg-train") from e
        check_format(ckpt, self.path)
        ckpt = upgrade(ckpt)
        if self.kind == "shipped":
            ckpt["sha256"] = self.sha256
            if self.temperature is not None:
                ckpt["temperature"] = self.temperature
        return ckpt

    def export_temperature(self) -> float:
        """The temperature declared outside the weights' digest (a shipped manifest's), which
        an ONNX cache must key on besides ``sha256``; 1.0 for a ``.pt``, whose ``T`` the digest
        covers."""
        return 1.0 if self.temperature is None else self.temperature


def resolve_source(path: str | os.PathLike | ModelSource) -> ModelSource:
    """Resolve a model file once (a :class:`ModelSource` is returned as it is).

    A ``.pt`` is read whole (as many bytes as its size when opened) and hashed; a shipped
    manifest is read and checked, and its parts joined and verified against it
    (:func:`vggcifar.shipped.join_parts`).

    Raises:
        VggCifarError: a missing file, a folder, a device or anything else that is not a
            regular file, an unreadable file, a malformed manifest, or a missing or damaged
            shipped part.
    """
    if isinstance(path, ModelSource):
        return path
    path = Path(path)
    if not path.exists():
        raise VggCifarError(f"model {path} does not exist")
    if path.is_dir():
        raise VggCifarError(f"model {path} is a folder; pass the model file inside it")
    if not path.is_file():  # a device, FIFO or socket: reading it could block or never end
        raise VggCifarError(f"model {path} is not a regular file")
    kind = model_kind(path)
    if kind == "shipped":
        manifest = read_manifest(path)
        data, sha = join_parts(path, manifest)
        return ModelSource(path, kind, sha, manifest_temperature(manifest, path), data)
    if kind == "checkpoint":
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(size + 1)  # bounded by the size seen at open
        except OSError as e:
            raise VggCifarError(f"cannot read {path} ({e.strerror or e})") from e
        if len(data) != size:
            raise VggCifarError(f"{path} changed while it was read; try again")
        return ModelSource(path, kind, hashlib.sha256(data).hexdigest(), None, data)
    return ModelSource(path, kind)
