"""Serving's choices, without torch, so the command-line tools can list them quickly
(``click.Choice``) and keep ``--help`` fast. :mod:`.backends` and :mod:`.predictor` re-export them.
"""

# ``auto`` picks the fastest runtime that works for the model file here; the others name the rows
# of vggcifar.serving.backends.BACKEND_TABLE (checked there).
BACKENDS = ("auto", "torch", "onnx", "tensorrt")
# How a non-square picture becomes the model's square input: "squash" resizes the whole picture
# (what training saw: CIFAR images are square, and what vgg-predict has always done); "crop" keeps
# its largest centred square, so the object keeps its proportions but the edges are lost.
FITS = ("squash", "crop")
# Classes listed per image by vgg-predict, the demo's chart and vgg-serve's ?top_k= default.
DEFAULT_TOP_K = 3
