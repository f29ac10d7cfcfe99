"""An exported ``.onnx`` model run with OpenVINO on the CPU, in bf16 where the CPU computes it
natively and fp32 elsewhere (:func:`vggcifar.runtime.openvino.cpu_precision`); a checkpoint runs
on its cached ONNX export, exactly as with onnxruntime.

Same contract as :class:`~.onnx_backend.OnnxBackend`, whose metadata reading, interface checks
and fixed-batch handling it shares: input ``image`` ``[N, 3, S, S]`` float32 RGB in [0, 1],
output ``logits`` ``[N, C]``.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from ...errors import VggCifarError
from ...runtime.contract import INPUT_NAME, LOGITS, PROBABILITIES
from ...runtime.onnx import read_self_contained
from ...runtime.openvino import compile_cpu, read_onnx
from .onnx_backend import OnnxBackend


def _port(port) -> SimpleNamespace:
    """An OpenVINO port as the ``name``/``type``/``shape`` view the interface checks read
    (onnxruntime's ``NodeArg``): fixed sizes as ints, dynamic ones as ``None``."""
    import openvino as ov

    ps = port.get_partial_shape()
    shape = [] if ps.rank.is_dynamic else [d.get_length() if d.is_static else None for d in ps]
    t = port.get_element_type()
    # A tensor can carry several names: the contract's, where it is one of them.
    name = next((n for n in (INPUT_NAME, LOGITS, PROBABILITIES) if n in port.get_names()),
                port.get_any_name())
    return SimpleNamespace(name=name, shape=shape,
                           type="tensor(float)" if t == ov.Type.f32 else f"tensor({t})")


class OpenVinoBackend(OnnxBackend):
    """OpenVINO on one ONNX graph, compiled once per load for the CPU (``PERFORMANCE_HINT=
    LATENCY``: one stream on all cores).

    One infer request serves every call, under a lock: the batcher calls from its worker thread
    and ``vgg-predict`` from several, and one stream runs one batch at a time anyway.
    """

    name = "openvino"

    def __init__(self, path, device: str | None = None, model_bytes: bytes | None = None,
                 precision: str | None = None):
        """``model_bytes``: the file's bytes, already read and verified; ``precision``: ``bf16``
        or ``fp32`` (default: bf16 where the CPU has it natively)."""
        if (device or "auto").lower() not in ("auto", "cpu"):
            raise VggCifarError(f"the openvino backend runs on the CPU, not {device}; use "
                                "--device cpu, or --backend onnx or torch for a GPU")
        if model_bytes is None:  # a file the user named (cached exports are our own)
            model_bytes = read_self_contained(path)
        model, meta = read_onnx(model_bytes, name=path)
        self._bind(path, meta, [_port(p) for p in model.inputs], [_port(p) for p in model.outputs])
        self.compiled, self.precision = compile_cpu(model, precision, name=path)
        self.device = "cpu"
        self._output = self.compiled.output(self.output_name)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            # share_outputs=False: the result is a copy, not the request's reused buffer.
            return self._request.infer({self.input_name: x}, share_inputs=True)[self._output]

    def describe(self) -> str:
        """e.g. ``openvino (CPU, bf16)``."""
        return f"openvino (CPU, {self.precision})"
