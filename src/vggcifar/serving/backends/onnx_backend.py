"""An exported ``.onnx`` model run with onnxruntime; a checkpoint runs on its cached ONNX
export (:mod:`vggcifar.export.cache`, imported only for that case).

Input ``image``: ``[N, 3, S, S]`` float32 RGB in [0, 1] (the normalisation is inside the graph);
output ``logits`` ``[N, C]`` (the probabilities are derived from them with the model's temperature,
:meth:`Backend.outputs`); a graph with only ``probabilities`` serves their logarithm as logits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ...runtime.contract import INPUT_NAME, LOGITS, PROBABILITIES, ModelFileError, decode_metadata
from ...runtime.onnx import CUDA, device_session, read_self_contained
from ...source import ModelSource, resolve_source
from .base import Backend, ModelInfo, check_outputs, info_from_export_metadata

MAX_FIXED_BATCH = 1024  # a graph with a fixed batch larger than this is refused (see _bind)

log = logging.getLogger(__name__)


class OnnxBackend(Backend):
    """onnxruntime on one ONNX graph, on CUDA when it works (see
    :func:`vggcifar.runtime.onnx.device_session`), else CPU."""

    name = "onnx"

    def __init__(self, path, device: str | None = None, model_bytes: bytes | None = None):
        """``model_bytes``: the file's bytes, already read and verified, so the file cannot
        change between the check and the load."""
        if model_bytes is None:  # a file the user named (cached exports are our own)
            model_bytes = read_self_contained(path)
        model = model_bytes
        self.session, self.provider = device_session(model, device, name=path)
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self._bind(path, self.session.get_modelmeta().custom_metadata_map,
                   self.session.get_inputs(), self.session.get_outputs())

    def _bind(self, path, metadata: dict, inputs, outputs) -> None:
        """Read the graph's metadata and choose and check its input and output; ``inputs`` and
        ``outputs`` are onnxruntime ``NodeArg``s, or objects with the same ``name``, ``type``
        (``"tensor(float)"``) and ``shape`` (ints for fixed sizes)."""
        self.path = path
        self.metadata = decode_metadata(metadata)
        self.info: ModelInfo = info_from_export_metadata(self.metadata, path, "onnx")
        self.num_classes = len(self.info.class_names)
        names = [o.name for o in outputs]
        if len(inputs) != 1:  # inputs[0] of a graph with none was an IndexError
            raise ModelFileError(f"{path} takes {len(inputs)} inputs; a vggcifar model takes one "
                                 "image batch: re-export it with vgg-export")
        self.input_name = INPUT_NAME if any(i.name == INPUT_NAME for i in inputs) else inputs[0].name
        if LOGITS in names:
            self.output_name, self.from_probabilities = LOGITS, False
        elif PROBABILITIES in names:
            self.output_name, self.from_probabilities = PROBABILITIES, True
        else:
            raise ModelFileError(f"{path} has no {PROBABILITIES!r} or {LOGITS!r} output; "
                                 "export the model with vgg-export")
        self._check_interface(inputs, outputs)
        shape = inputs[0].shape
        # A fixed batch dimension (an int) means batches must be cut to that size.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        if self.fixed_batch is not None and self.fixed_batch > MAX_FIXED_BATCH:
            # every call is padded to it: a batch of 1,000,000 is 12 GB for one image
            raise ModelFileError(f"{path} takes batches of exactly {self.fixed_batch} images, "
                                 f"more than {MAX_FIXED_BATCH}; re-export it with vgg-export "
                                 "(a dynamic batch size)")

    @classmethod
    def open(cls, source: ModelSource, device: str | None) -> "OnnxBackend":
        if source.kind == "onnx":
            return cls(source.path, device)
        return from_cached_export(source, lambda f, data: cls(f, device, model_bytes=data))

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
        if out.type not in ("tensor(float)", "tensor(float16)", "tensor(f16)"):
            raise ModelFileError(f"{self.path} output {out.name!r} is {out.type}, not floats: "
                                 "re-export it with vgg-export")
        if len(out.shape) != 2 or (isinstance(out.shape[1], int)
                                   and out.shape[1] != self.num_classes):
            raise ModelFileError(
                f"{self.path} output {out.name!r} is {out.shape}, but its metadata names "
                f"{self.num_classes} classes: re-export it with vgg-export")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` float32 in [0, 1] -> ``[N, C]`` float32 logits."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch and len(x) != self.fixed_batch:
            return np.concatenate([self._run_fixed(x[i:i + self.fixed_batch])
                                   for i in range(0, len(x), self.fixed_batch)])
        return self._out(self._infer(x), len(x))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        """The runtime's call: ``[N, 3, S, S]`` float32 -> the chosen output, ``[N, C]``."""
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def _run_fixed(self, x: np.ndarray) -> np.ndarray:
        """A batch of at most ``fixed_batch`` images, zero-padded to it; the padding is cut off."""
        n = len(x)
        if n < self.fixed_batch:
            x = np.concatenate([x, np.zeros((self.fixed_batch - n, *x.shape[1:]), x.dtype)])
        return self._out(self._infer(x), len(x))[:n]

    def _out(self, y: np.ndarray, images: int) -> np.ndarray:
        y = check_outputs(y, self.num_classes, self.path, images)
        if self.from_probabilities:
            # log(p) differs from the logits by a constant per row: the same softmax.
            y = np.log(np.maximum(y, np.float32(1e-30)))
        return y

    def describe(self) -> str:
        return f"onnx ({self.provider})"


def onnx_backend_for_checkpoint(path, device: str | None = None) -> OnnxBackend:
    """onnxruntime on the cached ONNX export of a checkpoint or shipped manifest, presented as
    that checkpoint (see :func:`from_cached_export`)."""
    return OnnxBackend.open(resolve_source(path), device)


def from_cached_export(source: ModelSource,
                       open_export: Callable[[Path, bytes], OnnxBackend]) -> OnnxBackend:
    """A backend on the cached ONNX export of a checkpoint or shipped manifest, presented as
    that checkpoint: the one way every ONNX runtime serves a checkpoint.

    ``open_export(file, its verified bytes)`` makes the backend. ``source`` was resolved once
    (:func:`vggcifar.source.resolve_source`): its weights are verified already (shipped parts
    on every load), and its digest is not computed again here. The cached export is used only if it verifies
    (:func:`vggcifar.export.cache.cached_onnx`) and its metadata's ``source_sha256`` is this
    source's; a file that fails either check, or fails to load, is rebuilt once.

    Raises:
        VggCifarError: damaged source weights, or an export that still fails after the rebuild.
    """
    # The one place serving uses export: making the graph. Imported here so that serving an
    # .onnx file or an engine never loads the exporter.
    from ...export import cache

    for rebuild in (False, True):
        cached, data = cache.cached_onnx(source, rebuild=rebuild)
        try:
            b = open_export(cached, data)
            if b.metadata.get("source_sha256") != source.sha256:
                raise ModelFileError(f"{cached} is not an export of {source.path}")
            break
        except ModelFileError as e:
            if rebuild:
                raise
            log.info("cached ONNX export unusable (%s); rebuilding it", e)
    b.info.present_as(source.path, source.kind)
    return b
