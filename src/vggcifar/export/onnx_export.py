"""ONNX export of a checkpoint: the model wrapped so the graph takes RGB in [0, 1] and returns
logits and probabilities, with the preprocessing and provenance stored as metadata.

Graph interface (the same for fp32, fp16 and int8 files, so clients never change):

    input  ``image``          float32 ``[N, 3, 32, 32]``, RGB in [0, 1], NCHW, N dynamic
    output ``logits``         float32 ``[N, num_classes]``
    output ``probabilities``  float32 ``[N, num_classes]`` (softmax of ``logits``)
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

INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 18
# The TorchScript exporter stops at opset 20; the dynamo exporter converts from 18 when asked for
# less, which can fail; either failure is reported per exporter.
MIN_OPSET, MAX_OPSET = 13, 23
PRECISIONS = ("fp32", "fp16", "int8")
# Metadata keys read by the serving code: do not rename.
METADATA_KEYS = ("class_names", "mean", "std", "input_size", "input_description", "arch", "head",
                 "source_checkpoint", "source_sha256", "test_accuracy",
                 "test_accuracy_one_view", "test_accuracy_with_tta", "vggcifar_version",
                 "precision", "exporter")
INPUT_DESCRIPTION = ("RGB float32 in [0, 1], NCHW [N, 3, {s}, {s}], N dynamic; resize to {s}x{s} "
                     "first; mean/std normalisation happens inside the graph")


class ExportWrapper(torch.nn.Module):
    """The exported computation: normalise, classify, softmax.

    ``forward(image)``: ``image`` ``[N, 3, H, W]`` float32 RGB in [0, 1] ->
    ``(logits [N, C] float32, probabilities [N, C] float32)``.

    With ``dtype=torch.float16`` the wrapped model runs in half precision but the interface stays
    float32: the input is normalised in float32 (the mean/std constants keep their precision),
    then cast to fp16 inside the graph, and the logits are cast back before the softmax. This is
    the form TensorRT 11 needs (strongly typed: precision comes from the graph, not from builder
    flags) and lets clients feed every variant the same array.
    """

    def __init__(self, model: torch.nn.Module, mean, std, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.dtype = dtype

    def forward(self, image: torch.Tensor):
        x = self.normalize(image)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        logits = self.model(x)
        if logits.dtype != torch.float32:
            logits = logits.float()
        return logits, torch.softmax(logits, dim=1)


def wrap_model(model: torch.nn.Module, preproc: Preprocessing,
               precision: str = "fp32") -> ExportWrapper:
    """A copy of ``model`` (eval mode) wrapped for export; ``precision`` "fp32" or "fp16"."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"wrap_model precision must be fp32 or fp16, not {precision!r}")
    m = copy.deepcopy(model).float().eval()
    if precision == "fp16":
        m = m.half()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return ExportWrapper(m, preproc.mean, preproc.std, dtype).eval()


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
            dynamic_shapes={"image": {0: batch}}, verbose=False)


def export_onnx(model: torch.nn.Module, preproc: Preprocessing, path: str | os.PathLike, *,
                precision: str = "fp32", exporter: str = "torchscript",
                opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None) -> Path:
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
    Raises:
        RuntimeError: the exporter failed (message names the exporter).
    """
    if exporter not in EXPORTERS:
        raise VggCifarError(f"unknown exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    path = Path(path)
    wrapper = wrap_model(model, preproc, precision)
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
    set_metadata(proto, metadata or {})
    proto.doc_string = "vggcifar classifier; input 'image' RGB [0,1] NCHW; outputs logits, probabilities"
    onnx.save(proto, str(path))
    check_onnx(path)
    return path


def check_onnx(path: str | os.PathLike) -> None:
    """Run ``onnx.checker.check_model(full_check=True)`` (with shape inference) on ``path``.

    Raises:
        onnx.checker.ValidationError / onnx.shape_inference.InferenceError on an invalid model.
    """
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace ``proto``'s metadata_props entries named in ``metadata`` (values must be str)."""
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise TypeError(f"metadata value for {k!r} must be str, got {type(v).__name__}")
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict of strings (JSON-encoded values stay
    strings: ``json.loads(meta["class_names"])`` gives the list)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 identifying a checkpoint: of the file for a ``.pt``; for a shipped-model ``.json``
    manifest, the manifest's ``sha256`` (of the joined checkpoint bytes, verified on load)."""
    from ..checkpoint import file_sha256

    path = Path(path)
    if path.suffix == ".json":
        try:
            return str(json.loads(path.read_text())["sha256"])
        except (OSError, ValueError, KeyError) as e:
            raise VggCifarError(f"{path} is not a readable shipped-model manifest ({e})") from e
    return file_sha256(path)


def build_metadata(meta: dict, *, precision: str, exporter: str, source_sha256: str,
                   source_checkpoint: str | None = None) -> dict[str, str]:
    """The metadata_props for an exported file (all values strings; lists JSON-encoded).

    Args:
        meta: the ``meta`` dict of :func:`vggcifar.checkpoint.load_checkpoint`.
        precision: "fp32", "fp16" or "int8".
        exporter: "torchscript" or "dynamo" (the one whose fp32 export passed parity).
        source_sha256: see :func:`checkpoint_sha256`.
        source_checkpoint: path to record; defaults to the resolved ``meta["path"]``.
    """
    from .. import __version__

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    pre: Preprocessing = meta["preproc"]
    src = source_checkpoint or str(Path(meta["path"]).resolve())
    acc, one = meta.get("test_accuracy"), meta.get("test_accuracy_one_view")
    return {
        "class_names": json.dumps(list(pre.class_names)),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "input_size": str(int(pre.input_size)),
        "input_description": INPUT_DESCRIPTION.format(s=int(pre.input_size)),
        "arch": str(meta["arch"]),
        "head": str(meta["head"]),
        "width": json.dumps(meta.get("width")),
        "num_classes": str(int(meta["num_classes"])),
        "source_checkpoint": src,
        "source_sha256": source_sha256,
        "test_accuracy": json.dumps(None if acc is None else float(acc)),
        "test_accuracy_one_view": json.dumps(None if one is None else float(one)),
        # Whether test_accuracy is the run's flip-TTA figure (as config.tta in the checkpoint).
        "test_accuracy_with_tta": json.dumps(bool((meta.get("config") or {}).get("tta"))),
        "vggcifar_version": __version__,
        "precision": precision,
        "exporter": exporter,
        "outputs": json.dumps(list(OUTPUT_NAMES)),
    }
