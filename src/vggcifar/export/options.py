"""The export's choices and defaults, without torch or onnx, so ``vgg-export --help`` can list
them quickly."""

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 18
# The TorchScript exporter stops at opset 20; the dynamo exporter converts from 18 when asked for
# less, which can fail; either failure is reported per exporter.
MIN_OPSET, MAX_OPSET = 13, 23
RANDOM_IMAGES = 256  # random [0, 1] inputs in every parity check
PARITY_IMAGES = 1000  # real test images in the parity check (with --data)
CALIB_IMAGES = 512  # int8 calibration images
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MAX_BATCH = 256  # largest batch of a TensorRT engine's profile and of a Triton model

# Options that only mean something for some formats (ultralytics' exporter refuses the others):
# option name as the user types it -> the formats it applies to.
FORMAT_OPTIONS = {
    "--calib-images": ("int8",),
    "--calib-method": ("int8",),
    "--triton-name": ("triton",),
    "--max-batch": ("tensorrt", "triton"),
}


def inapplicable_options(given, formats) -> list[str]:
    """One message per option in ``given`` (names as typed, e.g. ``--calib-method``) that no
    format in ``formats`` (keys such as ``int8``) uses."""
    return [f"{opt} applies only with {' or '.join('--' + f for f in fmts)}"
            for opt, fmts in FORMAT_OPTIONS.items()
            if opt in given and not set(fmts) & set(formats)]
