"""Serving: the :class:`Predictor` shared by ``vgg-predict`` (:mod:`.cli`) and the Gradio page
``vgg-demo`` (:mod:`.demo`)::

    from vggcifar.serving import Predictor
    p = Predictor("runs/vgg16/best.pt")          # .pt, shipped .json, .onnx or TensorRT engine
    pred = p.predict("cat.jpg", top_k=3)          # pred.label, pred.top_k, pred.ms, pred.notes
    pred = p.predict("wide.jpg", fit="crop", tta=True)  # centre square, flip TTA, this call only
    for pred in p.predict_files(paths, batch_size=64):
        ...                                       # pred.error is set for unreadable files
"""

from .backends import BACKENDS, ModelInfo, create_backend
from .predictor import FITS, Prediction, Predictor, fit_image, image_to_pixels, load_pixels

__all__ = ["BACKENDS", "FITS", "ModelInfo", "Prediction", "Predictor", "create_backend",
           "fit_image", "image_to_pixels", "load_pixels"]
