"""onnxruntime sessions: the one factory used by serving, the export's parity checks and the
benchmarks.

Contract of :func:`ort_session`: it always returns a session (falling back to CPU when the asked
provider cannot run here) together with the provider actually in use, and raises
:class:`~vggcifar.runtime.contract.ModelFileError` only when the file itself cannot be loaded.
Whether a fallback is acceptable is the caller's decision: serving with ``--device cuda`` refuses
it (:func:`device_session`), the parity checks skip that runtime.

onnxruntime is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import os
import re
import threading
import warnings

from ..errors import VggCifarError
from .contract import ModelFileError
from .devices import DEVICE_HELP

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# onnxruntime's default logger is process-wide: sessions are created one at a time so that
# quietening it for one attempt never hides another thread's errors.
_LOCK = threading.Lock()


def _graph_tensors(graph):
    """Every tensor a graph holds: initializers (sparse ones too) and node attributes, with
    the subgraphs of control-flow nodes, recursively."""
    for t in graph.initializer:
        yield t
    for st in graph.sparse_initializer:
        yield st.values
        yield st.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node):
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        sparse = [a.sparse_tensor] if a.HasField("sparse_tensor") else []
        for st in (*sparse, *a.sparse_tensors):  # Constant(sparse_value=...)
            yield st.values
            yield st.indices
        if a.HasField("g"):
            yield from _graph_tensors(a.g)
        for g in a.graphs:
            yield from _graph_tensors(g)


MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit for one message


def read_self_contained(path: str | os.PathLike) -> bytes:
    """The bytes of the ONNX file ``path``, read once (the runtime then loads these bytes, so
    the file cannot be swapped after the check), checked by :func:`check_self_contained`.

    Raises:
        ModelFileError: unreadable, over 2 GB, not ONNX, or using external data.
    """
    from ..io import read_plain_file

    try:
        data = read_plain_file(path, MAX_ONNX_BYTES, follow_links=True)
    except OSError as e:
        raise ModelFileError(f"cannot read {path} ({e.strerror or e})") from None
    if len(data) > MAX_ONNX_BYTES:
        raise ModelFileError(f"{path} is over 2 GB, more than one ONNX file holds")
    check_self_contained(data, path)
    return data


def check_self_contained(model: bytes, name: str | os.PathLike = "the model") -> None:
    """Refuse an ONNX graph (its bytes) that keeps tensors in external files: a crafted one
    names ``/etc/passwd``, ``../..`` or a link as its "weights", and whether the runtime refuses
    that depends on its version. vggcifar's own exports are always one file.

    Raises:
        ModelFileError: not parseable as ONNX, or the graph uses external data.
    """
    import onnx

    try:
        proto = onnx.load_model_from_string(model)
    except Exception as e:  # refused, not passed on: the runtime's parser may accept more
        raise ModelFileError(f"{name} is not a loadable ONNX model ({type(e).__name__})") from None
    tensors = _graph_tensors(proto.graph)
    functions = (t for f in proto.functions for n in f.node for t in _node_tensors(n))
    for t in (*tensors, *functions):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelFileError(f"{name} keeps tensor {t.name!r} in an external file; vggcifar "
                                 "loads only self-contained ONNX files (vgg-export writes one)")


def ort_session(model: str | os.PathLike | bytes, provider: str = CPU, *,
                options: dict | None = None, threads: int | None = None,
                name: str | os.PathLike | None = None):
    """Create an onnxruntime session on ``provider``, quietly, with CPU as the fallback.

    onnxruntime-gpu lists CUDA and TensorRT as available even without a GPU or driver; the only
    reliable test is to create a session and look at ``get_providers()``. The failed attempt
    logs a multi-line error through onnxruntime's default logger, so its severity is raised to
    FATAL while trying. Idle intra-op threads do not spin: spinning burns cores that concurrent
    requests or other processes need (measured: +15-35% requests/s without).

    Args:
        model: the file's path, or its bytes already read and verified (so the file cannot
            change between a check and the load).
        provider: :data:`CPU`, :data:`CUDA` or :data:`TENSORRT` (which falls back to CUDA with
            TF32 off, then CPU, for the nodes it does not take).
        options: the provider's options (e.g. ``{"device_id": 1}``).
        threads: intra-op threads (default: onnxruntime's, one per core).
        name: how messages name the model when ``model`` is bytes.
    Returns:
        ``(session, active provider)``: the active provider is ``provider`` unless it cannot
        run here.
    Raises:
        ModelFileError: not a loadable ONNX model (one line).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
    available = ort.get_available_providers()
    providers = []
    if provider != CPU and provider in available:
        providers.append((provider, options or {}))
        if provider == TENSORRT and CUDA in available:
            providers.append((CUDA, {"use_tf32": 0}))
    providers.append((CPU, options or {}) if provider == CPU else (CPU, {}))
    source = model if isinstance(model, bytes) else str(model)
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort.set_default_logger_severity(4)
        try:
            sess = ort.InferenceSession(source, opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            label = name or ("the model" if isinstance(model, bytes) else model)
            raise ModelFileError(f"{label} is not a loadable ONNX model ({first})") from e
        finally:
            # Back to "errors only": later real failures are still reported.
            ort.set_default_logger_severity(3)
    return sess, sess.get_providers()[0]


def device_session(model: str | os.PathLike | bytes, device: str | None = None, *,
                   name: str | os.PathLike | None = None):
    """A session for a ``--device`` value: ``None``/``auto`` (CUDA if it works, else CPU),
    ``cpu``, or ``cuda[:N]`` (an error if CUDA does not work). Returns ``(session, provider)``.

    Raises:
        ModelFileError: not a loadable ONNX model.
        VggCifarError: an unknown device, or CUDA required but not working.
    """
    import onnxruntime as ort

    device = (device or "auto").strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device, re.ASCII):  # int() below needs digits
        raise VggCifarError(f"unknown device {device!r} for onnxruntime; {DEVICE_HELP}")
    cuda_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    want_cuda = device != "cpu" and CUDA in ort.get_available_providers()
    sess, active = ort_session(model, CUDA if want_cuda else CPU,
                               options={"device_id": cuda_id} if want_cuda else None, name=name)
    if device.startswith("cuda") and active != CUDA:
        raise VggCifarError(f"device {device} asked for, but onnxruntime cannot use CUDA here "
                            "(no GPU, driver or CUDA libraries); use --device cpu or auto")
    return sess, active


def onnxruntime_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether onnxruntime imports here."""
    try:
        import onnxruntime
    except Exception as e:  # ImportError, or a broken install failing to load its libraries
        return False, (f"onnxruntime is not importable ({type(e).__name__}: {e}); "
                       "pip install onnxruntime")
    return True, f"onnxruntime {onnxruntime.__version__}"
