"""Export: checkpoints to ONNX (fp32, fp16, int8) and TensorRT engines, each checked against the
PyTorch checkpoint.

Exported ONNX files take ``image`` float32 ``[N, 3, 32, 32]`` RGB in [0, 1] (normalisation is in
the graph) and return ``logits`` and ``probabilities`` float32 ``[N, num_classes]``; their
metadata_props carry the preprocessing, class names and provenance (see
:func:`vggcifar.runtime.contract.build_metadata`).
"""

# Imported on first use (see vggcifar._lazy): `vgg-* --help` must not import torch.
from .._lazy import lazy_package

_EXPORTS = {
    "FORMATS": ".formats",
    "ExportFormat": ".formats",
    "default_out_dir": ".pipeline",
    "export_checkpoint": ".pipeline",
    "format_table": ".pipeline",
    "INPUT_NAME": "..runtime.contract",
    "METADATA_KEYS": "..runtime.contract",
    "OUTPUT_NAMES": "..runtime.contract",
    "ExportWrapper": ".onnx_export",
    "build_metadata": "..runtime.contract",
    "check_onnx": ".onnx_export",
    "checkpoint_sha256": ".onnx_export",
    "export_onnx": ".onnx_export",
    "read_metadata": "..runtime.contract",
    "wrap_model": ".onnx_export",
    "TOLERANCES": ".parity",
    "Tolerance": ".parity",
    "compare": ".parity",
    "make_parity_inputs": ".parity",
    "quantize_int8": ".quantize",
}
lazy_package(__name__, _EXPORTS)

