"""TensorRT engines built from the exported ONNX files (running them:
:class:`vggcifar.runtime.tensorrt.EngineRunner`).

Needs the ``tensorrt`` Python package (``pip install -e ".[tensorrt]"``) and an NVIDIA GPU; both
are imported/probed only inside these functions, so the rest of the package works without them.

Precision: TensorRT 10 builds fp16 engines from the fp32 ONNX file with ``BuilderFlag.FP16``
(weak typing). TensorRT 11 removed the precision flags; networks are always strongly typed and
take their precision from the graph, so the fp16 engine is built from the fp16 ONNX file (whose
casts keep the float32 interface). fp32 engines are built with TF32 off so that they can meet the
fp32 parity bound.

The engines compute what their ONNX source does, so their ``probabilities`` are softmax(logits /
T) with the model's temperature; the sidecar carries ``temperature`` as the ONNX metadata does.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import VggCifarError
from ..io import atomic_write
from ..runtime.contract import INPUT_NAME
from ..runtime.tensorrt import require_tensorrt, tensorrt_major
from .options import MAX_BATCH

OPT_BATCH = 64  # the batch the kernels are tuned for (at most max_batch)
WORKSPACE_BYTES = 2 << 30  # builder scratch memory; 2 GiB is ample for these networks


def engine_source(fp16: bool) -> str:
    """Which ONNX file the engine is built from: "fp16" (TensorRT 11+, strongly typed) or
    "fp32" (fp32 engines, and fp16 engines through the builder flag on TensorRT 10)."""
    return "fp16" if fp16 and tensorrt_major() >= 11 else "fp32"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                 fp16: bool, max_batch: int = MAX_BATCH,
                 timing_cache: str | os.PathLike | None = None) -> dict:
    """Build and save a serialized TensorRT engine from an exported ONNX file.

    Args:
        onnx_path: fp32 ONNX (TensorRT 10, or fp32 engines) or the fp16 ONNX (fp16 on 11+); see
            :func:`engine_source`.
        engine_path: where to write the engine (atomically).
        fp16: request fp16 kernels (TensorRT 10: builder flag; 11+: must come from the graph).
        max_batch: optimisation profile covers input ``[1..max_batch, 3, S, S]`` (``S`` read
            from the graph); kernels are tuned for ``min(OPT_BATCH, max_batch)``.
        timing_cache: file to load/save the builder's timing cache (speeds up rebuilds).
    Returns:
        ``{"tensorrt_version", "precision", "built_from", "max_batch", "opt_batch"}``.
    Raises:
        VggCifarError: TensorRT is missing or the build fails (parser or builder errors).
    """
    require_tensorrt()
    import tensorrt as trt

    major = tensorrt_major()
    opt_batch = min(OPT_BATCH, int(max_batch))
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
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16 and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and rounds fp32 matmul/conv inputs to 10 mantissa bits, which
        # would break the fp32 parity bound.
        config.clear_flag(trt.BuilderFlag.TF32)
    dims = network.get_input(0).shape  # [-1, 3, S, S]: the export's input size S
    size = int(dims[len(dims) - 1])
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
