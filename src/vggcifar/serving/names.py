"""Serving's choices, without torch, so the command-line tools can list them quickly
(``click.Choice``) and keep ``--help`` fast.
"""

from ..errors import VggCifarError

# ``auto`` picks the fastest runtime that works for the model file here; the others name the rows
# of vggcifar.serving.backends.BACKEND_TABLE (checked there).
BACKENDS = ("auto", "torch", "onnx", "openvino", "tensorrt")
# How a non-square picture becomes the model's square input: "squash" resizes the whole picture
# (what training saw: CIFAR images are square, and what vgg-predict has always done); "crop" keeps
# its largest centred square, so the object keeps its proportions but the edges are lost.
FITS = ("squash", "crop")
# Test-time augmentation: "none" (one view: the default and the headline figure), "flip" (the
# image and its mirror image) and "flip-shift" (those two plus the image shifted by one pixel in
# each of the 4 directions: 6 views). The served probabilities are the mean over the views.
TTA_MODES = ("none", "flip", "flip-shift")
TTA_LABELS = {"none": "one view", "flip": "flip TTA", "flip-shift": "flip+shift TTA (6 views)"}


def check_tta(tta) -> str:
    """A TTA mode from a mode name or a bool (``True``: ``flip``, as ``--tta`` has always
    meant; ``False``: ``none``). Raises a one-line :class:`VggCifarError` for anything else."""
    if isinstance(tta, bool):
        return "flip" if tta else "none"
    if tta in TTA_MODES:
        return tta
    raise VggCifarError(f"unknown test-time augmentation {tta!r}; use one of "
                        f"{', '.join(TTA_MODES)}")


def tta_label(tta) -> str:
    """e.g. ``one view``, ``flip TTA``, ``flip+shift TTA (6 views)``."""
    return TTA_LABELS[check_tta(tta)]
