"""ONNX export of a checkpoint: the model wrapped so the graph takes RGB in [0, 1] and returns
logits and probabilities (softmax of the logits divided by the model's temperature), with the
preprocessing, the temperature and provenance stored as metadata.

The graph interface and the metadata keys are the export/serving contract
(:mod:`vggcifar.runtime.contract`); they are the same for fp32, fp16 and int8 files, so clients
never change.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from pathlib import Path

import onnx
import torch

from ..errors import VggCifarError
from ..preprocessing import Normalize, Preprocessing
from ..runtime.contract import INPUT_NAME, OUTPUT_NAMES, set_metadata
from .options import DEFAULT_OPSET, EXPORTERS


class ExportWrapper(torch.nn.Module):
    """The exported computation: normalise, classify, softmax(logits / temperature).

    ``forward(image)``: ``image`` ``[N, 3, H, W]`` float32 RGB in [0, 1] ->
    ``(logits [N, C] float32, probabilities [N, C] float32)``. The logits are the model's own;
    only the probabilities see the temperature (a model with ``T = 1`` has no division in its
    graph, as before temperature scaling existed).

    With ``dtype=torch.float16`` the wrapped model runs in half precision but the interface stays
    float32: the input is normalised in float32 (the mean/std constants keep their precision),
    then cast to fp16 inside the graph, and the logits are cast back before the softmax. This is
    the form TensorRT 11 needs (strongly typed: precision comes from the graph, not from builder
    flags) and lets clients feed every variant the same array.
    """

    def __init__(self, model: torch.nn.Module, mean, std, dtype: torch.dtype = torch.float32,
                 temperature: float = 1.0):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.dtype = dtype
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor):
        x = self.normalize(image)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        logits = self.model(x)
        if logits.dtype != torch.float32:
            logits = logits.float()
        scaled = logits / self.temperature if self.temperature != 1.0 else logits
        return logits, torch.softmax(scaled, dim=1)


def wrap_model(model: torch.nn.Module, preproc: Preprocessing,
               precision: str = "fp32", temperature: float = 1.0) -> ExportWrapper:
    """A copy of ``model`` (eval mode) wrapped for export; ``precision`` "fp32" or "fp16"."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"wrap_model precision must be fp32 or fp16, not {precision!r}")
    m = copy.deepcopy(model).float().eval()
    if precision == "fp16":
        m = m.half()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return ExportWrapper(m, preproc.mean, preproc.std, dtype, temperature).eval()


def _export_torchscript(wrapper, sample, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # We choose the legacy exporter on purpose (see export_onnx); its deprecation warning
        # and tracer warnings are noise for the user.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (sample,), str(path), dynamo=False, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), opset_version=opset, do_constant_folding=True,
            dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)})


def _export_dynamo(wrapper, sample, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # The dynamo exporter prints progress lines on stdout; keep them for error messages only.
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (sample,), str(path), dynamo=True, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), opset_version=opset, external_data=False,
            dynamic_shapes={INPUT_NAME: {0: batch}}, verbose=False)


def export_onnx(model: torch.nn.Module, preproc: Preprocessing, path: str | os.PathLike, *,
                precision: str = "fp32", exporter: str = "torchscript",
                opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None,
                temperature: float | None = None) -> Path:
    """Export ``model`` (which takes normalised ``[N, 3, 32, 32]`` input) as an ONNX file with the
    interface described in the module docstring, check it with the full ONNX checker and store
    ``metadata`` as ``metadata_props``.

    Args:
        model: the checkpoint's model (not modified; a copy is exported).
        preproc: the checkpoint's preprocessing (mean/std go into the graph).
        path: output file (written directly; callers stage it under a temporary name).
        precision: "fp32" or "fp16" (fp16 weights and activations, float32 interface).
        exporter: "torchscript" (``torch.onnx.export(dynamo=False)``) or "dynamo".
        opset: ONNX opset.
        metadata: string key/values to store (see :func:`build_metadata`).
        temperature: the ``T`` of ``probabilities = softmax(logits / T)``; ``None``: the
            metadata's ``temperature`` (1 when absent). The metadata stored records the ``T``
            the graph uses, so the two cannot disagree.
    Raises:
        RuntimeError: the exporter failed (message names the exporter).
    """
    if exporter not in EXPORTERS:
        raise VggCifarError(f"unknown exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    path = Path(path)
    metadata = dict(metadata or {})
    if temperature is None:
        temperature = float(json.loads(metadata.get("temperature", "1")))
    metadata["temperature"] = json.dumps(float(temperature))
    wrapper = wrap_model(model, preproc, precision, temperature)
    # Batch 2, not 1: a batch of 1 can be specialised into the graph as a constant.
    sample = torch.rand(2, 3, preproc.input_size, preproc.input_size)
    try:
        with torch.no_grad():
            (_export_torchscript if exporter == "torchscript" else _export_dynamo)(
                wrapper, sample, path, opset)
    except Exception as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise RuntimeError(f"{exporter} exporter failed at opset {opset}: {first[:300]}") from e
    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    proto.doc_string = (f"vggcifar classifier; input '{INPUT_NAME}' RGB [0,1] NCHW; outputs "
                        f"{', '.join(OUTPUT_NAMES)}")
    onnx.save(proto, str(path))
    check_onnx(path)
    return path


def check_onnx(path: str | os.PathLike) -> None:
    """Run ``onnx.checker.check_model(full_check=True)`` (with shape inference) on ``path``.

    Raises:
        onnx.checker.ValidationError / onnx.shape_inference.InferenceError on an invalid model.
    """
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 identifying a checkpoint's weights, verified: of the file for a ``.pt``; for a
    shipped manifest, of the joined parts, every part checked against the manifest first
    (:func:`vggcifar.source.resolve_source`; a caller that also loads the model resolves the
    source once and reads ``source.sha256`` instead).

    Raises:
        VggCifarError: a missing, damaged or modified shipped part; an unreadable file.
    """
    from ..source import resolve_source

    return resolve_source(path).sha256
