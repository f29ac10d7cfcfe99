"""TensorRT: whether it can run here, and the runner of a serialized engine (used by serving's
tensorrt backend and by the export's parity check). Building engines is export's
(:mod:`vggcifar.export.tensorrt`).

``tensorrt`` and torch are imported inside the functions, so the rest of the package works
without them and importing this module is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import VggCifarError
from .contract import INPUT_NAME, LOGITS

INSTALL_HINT = 'pip install -e ".[tensorrt]" (the tensorrt package) on a machine with an NVIDIA GPU'


def tensorrt_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether engines can be built and run here (the ``tensorrt`` package
    imports and PyTorch sees a CUDA GPU); ``reason`` says what is missing, or what was found."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken install failing to load its libraries
        return False, (f"the tensorrt package is not importable ({type(e).__name__}: {e}); "
                       f"{INSTALL_HINT}")
    import torch

    if not torch.cuda.is_available():
        return False, f"no CUDA GPU is visible to PyTorch; {INSTALL_HINT}"
    return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name()}"


def require_tensorrt(what: str = "--tensorrt") -> None:
    """Raise :class:`VggCifarError` (one line: what to install) unless TensorRT can run here.
    ``what`` names the option that needs it."""
    ok, reason = tensorrt_status()
    if not ok:
        raise VggCifarError(f"{what} needs the tensorrt package and a GPU: {reason}")


def tensorrt_major() -> int:
    """The installed TensorRT's major version (10, 11...)."""
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


class EngineRunner:
    """Run a serialized engine on the current CUDA device, using PyTorch for GPU memory.

    ``__call__(x)``: ``x`` ``[N, 3, S, S]`` float32 numpy in [0, 1] -> logits ``[N, C]`` float32
    numpy; batches above the engine's optimisation profile are cut into pieces.
    """

    def __init__(self, engine_path: str | os.PathLike):
        require_tensorrt()
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise VggCifarError(f"TensorRT could not load the engine {engine_path} (built by "
                                "another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names
                        if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.max_batch = int(self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])

    def _dtype(self, name):
        trt, torch = self.trt, self.torch
        return {trt.float32: torch.float32, trt.float16: torch.float16,
                trt.int32: torch.int32, trt.int64: torch.int64}[self.engine.get_tensor_dtype(name)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        if len(x) > self.max_batch:
            return np.concatenate([self(x[i:i + self.max_batch])
                                   for i in range(0, len(x), self.max_batch)])
        inp = torch.from_numpy(np.ascontiguousarray(x)).to("cuda", self._dtype(INPUT_NAME))
        self.context.set_input_shape(INPUT_NAME, tuple(inp.shape))
        self.context.set_tensor_address(INPUT_NAME, inp.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outs[LOGITS].float().cpu().numpy()
