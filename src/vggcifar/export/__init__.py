"""Export: checkpoints to ONNX (fp32, fp16, int8) and TensorRT engines, each checked against the
PyTorch checkpoint.

Exported ONNX files take ``image`` float32 ``[N, 3, 32, 32]`` RGB in [0, 1] (normalisation is in
the graph) and return ``logits`` and ``probabilities`` float32 ``[N, num_classes]``; their
metadata_props carry the preprocessing, class names and provenance (see
:func:`vggcifar.export.onnx_export.build_metadata`).
"""

from .formats import FORMATS, ExportFormat, default_out_dir, export_checkpoint, format_table
from .onnx_export import (INPUT_NAME, METADATA_KEYS, OUTPUT_NAMES, ExportWrapper, build_metadata,
                          check_onnx, checkpoint_sha256, export_onnx, read_metadata, wrap_model)
from .parity import TOLERANCES, Tolerance, compare, make_parity_inputs
from .quantize import quantize_int8

__all__ = ["FORMATS", "INPUT_NAME", "METADATA_KEYS", "OUTPUT_NAMES", "TOLERANCES", "ExportFormat",
           "ExportWrapper", "Tolerance", "build_metadata", "check_onnx", "checkpoint_sha256",
           "compare", "default_out_dir", "export_checkpoint", "export_onnx", "format_table",
           "make_parity_inputs", "quantize_int8", "read_metadata", "wrap_model"]
