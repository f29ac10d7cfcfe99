"""A serialized TensorRT engine (``.engine``/``.plan``/``.trt``) plus its ``<engine>.json``
metadata (written by ``vgg-export --tensorrt``; the same keys as the ONNX metadata)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ...errors import VggCifarError
from ...runtime.contract import read_engine_sidecar
from ...runtime.devices import resolve_device
from ...runtime.tensorrt import EngineRunner, require_tensorrt
from .base import Backend, info_from_export_metadata


class TensorRTBackend(Backend):
    """Runs through :class:`vggcifar.runtime.tensorrt.EngineRunner` (PyTorch owns the GPU
    buffers; batches above the engine's profile are cut into pieces). Input to the engine:
    ``image`` ``[N, 3, S, S]`` float32 RGB in [0, 1]."""

    name = "tensorrt"

    def __init__(self, path, device: str | None = None):
        require_tensorrt("the tensorrt backend")
        dev = resolve_device(device)
        if dev.type != "cuda":
            raise VggCifarError("the tensorrt backend runs on a CUDA GPU only; drop --device cpu")
        path = Path(path)
        self.info = info_from_export_metadata(read_engine_sidecar(path), path, "tensorrt")
        self.torch_device = dev
        self.device = str(dev)
        with torch.cuda.device(dev):
            self.runner = EngineRunner(path)
        self._lock = threading.Lock()  # one execution context: one batch at a time

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` float32 in [0, 1] -> ``[N, C]`` float32 logits."""
        with self._lock, torch.cuda.device(self.torch_device):
            return self.runner(np.ascontiguousarray(x, dtype=np.float32))
