"""The cached ONNX export of a checkpoint, for serving a ``.pt`` or shipped manifest on
onnxruntime (``--backend onnx``, and ``auto`` on CPU).

Serving imports this module only for that case, inside the function that opens such a model;
nothing here imports serving. The cache is trusted only as far as it can be checked: each export
is named by its source's sha256 and the exporting versions, and used only when its sidecar
records that source and the export's own digest, and only from a folder that no one else can
write to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import VggCifarError
from ..io import atomic_write, cache_dir, private_dir
from ..runtime.contract import ONNX_SUFFIX

log = logging.getLogger(__name__)

CACHE_FORMAT = "vggcifar-onnx-cache"  # the sidecar of a cached export: see cached_onnx
# Part of a cached export's name: bump it when exports gain metadata that serving reads, so older
# cached exports (without it) are rebuilt rather than reused. 2: test_accuracy_with_tta.
# 3: temperature (in the graph and the metadata).
CACHE_REVISION = 3
STALE_BUILD_S = 3600  # a build folder older than this was left by a killed process


def onnx_from_checkpoint(path, out_dir, sha256: str | None = None) -> Path:
    """Export a checkpoint (or shipped manifest) to an fp32 ONNX file ``<out_dir>/<stem>.onnx``,
    metadata included, so onnxruntime can run it.

    Args:
        sha256: :func:`~vggcifar.export.onnx_export.checkpoint_sha256` of ``path`` when the
            caller has it (recorded as the export's ``source_sha256``).
    """
    from ..checkpoint import load_checkpoint
    from ..runtime.contract import build_metadata
    from .onnx_export import checkpoint_sha256, export_onnx

    model, meta = load_checkpoint(path)
    metadata = build_metadata(meta, precision="fp32", exporter="torchscript",
                              source_sha256=sha256 or checkpoint_sha256(path))
    out = Path(out_dir) / (Path(path).stem + ONNX_SUFFIX)
    return export_onnx(model, meta["preproc"], out, metadata=metadata)


def onnx_cache_dir() -> Path:
    """``$VGGCIFAR_CACHE/onnx`` (default ``~/.cache/vggcifar/onnx``), beside the data cache."""
    return cache_dir("onnx")


def cache_sidecar(cached) -> Path:
    """The record written after a cached export: ``<export>.json`` holding the format, the
    source's and the export's sha256."""
    return Path(f"{cached}.json")


def source_temperature(path) -> float:
    """The temperature a source declares outside its weights' digest: a shipped manifest's
    (:func:`vggcifar.shipped.shipped_temperature`). A ``.pt`` checkpoint's lies inside the file,
    which its sha256 covers: 1.0 here."""
    from ..runtime.contract import model_kind

    if model_kind(path) != "shipped":
        return 1.0
    from ..shipped import shipped_temperature

    return shipped_temperature(path)


def _read_verified(cached: Path, sha: str, temperature: float) -> bytes | None:
    """The cached export's bytes when its sidecar says it was built from weights with sha256
    ``sha`` and the source's ``temperature``, and the bytes hash to the sidecar's digest; else
    ``None`` (missing, truncated, replaced, foreign or another temperature: rebuild)."""
    try:
        side = json.loads(cache_sidecar(cached).read_text())
        if (not isinstance(side, dict) or side.get("format") != CACHE_FORMAT
                or side.get("source_sha256") != sha or side.get("temperature") != temperature
                or cached.stat().st_size != side.get("bytes")):
            return None
        data = cached.read_bytes()
    except (OSError, ValueError):
        return None
    return data if hashlib.sha256(data).hexdigest() == side.get("onnx_sha256") else None


def _sweep_stale_builds(folder: Path) -> None:
    """Remove build folders a killed process left in the cache (an export is hundreds of MB)."""
    for d in folder.glob(".build-*"):
        try:
            if time.time() - d.stat().st_mtime > STALE_BUILD_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _cache_key(sha: str, temperature: float = 1.0) -> str:
    """The source's digest, its temperature when that lies outside the digest (a shipped
    manifest's) and the exporting versions: a changed checkpoint, temperature or exporter never
    reuses a stale graph."""
    import torch

    from .. import __version__

    t = "" if temperature == 1.0 else f"-t{temperature:.6g}"
    return (f"{sha[:20]}{t}-v{__version__}-torch{torch.__version__.split('+')[0]}"
            f"-r{CACHE_REVISION}")


def cached_onnx(path, sha: str | None = None, rebuild: bool = False) -> tuple[Path, bytes]:
    """The ONNX export of a checkpoint or shipped manifest, made once and kept in
    :func:`onnx_cache_dir`: ``(file, its bytes)``, the bytes verified.

    A cached file is used only when its sidecar (:func:`cache_sidecar`, written after the
    export, atomically) records this source's sha256 and temperature and the file's own
    digest; anything else at that name (a truncated file, one dropped there by someone else) is
    rebuilt, as with ``rebuild=True``. The caller also checks the ``source_sha256`` in the graph's metadata. A
    cache folder others can write to is not used: the export is then made afresh each time.

    Args:
        sha: :func:`~vggcifar.export.onnx_export.checkpoint_sha256` of ``path`` when the caller
            has it.
    Raises:
        VggCifarError: damaged source weights; the export failed.
    """
    from .onnx_export import checkpoint_sha256

    sha = sha or checkpoint_sha256(path)
    temperature = source_temperature(path)
    folder = onnx_cache_dir()
    cached = folder / f"{Path(path).stem}-{_cache_key(sha, temperature)}{ONNX_SUFFIX}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        usable = private_dir(folder)
    except OSError:  # read-only home
        usable = False
    if usable and not rebuild:
        data = _read_verified(cached, sha, temperature)
        if data is not None:
            return cached, data
    if usable:
        _sweep_stale_builds(folder)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=folder if usable else None) as tmp:
        try:
            fresh = onnx_from_checkpoint(path, tmp, sha256=sha)
        except RuntimeError as e:  # the exporter's own failure, named by export_onnx
            raise VggCifarError(f"cannot export {path} to ONNX ({e})") from e
        data = fresh.read_bytes()
        if not usable:
            log.debug("ONNX cache %s not private or not writable: export not cached", folder)
            return fresh, data
        try:
            atomic_write(cached, lambda t: os.replace(fresh, t))
            side = {"format": CACHE_FORMAT, "source_sha256": sha, "temperature": temperature,
                    "bytes": len(data),
                    "onnx_sha256": hashlib.sha256(data).hexdigest(), "source": str(path)}
            atomic_write(cache_sidecar(cached), lambda t: Path(t).write_text(json.dumps(side)))
        except OSError:  # full disk: use the fresh export once, uncached
            return fresh, data
    return cached, data
