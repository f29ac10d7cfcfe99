"""Inference backends: one small class per runtime, all with the same ``run`` contract, chosen
from a table.

Every backend takes ``[N, 3, S, S]`` uint8 RGB pixels (``S`` = the model's input size) and returns
``[N, num_classes]`` float32 probabilities. Each one applies the model's own normalisation:
PyTorch through :func:`vggcifar.preprocessing.uint8_to_input` (exactly as in training), ONNX
(onnxruntime or OpenVINO) and TensorRT inside the exported graph (their input is float RGB in
[0, 1]).

:data:`BACKEND_TABLE` (like the export's ``FORMATS``) has one row per runtime: the model kinds
(:func:`~vggcifar.runtime.contract.model_kind`) it opens, its availability check and its class.
:func:`create_backend` looks the request up there. Heavy or optional runtimes (onnxruntime,
openvino, tensorrt) are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import VggCifarError
from ...runtime.contract import KIND_TEXT, ModelFileError
from ...runtime.onnx import onnxruntime_status
from ...runtime.openvino import openvino_status
from ...runtime.tensorrt import tensorrt_status
from ...source import CHECKPOINT_KINDS, resolve_source
from ..names import BACKENDS
from .base import Backend, ModelInfo, display_name, info_from_export_metadata, served_accuracy
from .onnx_backend import OnnxBackend, onnx_backend_for_checkpoint
from .openvino_backend import OpenVinoBackend
from .tensorrt_backend import TensorRTBackend
from .torch_backend import TorchBackend

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "BACKEND_TABLE", "Backend", "BackendRow", "ModelFileError", "ModelInfo",
           "OnnxBackend", "OpenVinoBackend", "TensorRTBackend", "TorchBackend", "create_backend",
           "display_name", "info_from_export_metadata", "onnx_backend_for_checkpoint",
           "served_accuracy"]


@dataclass(frozen=True)
class BackendRow:
    """One row of the backend table.

    ``name``: the ``--backend`` value; ``kinds``: the model kinds it opens; ``available()``:
    ``(usable here, reason)``; ``needs``: what to install, for messages; ``cls``: the
    :class:`Backend` (its ``open(source, device)`` makes one); ``auto(kind, device)``:
    whether ``--backend auto`` tries this row for that kind on that device (``device`` is the
    resolved torch device for checkpoints, else the user's string).
    """

    name: str
    kinds: tuple[str, ...]
    available: Callable[[], tuple[bool, str]]
    needs: str
    cls: type[Backend]
    auto: Callable[[str, str | None], bool] = lambda kind, device: True




def _on_cpu(device: str | None) -> bool:
    """Whether the model runs on the CPU: asked for, or ``auto`` where PyTorch sees no GPU (a
    checkpoint's device is already resolved; onnxruntime uses CUDA only where a GPU is)."""
    from ...runtime.devices import resolve_device

    device = (device or "auto").lower()
    return resolve_device(device).type == "cpu" if device == "auto" else device == "cpu"


# In the order ``auto`` tries them: the first row that opens the file's kind, is available and
# accepts the case wins; if it then fails to open the file, the next such row is tried, and the
# last one's error is the answer.
BACKEND_TABLE: tuple[BackendRow, ...] = (
    BackendRow("tensorrt", ("tensorrt",), tensorrt_status,
               "the tensorrt package (pip install 'vggcifar[tensorrt]') and an NVIDIA GPU",
               TensorRTBackend),
    # On a CPU, OpenVINO (bf16 where the CPU has AMX or AVX512-BF16, else fp32) is the fastest
    # runtime whose one-view accuracy is within 0.1 point of fp32: on the 2026-11-30 VGG16, vgg-eval
    # gives 90.44% one view / 91.32% flip TTA in bf16 vs onnxruntime fp32's 90.42% / 91.29% on
    # the 10,000 test images, with 3.7x onnxruntime fp32's batch-64 throughput and 0.43x its CPU
    # time in a paired run on the 2-core Xeon with AMX (docs/benchmarks.md, "Inference
    # runtimes"). A checkpoint runs on its cached ONNX export, as with onnxruntime; if openvino
    # is missing or fails to open the file, onnxruntime is next.
    BackendRow("openvino", ("onnx", *CHECKPOINT_KINDS), openvino_status,
               "the openvino package (x86_64 or arm64 Linux, macOS or Windows)", OpenVinoBackend,
               auto=lambda kind, device: _on_cpu(device)),
    # On CPU, onnxruntime beat PyTorch for VGG16 on the project's 2-core machine (3.3x for
    # vgg-predict on 1,000 files, far more at batch 1; docs/benchmarks.md, "Serving") and
    # degrades gracefully when the cores are shared, where PyTorch's OpenMP threads stall; so
    # auto runs a checkpoint on CPU through its cached ONNX export. On a GPU PyTorch is as fast.
    BackendRow("onnx", ("onnx", *CHECKPOINT_KINDS), onnxruntime_status,
               "the onnxruntime package", OnnxBackend,
               auto=lambda kind, device: kind == "onnx" or device == "cpu"),
    BackendRow("torch", CHECKPOINT_KINDS, lambda: (True, "PyTorch"), "PyTorch", TorchBackend),
)
ROWS = {row.name: row for row in BACKEND_TABLE}
assert set(BACKENDS) == {"auto", *ROWS}, "serving.names.BACKENDS must name the table's rows"


def _unavailable(row: BackendRow, reason: str) -> VggCifarError:
    return VggCifarError(f"the {row.name} backend needs {row.needs}: {reason}")


def _mismatch(path: Path, kind: str, row: BackendRow) -> VggCifarError:
    """e.g. ``best.pt is a vggcifar checkpoint; --backend tensorrt opens a TensorRT engine
    (build one with vgg-export); use --backend onnx, torch or auto``."""
    opens = " or ".join(KIND_TEXT[k] for k in row.kinds)
    fits = [r.name for r in BACKEND_TABLE if kind in r.kinds]
    hint = " (build one with vgg-export)" if kind in CHECKPOINT_KINDS else ""
    return VggCifarError(f"{path.name} is {KIND_TEXT[kind]}; --backend {row.name} opens "
                         f"{opens}{hint}; use --backend {', '.join(fits)} or auto")


def create_backend(path, backend: str = "auto", device: str | None = None) -> Backend:
    """Open ``path`` with the requested backend (one of :data:`~vggcifar.serving.names.BACKENDS`)
    on ``device`` (``None``/``auto``, ``cpu``, ``cuda[:N]``).

    ``auto`` picks the fastest runtime that works for the file here (see :data:`BACKEND_TABLE`):
    a TensorRT engine needs TensorRT; an ``.onnx`` file runs on OpenVINO on a CPU, else on
    onnxruntime (CUDA when it works); a ``.pt`` checkpoint or ``.json`` manifest runs on
    PyTorch with CUDA when available, and on CPU on OpenVINO, then onnxruntime (its ONNX
    export, made once and cached), falling back to PyTorch. ``onnx`` and ``openvino`` with a
    checkpoint use the same cached export.

    Raises:
        VggCifarError: the file's kind and the backend do not fit, or the backend cannot run here.
    """
    from ...runtime.devices import resolve_device

    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise VggCifarError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    # Resolved once (kind, verified bytes, digest) and passed down: no row reads or hashes the
    # file again, and each digest is checked once per load.
    source = resolve_source(path)
    path, kind = source.path, source.kind
    if backend != "auto":
        row = ROWS[backend]
        if kind not in row.kinds:
            raise _mismatch(path, kind, row)
        ok, reason = row.available()
        if not ok:
            raise _unavailable(row, reason)
        return row.cls.open(source, device)
    if kind in CHECKPOINT_KINDS:
        # Settles "auto" now (and refuses an unusable --device cuda) so each row sees the same.
        device = str(resolve_device(device))
    rows = [r for r in BACKEND_TABLE if kind in r.kinds and r.auto(kind, device)]
    for i, row in enumerate(rows):
        last = i == len(rows) - 1
        ok, reason = row.available()
        if not ok:
            if last:
                raise _unavailable(row, reason)
            log.debug("auto backend: %s not available (%s)", row.name, reason)
            continue
        try:
            return row.cls.open(source, device)
        except Exception as e:  # noqa: BLE001 - an optimisation failed: the next row decides
            if last:
                raise
            log.debug("auto backend: %s could not open %s (%s)", row.name, path, e)
    raise VggCifarError(f"no backend opens {path.name} ({KIND_TEXT[kind]})")  # not reached
