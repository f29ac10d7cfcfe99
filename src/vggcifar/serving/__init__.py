"""Serving: the :class:`Predictor` shared by ``vgg-predict`` (:mod:`.cli`) and the Gradio page
``vgg-demo`` (:mod:`.demo`)::

    from vggcifar.serving import Predictor
    p = Predictor("runs/vgg16/best.pt")          # .pt, shipped .json, .onnx or TensorRT engine
    pred = p.predict("cat.jpg", top_k=3)          # pred.label, pred.top_k, pred.ms, pred.notes
    pred = p.predict("wide.jpg", fit="crop", tta=True)  # centre square, flip TTA, this call only
    for pred in p.predict_files(paths, batch_size=64):
        ...                                       # pred.error is set for unreadable files
"""

# Imported on first use (see vggcifar._lazy): `vgg-* --help` must not import torch.
from .._lazy import lazy_package

_EXPORTS = {
    "BACKENDS": ".names",
    "ModelInfo": ".backends",
    "create_backend": ".backends",
    "FITS": ".names",
    "Prediction": ".predictor",
    "Predictor": ".predictor",
    "fit_image": ".predictor",
    "image_to_pixels": ".predictor",
    "load_pixels": ".predictor",
}
lazy_package(__name__, _EXPORTS)

