"""Serving: the :class:`Predictor` shared by ``vgg-predict`` (:mod:`.cli`) and the Gradio page
``vgg-demo`` (:mod:`.demo`).

    >>> from vggcifar.serving import Predictor
    >>> p = Predictor("runs/vgg16/best.pt", backend="auto")
    >>> p.predict("cat.jpg", top_k=3).top_k
    [('cat', 0.91), ('dog', 0.05), ('frog', 0.01)]
"""

from .backends import BACKENDS, ModelInfo, create_backend
from .predictor import Prediction, Predictor, load_pixels

__all__ = ["BACKENDS", "ModelInfo", "Prediction", "Predictor", "create_backend", "load_pixels"]
