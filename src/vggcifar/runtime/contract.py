"""The contract between export and serving, without torch: tensor names, what a model file is,
the metadata an exported model carries, and the TensorRT engine's sidecar.

Every exported graph (fp32, fp16, int8 ONNX; TensorRT engines built from them) has one interface:

    input  ``image``          float32 ``[N, 3, S, S]``, RGB in [0, 1], NCHW, N dynamic
    output ``logits``         float32 ``[N, num_classes]``
    output ``probabilities``  float32 ``[N, num_classes]``: softmax(``logits`` / T), ``T`` the
                              model's temperature (metadata ``temperature``; 1 when absent)

and carries :data:`METADATA_KEYS` (ONNX ``metadata_props``; for an engine, ``<engine>.json``),
all values strings, lists and numbers JSON-encoded. Only the standard library is imported here
(onnx inside the two functions that read and write ONNX files), so command-line tools can use
these names and keep ``--help`` fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import VggCifarError
from ..io import read_plain_file

MAX_SIDECAR_BYTES = 1 << 20  # an engine's metadata is a few kB

INPUT_NAME = "image"
LOGITS = "logits"
PROBABILITIES = "probabilities"
OUTPUT_NAMES = (LOGITS, PROBABILITIES)

# What model_kind() answers, and the file suffixes that decide it.
MODEL_KINDS = ("checkpoint", "shipped", "onnx", "tensorrt")
ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SHIPPED_SUFFIX = ".json"  # the manifest of the shipped model's parts (vggcifar.shipped)
KIND_TEXT = {"checkpoint": "a vggcifar checkpoint", "shipped": "a shipped-model manifest",
             "onnx": "an ONNX model", "tensorrt": "a TensorRT engine"}

# The keys vgg-export writes and that serving (info_from_export_metadata) and the export tests
# rely on: renaming one breaks models exported before. Serving needs class_names, mean and std;
# the rest is shown to the user or identifies the source.
METADATA_KEYS = ("class_names", "mean", "std", "input_size", "input_description", "arch",
                 "model_kwargs", "head", "width", "num_classes", "source_checkpoint",
                 "source_sha256", "test_accuracy", "test_accuracy_one_view",
                 "test_accuracy_with_tta", "test_accuracy_flip_shift", "vggcifar_version",
                 "precision", "exporter", "outputs", "temperature")
REQUIRED_METADATA = ("class_names", "mean", "std")
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_DESCRIPTION = ("RGB float32 in [0, 1], NCHW [N, 3, {s}, {s}], N dynamic; resize to {s}x{s} "
                     "first; mean/std normalisation happens inside the graph")


class ModelFileError(VggCifarError):
    """The model file itself is unusable: not loadable, or not what its metadata says."""


def model_kind(path: str | os.PathLike) -> str:
    """What a model file is, from its suffix: one of :data:`MODEL_KINDS`.

    ``.onnx`` -> "onnx"; ``.engine``/``.plan``/``.trt`` -> "tensorrt"; ``.json`` -> "shipped"
    (the manifest of a model stored in parts); anything else (``best.pt``...) -> "checkpoint".
    The one place this is decided: loading, exporting and serving all ask here.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ONNX_SUFFIX:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix == SHIPPED_SUFFIX:
        return "shipped"
    return "checkpoint"


# ---------------------------------------------------------------------- metadata
def build_metadata(meta: dict, *, precision: str, exporter: str,
                   source_sha256: str) -> dict[str, str]:
    """The metadata of an exported file (all values strings; lists JSON-encoded).

    Args:
        meta: the ``meta`` dict of :func:`vggcifar.checkpoint.load_checkpoint` (its
            ``preproc`` gives class names, mean, std and input size; ``path`` is recorded
            resolved as ``source_checkpoint``).
        precision: one of :data:`PRECISIONS`.
        exporter: "torchscript" or "dynamo" (the one whose fp32 export passed parity).
        source_sha256: the checkpoint's sha256 (:func:`vggcifar.export.onnx_export.checkpoint_sha256`).

    ``temperature`` is ``meta["temperature"]`` (1.0 when absent): the graph's ``probabilities``
    divide the logits by it (:func:`vggcifar.export.onnx_export.export_onnx` reads it from here).
    """
    from .. import __version__

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    pre = meta["preproc"]
    kwargs = meta.get("model_kwargs") or {}  # the architecture's options (checkpoint format 2)
    acc, one = meta.get("test_accuracy"), meta.get("test_accuracy_one_view")
    fs = meta.get("test_accuracy_flip_shift")
    return {
        "class_names": json.dumps(list(pre.class_names)),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "input_size": str(int(pre.input_size)),
        "input_description": INPUT_DESCRIPTION.format(s=int(pre.input_size)),
        "arch": str(meta["arch"]),
        "model_kwargs": json.dumps(kwargs, sort_keys=True),
        # VGG's options as their own keys too, as files exported before format 2 have them.
        "head": str(kwargs.get("head", meta.get("head"))),
        "width": json.dumps(kwargs.get("width", meta.get("width"))),
        "num_classes": str(int(meta.get("num_classes") or len(pre.class_names))),
        "source_checkpoint": str(Path(meta["path"]).resolve()),
        "source_sha256": source_sha256,
        "test_accuracy": json.dumps(None if acc is None else float(acc)),
        "test_accuracy_one_view": json.dumps(None if one is None else float(one)),
        # Whether test_accuracy is the run's flip-TTA figure (as config.tta in the checkpoint).
        "test_accuracy_with_tta": json.dumps(trained_with_tta(meta)),
        # With the 6 views of flip+shift TTA, where measured (the shipped model's, by vgg-eval).
        "test_accuracy_flip_shift": json.dumps(None if fs is None else float(fs)),
        "vggcifar_version": __version__,
        "precision": precision,
        "exporter": exporter,
        "outputs": json.dumps(list(OUTPUT_NAMES)),
        "temperature": json.dumps(float(meta.get("temperature") or 1.0)),
    }


def trained_with_tta(meta: dict) -> bool:
    """Whether a checkpoint's ``config`` (its training options) used flip TTA, so that its
    ``test_accuracy`` is the TTA figure. A ``config`` that is not a dict (a damaged or foreign
    file) records nothing."""
    config = meta.get("config")
    return isinstance(config, dict) and bool(config.get("tta"))


def decode_metadata(meta: dict) -> dict:
    """Metadata strings back to values: JSON where it parses (lists, numbers, ``null``), the
    plain string otherwise (``arch``, ``precision``...)."""
    def value(v):
        if not isinstance(v, str):
            return v
        try:
            return json.loads(v)
        except (ValueError, RecursionError):  # deep nesting ("[" * 200000) is no JSON for us
            return v

    return {k: value(v) for k, v in meta.items()}


def set_metadata(proto, metadata: dict[str, str]) -> None:
    """Replace the entries of an ``onnx.ModelProto``'s ``metadata_props`` named in ``metadata``
    (values must be str)."""
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
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# ---------------------------------------------------------------------- engine sidecar
def engine_sidecar(path: str | os.PathLike) -> Path:
    """The metadata file next to a TensorRT engine (engines cannot carry metadata):
    ``<engine>.json``."""
    return Path(f"{path}.json")


def write_engine_sidecar(engine: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write :func:`engine_sidecar` atomically: the ONNX metadata keys plus the build info."""
    from ..io import atomic_write

    side = engine_sidecar(engine)
    atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(metadata, indent=2)))
    return side


def read_engine_sidecar(engine: str | os.PathLike) -> dict:
    """The raw (string-valued) metadata of a TensorRT engine.

    Raises:
        VggCifarError: the sidecar is missing or not a JSON object.
    """
    side = engine_sidecar(engine)
    if not side.is_file():
        raise VggCifarError(f"{side} (the engine's metadata) is missing; "
                            "re-export the engine with vgg-export --tensorrt")
    try:  # bounded, and never a FIFO: the sidecar is a few kB
        raw = read_plain_file(side, MAX_SIDECAR_BYTES, follow_links=True)
        if len(raw) > MAX_SIDECAR_BYTES:
            raise ValueError(f"over {MAX_SIDECAR_BYTES:,} bytes")
        meta = json.loads(raw)
    except (OSError, ValueError, RecursionError) as e:
        raise VggCifarError(f"{side} is not readable JSON ({e})") from e
    if not isinstance(meta, dict):
        raise VggCifarError(f"{side} is not a JSON object; re-export the engine with vgg-export")
    return meta
