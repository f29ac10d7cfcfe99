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
from ..io import atomic_write, cache_dir, open_own_file, private_dir
from ..runtime.contract import ONNX_SUFFIX

log = logging.getLogger(__name__)

CACHE_FORMAT = "vggcifar-onnx-cache"  # the sidecar of a cached export: see cached_onnx
# Part of a cached export's name: bump it when exports gain metadata that serving reads, so older
# cached exports (without it) are rebuilt rather than reused. 2: test_accuracy_with_tta.
# 3: temperature (in the graph and the metadata). 4: test_accuracy_flip_shift.
CACHE_REVISION = 4
STALE_BUILD_S = 3600  # a build folder older than this was left by a killed process
MAX_SIDECAR_BYTES = 64 * 1024  # a cache sidecar is ~300 bytes


def onnx_from_checkpoint(source, out_dir) -> Path:
    """Export a checkpoint (or shipped manifest) to an fp32 ONNX file ``<out_dir>/<stem>.onnx``,
    metadata included (the source's verified sha256 as ``source_sha256``), so onnxruntime can
    run it. ``source``: a path or a :class:`~vggcifar.source.ModelSource` already resolved."""
    from ..checkpoint import load_checkpoint
    from ..runtime.contract import build_metadata
    from ..source import resolve_source
    from .onnx_export import export_onnx

    source = resolve_source(source)
    model, meta = load_checkpoint(source)
    metadata = build_metadata(meta, precision="fp32", exporter="torchscript",
                              source_sha256=source.sha256)
    out = Path(out_dir) / (source.path.stem + ONNX_SUFFIX)
    return export_onnx(model, meta["preproc"], out, metadata=metadata)


def onnx_cache_dir() -> Path:
    """``$VGGCIFAR_CACHE/onnx`` (default ``~/.cache/vggcifar/onnx``), beside the data cache."""
    return cache_dir("onnx")


def cache_sidecar(cached) -> Path:
    """The record written after a cached export: ``<export>.json`` holding the format, the
    source's and the export's sha256."""
    return Path(f"{cached}.json")


def _read_verified(cached: Path, sha: str, temperature: float) -> bytes | None:
    """The cached export's bytes when its sidecar says it was built from weights with sha256
    ``sha`` and the source's ``temperature``, and the bytes hash to the sidecar's digest; else
    ``None`` (missing, truncated, replaced, foreign or another temperature: rebuild)."""
    try:
        with open_own_file(cache_sidecar(cached)) as f:
            side = json.loads(f.read(MAX_SIDECAR_BYTES + 1))
        size = side.get("bytes") if isinstance(side, dict) else None
        if (not isinstance(size, int) or isinstance(size, bool) or size < 0
                or side.get("format") != CACHE_FORMAT
                or side.get("source_sha256") != sha or side.get("temperature") != temperature):
            return None
        with open_own_file(cached) as f:
            data = f.read(size + 1)
    except (OSError, ValueError, RecursionError):  # a FIFO, device or link is rebuilt over too
        return None
    if len(data) != size:
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


def cached_onnx(source, rebuild: bool = False) -> tuple[Path, bytes]:
    """The ONNX export of a checkpoint or shipped manifest, made once and kept in
    :func:`onnx_cache_dir`: ``(file, its bytes)``, the bytes verified.

    ``source``: a path or a :class:`~vggcifar.source.ModelSource` already resolved (its
    verified ``sha256`` and the temperature outside it are the cache key). A cached file is
    used only when its sidecar (:func:`cache_sidecar`, written after the export, atomically)
    records this source's sha256 and temperature and the file's own digest; anything else at that name (a truncated file, one dropped there by someone else) is
    rebuilt, as with ``rebuild=True``. The caller also checks the ``source_sha256`` in the graph's metadata. A
    cache folder others can write to is not used: the export is then made afresh each time.

    Raises:
        VggCifarError: damaged source weights; the export failed.
    """
    from ..source import resolve_source

    source = resolve_source(source)
    sha, temperature = source.sha256, source.export_temperature()
    folder = onnx_cache_dir()
    cached = folder / f"{source.path.stem}-{_cache_key(sha, temperature)}{ONNX_SUFFIX}"
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
            fresh = onnx_from_checkpoint(source, tmp)
        except RuntimeError as e:  # the exporter's own failure, named by export_onnx
            raise VggCifarError(f"cannot export {source.path} to ONNX ({e})") from e
        data = fresh.read_bytes()
        if not usable:
            log.debug("ONNX cache %s not private or not writable: export not cached", folder)
            return fresh, data
        try:
            atomic_write(cached, lambda t: os.replace(fresh, t))
            side = {"format": CACHE_FORMAT, "source_sha256": sha, "temperature": temperature,
                    "bytes": len(data),
                    "onnx_sha256": hashlib.sha256(data).hexdigest(), "source": str(source.path)}
            atomic_write(cache_sidecar(cached), lambda t: Path(t).write_text(json.dumps(side)))
        except OSError:  # full disk: use the fresh export once, uncached
            return fresh, data
    return cached, data
