"""Inference backends: one small class per runtime, all with the same ``run`` contract.

Every backend takes ``[N, 3, S, S]`` uint8 RGB pixels (``S`` = the model's input size) and returns
``[N, num_classes]`` float32 probabilities. Each one applies the model's own normalisation:
PyTorch through :func:`vggcifar.preprocessing.uint8_to_input` (exactly as in training), ONNX and
TensorRT inside the exported graph (their input is float RGB in [0, 1]).

Heavy or optional runtimes (onnxruntime, tensorrt) are imported inside the functions that need
them, so importing :mod:`vggcifar.serving` stays cheap and works without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import VggCifarError
from ..preprocessing import Preprocessing, uint8_to_input

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CACHE_FORMAT = "vggcifar-onnx-cache"  # the sidecar of a cached export: see cached_onnx
# Part of a cached export's name: bump it when exports gain metadata that serving reads, so older
# cached exports (without it) are rebuilt rather than reused. 2: test_accuracy_with_tta.
CACHE_REVISION = 2


class ModelFileError(VggCifarError):
    """The model file itself is unusable: not loadable, or not what its metadata says."""


@dataclass
class ModelInfo:
    """What the page and the CLI say about the loaded model.

    ``test_accuracy`` is the one-view figure (what plain serving delivers); ``test_accuracy_tta``
    the figure with flip test-time augmentation (``Predictor(tta=True)``). Either is ``None``
    when the model file does not record it.
    """

    name: str
    path: str
    format: str  # "checkpoint", "shipped", "onnx" or "tensorrt"
    preproc: Preprocessing
    arch: str | None = None
    test_accuracy: float | None = None
    test_accuracy_tta: float | None = None
    precision: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.preproc.class_names

    def accuracy(self, tta: bool = False) -> float | None:
        """The test accuracy of the chosen serving mode (``None``: not recorded)."""
        return self.test_accuracy_tta if tta else self.test_accuracy

    def accuracy_text(self, tta: bool = False) -> str:
        """e.g. ``test accuracy 88.04% (one view)`` or ``... (flip TTA)``."""
        acc, mode = self.accuracy(tta), "flip TTA" if tta else "one view"
        return f"test accuracy {acc:.2%} ({mode})" if acc is not None else \
            f"test accuracy unknown ({mode})"

    def describe(self, tta: bool = False) -> str:
        """One line: ``name (arch, test accuracy 93.10% (one view))``, the figure of the chosen
        serving mode."""
        bits = [self.arch or "unknown arch"]
        if self.precision:
            bits.append(self.precision)
        bits.append(self.accuracy_text(tta))
        return f"{self.name} ({', '.join(bits)})"


def model_format(path: str | os.PathLike) -> str:
    """Guess the model file's kind from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix == ".json":
        return "shipped"
    return "checkpoint"


def display_name(path: str | os.PathLike) -> str:
    """``run/best.pt`` for run checkpoints (the file name alone says little), else the name."""
    p = Path(path)
    if p.stem in ("best", "last") and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name


def served_accuracy(meta: dict) -> tuple[float | None, float | None]:
    """``(one view, flip TTA)`` test accuracies recorded for a model, ``None`` where unknown.

    A run's ``test_accuracy`` is its TTA figure when its config used flip TTA (exports record
    that as ``test_accuracy_with_tta``), else the one-view figure; ``test_accuracy_one_view`` is
    always one view.
    """
    def number(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    acc, one = number(meta.get("test_accuracy")), number(meta.get("test_accuracy_one_view"))
    if (meta.get("config") or {}).get("tta") or meta.get("test_accuracy_with_tta") is True:
        return one, acc
    return (one if one is not None else acc), None


def _meta_value(v):
    """Exported metadata values are strings holding JSON (lists, numbers, "null") or plain text."""
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return v


def info_from_export_metadata(meta: dict, path, fmt: str) -> ModelInfo:
    """Build :class:`ModelInfo` from ONNX ``metadata_props`` or a TensorRT sidecar JSON.

    Raises:
        ModelFileError: ``class_names``, ``mean`` or ``std`` missing (not a vggcifar export), or
            values out of bounds (see :func:`vggcifar.checkpoint.check_preprocessing`).
    """
    from ..checkpoint import check_preprocessing

    m = {k: _meta_value(v) for k, v in meta.items()}
    missing = [k for k in ("class_names", "mean", "std") if not m.get(k)]
    if missing:
        raise ModelFileError(
            f"{path} lacks the vggcifar metadata {', '.join(missing)}; "
            "export the model with vgg-export")
    pre = {"class_names": m["class_names"], "mean": m["mean"], "std": m["std"],
           "input_size": m.get("input_size") or 32}
    try:
        check_preprocessing(pre, None, f"{path} metadata")
    except VggCifarError as e:
        raise ModelFileError(str(e)) from e
    preproc = Preprocessing.from_dict(pre)
    one, tta = served_accuracy(m)
    return ModelInfo(
        name=display_name(path), path=str(path), format=fmt, preproc=preproc,
        arch=m.get("arch") or None, test_accuracy=one, test_accuracy_tta=tta,
        precision=str(m["precision"]) if m.get("precision") else None,
        extra={k: v for k, v in m.items() if k in ("source_sha256", "vggcifar_version")})


class Backend:
    """Base class. ``name`` is the backend (``torch``, ``onnx``, ``tensorrt``); ``device`` says
    where it runs (``cpu``, ``cuda:0``, ``CUDAExecutionProvider``...)."""

    name = "?"
    device = "cpu"

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` uint8 -> ``[N, num_classes]`` float32 probabilities."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.device})"


# --------------------------------------------------------------------------------------------
# PyTorch


def resolve_torch_device(device: str | None) -> torch.device:
    """``None``/``auto`` -> CUDA when available else CPU; otherwise the named device.

    Raises:
        VggCifarError: CUDA asked for but not available, or an unknown device string.
    """
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise VggCifarError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VggCifarError(f"device {device} asked for, but CUDA is not available here; "
                            "use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise VggCifarError(f"device {device} is not supported; use auto, cpu or cuda[:N]")
    return dev


class TorchBackend(Backend):
    """A vggcifar checkpoint (``.pt``) or shipped manifest (``.json``) run with PyTorch."""

    name = "torch"

    def __init__(self, path, device: str | None = None):
        from ..checkpoint import load_checkpoint

        dev = resolve_torch_device(device)
        model, meta = load_checkpoint(path, map_location=dev)
        # channels_last is what training used and is faster for these convolutions on CPU and GPU.
        self.model = model.to(memory_format=torch.channels_last).eval()
        self.torch_device = dev
        self.device = str(dev)
        self.preproc: Preprocessing = meta["preproc"]
        fmt = model_format(path)
        one, tta = served_accuracy(meta)
        self.info = ModelInfo(
            name=display_name(path), path=str(path), format=fmt, preproc=self.preproc,
            arch=meta.get("arch"), test_accuracy=one, test_accuracy_tta=tta,
            precision="fp16 weights" if fmt == "shipped" else None)  # stored fp16, run fp32

    def run(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.torch_device)
        with torch.inference_mode():
            x = uint8_to_input(x, self.preproc.mean, self.preproc.std)
            logits = self.model(x.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy()


# --------------------------------------------------------------------------------------------
# onnxruntime

_ORT_LOCK = threading.Lock()


def ort_session(path, device: str | None = None, model_bytes: bytes | None = None):
    """Create an onnxruntime session on CUDA when it really works (else CPU), quietly.

    onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even without a GPU or driver;
    the only reliable test is to create a session and look at ``get_providers()``. The failed
    attempt logs a multi-line error through onnxruntime's default logger, so its severity is
    raised to FATAL while trying.

    Args:
        path: the model file (named in messages; read only when ``model_bytes`` is None).
        device: ``None``/``auto`` (CUDA if it works, else CPU), ``cpu``, or ``cuda[:N]``
            (an error if CUDA does not work).
        model_bytes: the model's bytes, already read and verified (see :func:`cached_onnx`), so
            the file cannot change between the check and the load.
    Returns:
        ``(session, provider name)``.
    Raises:
        ModelFileError: unreadable model file.
        VggCifarError: CUDA required but not working.
    """
    import onnxruntime as ort

    device = (device or "auto").lower()
    want_cuda = device != "cpu"
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise VggCifarError(f"unknown device {device!r} for onnxruntime; use auto, cpu or cuda[:N]")
    cuda_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Idle intra-op threads spin by default, burning cores that concurrent requests (the demo's
    # queue runs several) or other processes need; measured here: +15-35% requests/s without.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = []
    if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.append(("CUDAExecutionProvider", {"device_id": cuda_id}))
    providers.append("CPUExecutionProvider")
    with _ORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort.set_default_logger_severity(4)
        try:
            sess = ort.InferenceSession(str(path) if model_bytes is None else model_bytes, opts,
                                        providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelFileError(f"{path} is not a loadable ONNX model ({first})") from e
        finally:
            # Back to "errors only": later real failures are still reported.
            ort.set_default_logger_severity(3)
    active = sess.get_providers()[0]
    if device.startswith("cuda") and active != "CUDAExecutionProvider":
        raise VggCifarError(f"device {device} asked for, but onnxruntime cannot use CUDA here "
                            "(no GPU, driver or CUDA libraries); use --device cpu or auto")
    return sess, active


class OnnxBackend(Backend):
    """An exported ``.onnx`` model run with onnxruntime. Input ``image``: ``[N, 3, S, S]`` float32
    RGB in [0, 1] (normalisation is inside the graph); output ``probabilities``."""

    name = "onnx"

    def __init__(self, path, device: str | None = None, info: ModelInfo | None = None,
                 model_bytes: bytes | None = None):
        self.session, provider = ort_session(path, device, model_bytes)
        self.path = path
        self.device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.provider = provider
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = info or info_from_export_metadata(meta, path, "onnx")
        self.num_classes = len(self.info.class_names)
        inputs = self.session.get_inputs()
        names = [o.name for o in self.session.get_outputs()]
        self.input_name = "image" if any(i.name == "image" for i in inputs) else inputs[0].name
        if "probabilities" in names:
            self.output_name, self.softmax = "probabilities", False
        elif "logits" in names:
            self.output_name, self.softmax = "logits", True
        else:
            raise ModelFileError(f"{path} has no 'probabilities' or 'logits' output; "
                                 "export the model with vgg-export")
        self._check_interface(inputs, self.session.get_outputs())
        shape = inputs[0].shape
        # A fixed batch dimension (an int) means batches must be cut to that size.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def _check_interface(self, inputs, outputs) -> None:
        """The graph must take one float ``[N, 3, S, S]`` input (``S`` from the metadata) and give
        ``[N, C]`` with ``C`` = the number of class names; symbolic sizes are checked per run.

        Raises:
            ModelFileError: naming the mismatch.
        """
        s = self.info.preproc.input_size
        inp = next(i for i in inputs if i.name == self.input_name)
        fixed = [(d, want) for d, want in zip(inp.shape[1:], (3, s, s)) if isinstance(d, int)]
        if (len(inputs) != 1 or inp.type != "tensor(float)" or len(inp.shape) != 4
                or any(d != want for d, want in fixed)):
            raise ModelFileError(
                f"{self.path} takes {len(inputs)} input(s), {inp.name!r} {inp.type} {inp.shape}; "
                f"its metadata says one float [N, 3, {s}, {s}]: re-export it with vgg-export")
        out = next(o for o in outputs if o.name == self.output_name)
        if len(out.shape) != 2 or (isinstance(out.shape[1], int)
                                   and out.shape[1] != self.num_classes):
            raise ModelFileError(
                f"{self.path} output {out.name!r} is {out.shape}, but its metadata names "
                f"{self.num_classes} classes: re-export it with vgg-export")

    def run(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
        if self.fixed_batch and len(x) != self.fixed_batch:
            return np.concatenate([self._run_fixed(x[i:i + self.fixed_batch])
                                   for i in range(0, len(x), self.fixed_batch)])
        return self._out(self.session.run([self.output_name], {self.input_name: x})[0])

    def _run_fixed(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n < self.fixed_batch:
            x = np.concatenate([x, np.zeros((self.fixed_batch - n, *x.shape[1:]), x.dtype)])
        return self._out(self.session.run([self.output_name], {self.input_name: x})[0])[:n]

    def _out(self, y: np.ndarray) -> np.ndarray:
        if y.ndim != 2 or y.shape[1] != self.num_classes:  # a symbolic size in the graph
            raise ModelFileError(f"{self.path} gave {y.shape[1:]} outputs per image, but its "
                                 f"metadata names {self.num_classes} classes")
        y = y.astype(np.float32)
        if self.softmax:
            y = np.exp(y - y.max(axis=1, keepdims=True))
            y /= y.sum(axis=1, keepdims=True)
        return y

    def describe(self) -> str:
        return f"onnx ({self.provider})"


# --------------------------------------------------------------------------------------------
# TensorRT


def engine_sidecar(path) -> Path:
    """The metadata file written next to a TensorRT engine: ``<engine>.json``."""
    return Path(f"{path}.json")


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` package imports and a CUDA device is visible to PyTorch."""
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or a broken install failing to load its libraries
        return False
    return torch.cuda.is_available()


class TensorRTBackend(Backend):
    """A serialized TensorRT engine (``.engine``/``.plan``) plus its ``<engine>.json`` metadata
    (written by ``vgg-export --tensorrt``; same keys as the ONNX metadata_props).

    Runs through :class:`vggcifar.export.tensorrt.EngineRunner` (PyTorch owns the GPU buffers;
    batches above the engine's profile are cut into pieces). Input to the engine: ``image``
    ``[N, 3, S, S]`` float32 RGB in [0, 1].
    """

    name = "tensorrt"

    def __init__(self, path, device: str | None = None):
        if not tensorrt_available():
            raise VggCifarError("the tensorrt backend needs the tensorrt package "
                                "(pip install 'vggcifar[tensorrt]') and an NVIDIA GPU visible "
                                "to PyTorch; neither is usable here")
        from ..export.tensorrt import EngineRunner

        dev = resolve_torch_device(device)
        if dev.type != "cuda":
            raise VggCifarError("the tensorrt backend runs on a CUDA GPU only; drop --device cpu")
        path = Path(path)
        sidecar = engine_sidecar(path)
        if not sidecar.is_file():
            raise VggCifarError(f"{sidecar} (the engine's metadata) is missing; "
                                "re-export the engine with vgg-export --tensorrt")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as e:
            raise VggCifarError(f"{sidecar} is not readable JSON ({e})") from e
        self.info = info_from_export_metadata(meta, path, "tensorrt")
        self.torch_device = dev
        self.device = str(dev)
        with torch.cuda.device(dev):
            self.runner = EngineRunner(path)
        self._lock = threading.Lock()  # one execution context: one batch at a time

    def run(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
        with self._lock, torch.cuda.device(self.torch_device):
            logits = self.runner(x)
        if logits.ndim != 2 or logits.shape[1] != len(self.info.class_names):
            raise ModelFileError(f"{self.info.path} gave {logits.shape[1:]} outputs per image, "
                                 f"but its metadata names {len(self.info.class_names)} classes")
        return torch.softmax(torch.from_numpy(logits).float(), dim=1).numpy()


# --------------------------------------------------------------------------------------------
# choosing


def onnx_from_checkpoint(path, out_dir, sha256: str | None = None) -> Path:
    """Export a checkpoint (or shipped manifest) to an fp32 ONNX file in ``out_dir`` with
    :mod:`vggcifar.export`, metadata included, so onnxruntime can run it."""
    try:
        from ..export.onnx_export import build_metadata, checkpoint_sha256, export_onnx
    except ImportError as e:
        raise VggCifarError("running a .pt checkpoint with --backend onnx needs vggcifar.export; "
                            "export the model with vgg-export and pass the .onnx file") from e
    from ..checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    metadata = build_metadata(meta, precision="fp32", exporter="torchscript",
                              source_sha256=sha256 or checkpoint_sha256(path))
    out = Path(out_dir) / (Path(path).stem + ".onnx")
    return export_onnx(model, meta["preproc"], out, metadata=metadata)


def onnx_cache_dir() -> Path:
    """``$VGGCIFAR_CACHE/onnx`` (default ``~/.cache/vggcifar/onnx``), like the data cache."""
    return Path(os.environ.get("VGGCIFAR_CACHE", Path.home() / ".cache" / "vggcifar")) / "onnx"


def source_sha256(path) -> str:
    """sha256 of a checkpoint's verified weights: the ``.pt`` file's own digest, or for a shipped
    manifest the joined parts', every part checked against the manifest first (so damaged parts
    are refused here, whichever backend runs them).

    Raises:
        VggCifarError: a missing, damaged or modified shipped part; an unreadable file.
    """
    from ..checkpoint import file_sha256

    if model_format(path) == "shipped":
        from ..shipped import read_shipped_bytes

        return read_shipped_bytes(path)[1]
    try:
        return file_sha256(path)
    except OSError as e:
        raise VggCifarError(f"cannot read {path} ({e.strerror or e})") from e


def cache_sidecar(cached) -> Path:
    """The record written after a cached export: ``<export>.json`` holding the format, the
    source's and the export's sha256."""
    return Path(f"{cached}.json")


def _private_dir(folder: Path) -> bool:
    """True when only we can write to ``folder``, as ssh and pip require of what they trust: it
    is ours (a group- or world-writable one, e.g. made under umask 002, is made private first).
    On Windows the user's profile is private."""
    if os.name != "posix":
        return True
    st = folder.stat()
    if st.st_uid != os.geteuid():
        return False
    if st.st_mode & 0o022:
        os.chmod(folder, st.st_mode & 0o755)
    return True


def _read_verified(cached: Path, sha: str) -> bytes | None:
    """The cached export's bytes when its sidecar says it was built from weights with sha256
    ``sha`` and the bytes hash to the sidecar's digest; else ``None`` (missing, truncated,
    replaced or foreign: rebuild)."""
    try:
        side = json.loads(cache_sidecar(cached).read_text())
        if (not isinstance(side, dict) or side.get("format") != CACHE_FORMAT
                or side.get("source_sha256") != sha or cached.stat().st_size != side.get("bytes")):
            return None
        data = cached.read_bytes()
    except (OSError, ValueError):
        return None
    return data if hashlib.sha256(data).hexdigest() == side.get("onnx_sha256") else None


def _sweep_stale_builds(folder: Path, age_s: float = 3600) -> None:
    """Remove build folders a killed process left in the cache (an export is hundreds of MB)."""
    for d in folder.glob(".build-*"):
        try:
            if time.time() - d.stat().st_mtime > age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def cached_onnx(path, sha: str | None = None, rebuild: bool = False) -> tuple[Path, bytes]:
    """The ONNX export of a checkpoint or shipped manifest, made once and kept in
    :func:`onnx_cache_dir`: ``(file, its bytes)``, the bytes verified.

    Named by the source's sha256 and the vggcifar and torch versions, so a changed checkpoint or
    exporter never reuses a stale graph. A cached file is used only when its sidecar
    (:func:`cache_sidecar`, written after the export, atomically) records this source's
    sha256 and the file's own digest; anything else at that name (a truncated file, one dropped
    there by someone else) is rebuilt, as with ``rebuild=True``. The caller also checks the
    ``source_sha256`` in the graph's metadata (:func:`onnx_backend_for_checkpoint`). A cache
    folder others can write to is not used: the export is then made afresh each time.

    Args:
        sha: :func:`source_sha256` of ``path`` when the caller has it.
    Raises:
        VggCifarError: damaged source weights; the export failed.
    """
    from .. import __version__
    from ..io import atomic_write

    sha = sha or source_sha256(path)
    key = f"{sha[:20]}-v{__version__}-torch{torch.__version__.split('+')[0]}-r{CACHE_REVISION}"
    folder = onnx_cache_dir()
    cached = folder / f"{Path(path).stem}-{key}.onnx"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        usable = _private_dir(folder)
    except OSError:  # read-only home
        usable = False
    if usable and not rebuild:
        data = _read_verified(cached, sha)
        if data is not None:
            return cached, data
    build_root = folder if usable else None
    if usable:
        _sweep_stale_builds(folder)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=build_root) as tmp:
        fresh = onnx_from_checkpoint(path, tmp, sha256=sha)
        data = fresh.read_bytes()
        if not usable:
            log.debug("ONNX cache %s not private or not writable: export not cached", folder)
            return fresh, data
        try:
            atomic_write(cached, lambda t: os.replace(fresh, t))
            side = {"format": CACHE_FORMAT, "source_sha256": sha, "bytes": len(data),
                    "onnx_sha256": hashlib.sha256(data).hexdigest(), "source": str(path)}
            atomic_write(cache_sidecar(cached), lambda t: Path(t).write_text(json.dumps(side)))
        except OSError:  # full disk: use the fresh export once, uncached
            return fresh, data
    return cached, data


def onnx_backend_for_checkpoint(path, device: str | None = None) -> OnnxBackend:
    """onnxruntime on the cached ONNX export of a checkpoint or shipped manifest.

    The source weights are verified first (shipped parts on every load). The cached export is
    used only if it verifies (:func:`cached_onnx`) and its metadata's ``source_sha256`` is this
    source's; a file that fails either check, or fails to load, is rebuilt once.

    Raises:
        VggCifarError: damaged source weights, or an export that still fails after the rebuild.
    """
    sha = source_sha256(path)
    for rebuild in (False, True):
        cached, data = cached_onnx(path, sha, rebuild=rebuild)
        try:
            b = OnnxBackend(cached, device, model_bytes=data)
            if b.info.extra.get("source_sha256") != sha:
                raise ModelFileError(f"{cached} is not an export of {path}")
            break
        except ModelFileError as e:
            if rebuild:
                raise
            log.info("cached ONNX export unusable (%s); rebuilding it", e)
    _describe_as_checkpoint(b.info, path, model_format(path))
    return b


def _describe_as_checkpoint(info: ModelInfo, path, fmt: str) -> None:
    """An ONNX export made from a checkpoint is presented as that checkpoint."""
    info.name, info.path, info.format = display_name(path), str(path), fmt
    if fmt == "shipped":
        info.precision = "fp16 weights"


def _auto_cpu_checkpoint(path) -> Backend | None:
    """onnxruntime on the cached ONNX export of a checkpoint, or ``None`` if that fails.

    On CPU, onnxruntime beat PyTorch for VGG16 on the project's 2-core machine (3.3x for
    `vgg-predict` on 1,000 files, far more at batch 1; docs/benchmarks.md, "Serving"), and it
    degrades gracefully when the cores are shared, where PyTorch's OpenMP threads stall. Any
    failure (no onnxruntime, an export problem) leaves the choice to PyTorch, which always works
    and reports damaged weights itself.
    """
    try:
        import onnxruntime  # noqa: F401

        return onnx_backend_for_checkpoint(path, "cpu")
    except Exception as e:  # noqa: BLE001 - deliberately broad: this is only an optimisation
        log.debug("auto backend: onnxruntime not usable (%s)", e)
        return None


def create_backend(path, backend: str = "auto", device: str | None = None) -> Backend:
    """Open ``path`` with the requested backend.

    ``auto`` picks the fastest runtime that works for the file here: a TensorRT engine needs
    TensorRT; an ``.onnx`` file runs on onnxruntime (CUDA when it works); a ``.pt`` checkpoint or
    ``.json`` manifest runs on PyTorch with CUDA when available, and on CPU on onnxruntime (its
    ONNX export, made once and cached: see :func:`cached_onnx`), falling back to PyTorch.
    ``onnx`` with a checkpoint uses the same cached export.

    Raises:
        VggCifarError: the file's kind and the backend do not fit, or the backend cannot run here.
    """
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise VggCifarError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    path = Path(path)
    if not path.exists():
        raise VggCifarError(f"model {path} does not exist")
    if path.is_dir():
        raise VggCifarError(f"model {path} is a folder; pass the model file inside it")
    fmt = model_format(path)
    if backend == "auto":
        if fmt in ("onnx", "tensorrt"):
            backend = fmt
        elif resolve_torch_device(device).type == "cpu":
            b = _auto_cpu_checkpoint(path)
            if b is not None:
                return b
            backend = "torch"
        else:
            backend = "torch"
    if fmt == "tensorrt":
        if backend != "tensorrt":
            raise VggCifarError(f"{path} is a TensorRT engine; only --backend tensorrt runs it")
        return TensorRTBackend(path, device)
    if backend == "tensorrt":
        raise VggCifarError(f"--backend tensorrt needs a TensorRT engine (.engine/.plan), not "
                            f"{path.name}; build one with vgg-export")
    if fmt == "onnx":
        if backend != "onnx":
            raise VggCifarError(f"{path} is an ONNX model; use --backend onnx or auto")
        return OnnxBackend(path, device)
    if backend == "onnx":
        return onnx_backend_for_checkpoint(path, device)
    return TorchBackend(path, device)
