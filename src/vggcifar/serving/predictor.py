"""The Predictor: one object shared by ``vgg-predict`` and the Gradio page.

It opens a model file with a backend (see :mod:`.backends`), turns images into the model's input
exactly as training did (:func:`vggcifar.images.open_image` and
:func:`vggcifar.images.pil_to_uint8`), and returns the top-k classes with probabilities and the
time taken.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import VggCifarError
from ..images import open_image, pil_to_uint8
from .backends import Backend, ModelInfo, create_backend


@dataclass
class Prediction:
    """The result for one image.

    ``ms`` is the time spent on this image: its decoding plus its share of the batch's model call.
    ``notes`` hold things worth telling the user (e.g. only the first frame of an animation was
    used). When the image could not be read, ``error`` holds a one-line reason and the label
    fields are empty.
    """

    source: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    backend: str = ""
    ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """JSON-able: ``file``, ``label``, ``probability``, ``top_k`` (list of ``{label,
        probability}``), ``backend``, ``ms``, ``notes``; ``error`` instead of a label on failure."""
        if not self.ok:
            return {"file": self.source, "error": self.error, "backend": self.backend}
        return {"file": self.source, "label": self.label,
                "probability": round(self.probability, 6),
                "top_k": [{"label": lab, "probability": round(p, 6)} for lab, p in self.top_k],
                "backend": self.backend, "ms": round(self.ms, 3), "notes": self.notes}


def image_to_pixels(img, size: int = 32, label: str = "image") -> tuple[torch.Tensor, list[str]]:
    """A decoded Pillow image -> ``([3, size, size]`` uint8 tensor, notes``)``, exactly as the
    training data (:func:`vggcifar.images.pil_to_uint8`)."""
    notes = []
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated image with {frames} frames: the first frame was used")
    try:
        return pil_to_uint8(img, size=size), notes
    except (OSError, ValueError) as e:  # e.g. an exotic mode Pillow cannot convert to RGB
        raise VggCifarError(f"{label}: cannot convert to RGB ({e})") from e


def load_pixels(source, size: int = 32, name: str | None = None) -> tuple[torch.Tensor, list[str]]:
    """Decode one image (path, bytes or file object) into model pixels.

    Returns:
        ``([3, size, size]`` uint8 tensor, notes``)``: notes say e.g. that only the first frame
        of an animation was used.
    Raises:
        VggCifarError: unreadable, empty, truncated or oversized images (one-line message).
    """
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    return image_to_pixels(open_image(source, name=name), size, label)


class Predictor:
    """Classify images with a vggcifar model.

    Args:
        model: a ``.pt`` checkpoint, the shipped ``.json`` manifest, an ``.onnx`` export or a
            TensorRT engine (``.engine``/``.plan`` with its ``<engine>.json``).
        backend: ``auto``, ``torch``, ``onnx`` or ``tensorrt`` (see
            :func:`vggcifar.serving.backends.create_backend`).
        device: ``auto``/``None``, ``cpu`` or ``cuda[:N]``.
        workers: threads decoding images in :meth:`predict_files` (Pillow releases the GIL).
        warmup: run one blank image now, so the first real request does not pay for the
            runtime's lazy initialisation (hundreds of ms on CPU) and its timing is honest.

    Class names and preprocessing come from the model file itself.
    """

    def __init__(self, model, backend: str = "auto", device: str | None = None,
                 workers: int | None = None, warmup: bool = True):
        self.backend: Backend = create_backend(model, backend, device)
        self.info: ModelInfo = self.backend.info
        self.class_names = list(self.info.class_names)
        self.input_size = self.info.preproc.input_size
        self.workers = workers or min(8, (os.cpu_count() or 1) * 2)
        if warmup:
            s = self.input_size
            self.backend.run(np.zeros((1, 3, s, s), dtype=np.uint8))

    @property
    def backend_name(self) -> str:
        """e.g. ``torch (cpu)`` or ``onnx (CPUExecutionProvider)``."""
        return self.backend.describe()

    # ---- core ------------------------------------------------------------------------------

    def probabilities(self, pixels) -> np.ndarray:
        """``[N, 3, S, S]`` uint8 (tensor or array) -> ``[N, num_classes]`` float32."""
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.cpu().numpy()
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise VggCifarError(f"expected [N, 3, {self.input_size}, {self.input_size}] uint8 "
                                f"pixels, got {pixels.dtype} {list(pixels.shape)}")
        return self.backend.run(pixels)

    def _top(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        """``[num_classes]`` probabilities -> the ``k`` most likely ``(label, probability)``."""
        k = max(1, min(k, len(probs)))
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]

    # ---- one image -------------------------------------------------------------------------

    def predict(self, source, top_k: int = 3, name: str | None = None) -> Prediction:
        """Classify one image (path, bytes, file object or Pillow image).

        Raises:
            VggCifarError: the image cannot be read (one-line message).
        """
        t0 = time.perf_counter()
        label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
        if hasattr(source, "mode") and hasattr(source, "size"):  # already a Pillow image
            pixels, notes = image_to_pixels(source, self.input_size, label)
        else:
            pixels, notes = load_pixels(source, self.input_size, name=name)
        probs = self.probabilities(pixels[None].numpy())[0]
        ms = (time.perf_counter() - t0) * 1000
        top = self._top(probs, top_k)
        return Prediction(source=label, label=top[0][0], probability=top[0][1], top_k=top,
                          backend=self.backend_name, ms=ms, notes=notes)

    # ---- many files ------------------------------------------------------------------------

    def _decode(self, path) -> tuple[torch.Tensor | None, list[str], str | None, float]:
        t0 = time.perf_counter()
        try:
            pixels, notes = load_pixels(path, self.input_size)
            return pixels, notes, None, time.perf_counter() - t0
        except VggCifarError as e:
            return None, [], str(e), time.perf_counter() - t0

    def predict_files(self, paths: Iterable, top_k: int = 3,
                      batch_size: int = 64) -> Iterator[Prediction]:
        """Classify many files in batches, in order; a file that cannot be read yields a
        :class:`Prediction` with ``error`` set instead of stopping the run.

        Decoding of the next batch overlaps the model call on the current one.
        """
        if batch_size < 1:
            raise VggCifarError("batch size must be at least 1")
        paths = [os.fspath(p) for p in paths]
        batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        if not batches:
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            pending = pool.map(self._decode, batches[0])
            for i, batch in enumerate(batches):
                decoded = list(pending)
                if i + 1 < len(batches):
                    pending = pool.map(self._decode, batches[i + 1])
                yield from self._predict_decoded(batch, decoded, top_k)

    def _predict_decoded(self, batch, decoded, top_k) -> list[Prediction]:
        good = [j for j, d in enumerate(decoded) if d[0] is not None]
        out = [Prediction(source=p, error=d[2], backend=self.backend_name, ms=d[3] * 1000)
               for p, d in zip(batch, decoded)]
        if good:
            x = torch.stack([decoded[j][0] for j in good]).numpy()
            t0 = time.perf_counter()
            probs = self.probabilities(x)
            share = (time.perf_counter() - t0) * 1000 / len(good)
            for row, j in zip(probs, good):
                top = self._top(row, top_k)
                out[j] = Prediction(source=batch[j], label=top[0][0], probability=top[0][1],
                                    top_k=top, backend=self.backend_name,
                                    ms=decoded[j][3] * 1000 + share, notes=decoded[j][1])
        return out
