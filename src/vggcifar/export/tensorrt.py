"""TensorRT engines built from the exported ONNX files, and a runner to check their parity.

Needs the ``tensorrt`` Python package (``pip install -e ".[tensorrt]"``) and an NVIDIA GPU; both
are imported/probed only inside these functions, so the rest of the package works without them.

Precision: TensorRT 10 builds fp16 engines from the fp32 ONNX file with ``BuilderFlag.FP16``
(weak typing). TensorRT 11 removed the precision flags; networks are always strongly typed and
take their precision from the graph, so the fp16 engine is built from the fp16 ONNX file (whose
casts keep the float32 interface). fp32 engines are built with TF32 off so that they can meet the
fp32 parity bound.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write
from ..errors import VggCifarError
from .onnx_export import INPUT_NAME

INSTALL_HINT = 'pip install -e ".[tensorrt]" (the tensorrt package) on a machine with an NVIDIA GPU'


def tensorrt_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether engines can be built here; ``reason`` says what is missing."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # ImportError, or a broken install failing to load its libraries
        return False, f"the tensorrt package is not importable ({type(e).__name__}: {e}); {INSTALL_HINT}"
    import torch

    if not torch.cuda.is_available():
        return False, f"no CUDA GPU is visible to PyTorch; {INSTALL_HINT}"
    return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name()}"


def require_tensorrt() -> None:
    """Raise :class:`VggCifarError` (one line, what to install) unless TensorRT can run here."""
    ok, reason = tensorrt_status()
    if not ok:
        raise VggCifarError(f"--tensorrt needs TensorRT and a GPU: {reason}")


def tensorrt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def engine_source(fp16: bool) -> str:
    """Which ONNX file the engine is built from: "fp16" (TensorRT 11+, strongly typed) or
    "fp32" (fp32 engines, and fp16 engines through the builder flag on TensorRT 10)."""
    return "fp16" if fp16 and tensorrt_major() >= 11 else "fp32"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                 fp16: bool, max_batch: int = 256, opt_batch: int | None = None,
                 timing_cache: str | os.PathLike | None = None, workspace_gib: float = 2.0,
                 size: int = 32) -> dict:
    """Build and save a serialized TensorRT engine from an exported ONNX file.

    Args:
        onnx_path: fp32 ONNX (TensorRT 10, or fp32 engines) or the fp16 ONNX (fp16 on 11+); see
            :func:`engine_source`.
        engine_path: where to write the engine (atomically).
        fp16: request fp16 kernels (TensorRT 10: builder flag; 11+: must come from the graph).
        max_batch: optimisation profile covers input ``[1..max_batch, 3, size, size]``.
        opt_batch: batch the kernels are tuned for (default ``min(64, max_batch)``).
        timing_cache: file to load/save the builder's timing cache (speeds up rebuilds).
    Returns:
        ``{"tensorrt_version", "precision", "built_from", "max_batch", "opt_batch"}``.
    Raises:
        VggCifarError: TensorRT is missing or the build fails (parser or builder errors).
    """
    require_tensorrt()
    import tensorrt as trt

    major = tensorrt_major()
    opt_batch = int(opt_batch or min(64, max_batch))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Networks are always explicit-batch on 10+ (the flag is deprecated and ignored); 11+ networks
    # are always strongly typed. On 10 we stay weakly typed so BuilderFlag.FP16 applies.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise VggCifarError(f"TensorRT could not parse {onnx_path}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16 and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and rounds fp32 matmul/conv inputs to 10 mantissa bits, which
        # would break the fp32 parity bound.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, size, size), (opt_batch, 3, size, size),
                      (int(max_batch), 3, size, size))
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VggCifarError(f"TensorRT failed to build an engine from {onnx_path} "
                            "(see the TensorRT messages above)")
    data = bytes(memoryview(serialized))
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(data))
    if cache is not None:
        blob = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write(timing_cache, lambda tmp: Path(tmp).write_bytes(blob))
    return {"tensorrt_version": trt.__version__, "precision": "fp16" if fp16 else "fp32",
            "built_from": Path(onnx_path).name, "max_batch": int(max_batch),
            "opt_batch": opt_batch}


class EngineRunner:
    """Run a serialized engine on the current CUDA device, using PyTorch for GPU memory.

    ``__call__(x)``: ``x`` ``[N, 3, S, S]`` float32 numpy in [0, 1], ``N <= max_batch`` ->
    logits ``[N, C]`` float32 numpy.
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
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in self.names
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
        return outs["logits"].float().cpu().numpy()
