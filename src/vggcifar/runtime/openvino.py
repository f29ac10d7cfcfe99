"""OpenVINO on the CPU: whether it can run here, which precision it should run in, and the one
factory that compiles an ONNX export for serving and the benchmarks.

bf16 where the CPU computes it natively (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``),
fp32 elsewhere: the shipped VGG16 loses no accuracy in bf16 (docs/benchmarks.md, "Inference
runtimes"), and elsewhere bf16 would be emulated, slower than fp32.

openvino is imported inside the functions, so importing this module is cheap; it is a dependency
only where it publishes wheels (:data:`PLATFORMS`).
"""

from __future__ import annotations

import os
import platform
import threading

from ..errors import VggCifarError
from .contract import ModelFileError

PRECISIONS = ("bf16", "fp32")
# The CPU flags of native bf16 (AMX tiles, or AVX-512 BF16 dot products).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# (platform.system(), platform.machine()) pairs OpenVINO publishes wheels for; the pyproject's
# environment markers say the same.
PLATFORMS = {("Linux", "x86_64"), ("Linux", "aarch64"), ("Linux", "arm64"), ("Darwin", "arm64"),
             ("Darwin", "x86_64"), ("Windows", "AMD64")}

_CORE = None
_CORE_LOCK = threading.Lock()


def openvino_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether openvino imports here, and if not, why."""
    try:
        import openvino
    except Exception as e:  # ImportError, or a broken install failing to load its libraries
        here = (platform.system(), platform.machine())
        if here not in PLATFORMS:
            return False, (f"OpenVINO publishes no packages for {here[0]} {here[1]}; "
                           "use --backend onnx")
        return False, (f"openvino is not importable ({type(e).__name__}: {e}); "
                       "pip install openvino")
    return True, f"OpenVINO {openvino.__version__.split('-')[0]}"


def cpu_precision() -> tuple[str, str]:
    """``(precision, why)``: ``bf16`` where the CPU lists a native bf16 flag, else ``fp32``."""
    from . import devices

    flags = devices.cpu_flags()
    native = sorted((flags or set()) & set(BF16_FLAGS))
    if native:
        return "bf16", f"the CPU lists {', '.join(native)}"
    return "fp32", ("no CPU flags to read" if flags is None else
                    "no amx_bf16/avx512_bf16 CPU flag: bf16 would be emulated")


def core():
    """The process's one ``openvino.Core`` (it holds the plugins; made on first use)."""
    global _CORE
    import openvino as ov

    with _CORE_LOCK:
        if _CORE is None:
            _CORE = ov.Core()
        return _CORE


def read_onnx(model: str | os.PathLike | bytes, name=None):
    """``(openvino.Model, metadata)``: the graph of an ONNX file (its path, or its bytes already
    read and verified) and its ``metadata_props`` as strings.

    Raises:
        ModelFileError: not a loadable ONNX model (one line).
    """
    import io

    from openvino.frontend import FrontEndManager

    try:
        # The ONNX frontend itself: Core.read_model would also try the other frameworks' readers
        # on a broken file, and some print to stderr.
        onnx = FrontEndManager().load_by_framework("onnx")
        model_ = onnx.convert(onnx.load(io.BytesIO(model) if isinstance(model, bytes)
                                        else str(model)))
    except Exception as e:  # openvino raises RuntimeError subclasses with multi-line text
        label = name or ("the model" if isinstance(model, bytes) else model)
        raise ModelFileError(f"{label} is not a loadable ONNX model for OpenVINO "
                             f"({_reason(e)})") from e
    # The ONNX frontend keeps metadata_props as the model's "framework" runtime info.
    meta = {}
    if model_.has_rt_info(["framework"]):
        meta = {k: v.astype(str) for k, v in model_.get_rt_info()["framework"].items()}
    return model_, meta


def compile_cpu(model, precision: str | None = None, name=None):
    """Compile an ``openvino.Model`` for the CPU with ``PERFORMANCE_HINT=LATENCY`` (one stream
    on all cores: what batch-1 requests and a serving batcher want) and
    ``INFERENCE_PRECISION_HINT`` = ``precision`` (default: :func:`cpu_precision`).

    Returns:
        ``(compiled model, precision)``.
    Raises:
        VggCifarError: an unknown precision, or OpenVINO has no kernels for the graph (e.g. an
            int8 QDQ export: "No suitable implementations").
    """
    import openvino as ov
    import openvino.properties.hint as hints

    precision = precision or cpu_precision()[0]
    if precision not in PRECISIONS:
        raise VggCifarError(f"unknown OpenVINO precision {precision!r}; use "
                            f"{' or '.join(PRECISIONS)}")
    config = {hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
              hints.performance_mode: hints.PerformanceMode.LATENCY}
    try:
        return core().compile_model(model, "CPU", config), precision
    except Exception as e:  # noqa: BLE001 - openvino's own exception types
        raise VggCifarError(f"OpenVINO cannot compile {name or 'the model'} for the CPU "
                            f"({_reason(e)})") from e


def _reason(e: Exception) -> str:
    """The telling line of an OpenVINO error, whose first lines name its C++ source files and
    head the next ones (ending in ":")."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().endswith(":")
             and not ln.startswith(("Exception from ", "Check '"))]
    return (lines or [type(e).__name__])[0][:200]
