"""The Predictor: one object shared by ``vgg-predict`` and the Gradio page.

It opens a model file with a backend (see :mod:`.backends`), turns images into the model's input
exactly as training did (:func:`vggcifar.images.decoding` and
:func:`vggcifar.images.pil_to_uint8`), and returns the top-k classes with probabilities and the
time taken.

Two serving choices, each with a per-Predictor default and a per-call override in
:meth:`Predictor.predict`: ``fit`` (``squash`` the whole picture to a square, as training and
``vgg-predict`` do by default, or ``crop`` its largest centred square first: see :func:`fit_image`)
and ``tta`` (test-time augmentation: ``none``, ``flip`` or ``flip-shift``, see :mod:`.views`).
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
from ..images import animation_note, decoding, image_label, pil_to_uint8
from .backends import Backend, ModelInfo, create_backend
from .names import FITS, check_tta
from .views import mean_over_views, tta_views

# NaN or infinite probabilities (damaged weights, or an overflow) are no answer: they are an error
# for that input, never "airplane nan%".
NON_FINITE = ("the model's output is not finite (a non-finite NaN or infinity): its weights are "
              "damaged or overflow on this input")


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
    tta: str = "none"  # the test-time augmentation mode the probabilities come from
    # The [3, S, S] uint8 input the model saw (set by Predictor.predict; not part of to_dict).
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """JSON-able: ``file``, ``label``, ``probability``, ``top_k`` (list of ``{label,
        probability}``), ``backend``, ``tta`` (the mode), ``ms``, ``notes``; ``error`` instead of
        a label on failure."""
        if not self.ok:
            return {"file": self.source, "error": self.error, "backend": self.backend}
        return {"file": self.source, "label": self.label,
                "probability": round(self.probability, 6),
                "top_k": [{"label": lab, "probability": round(p, 6)} for lab, p in self.top_k],
                "backend": self.backend, "tta": self.tta, "ms": round(self.ms, 3),
                "notes": self.notes}


def check_fit(fit: str) -> str:
    """``fit`` if it is one of :data:`FITS`, else a one-line :class:`VggCifarError`."""
    if fit not in FITS:
        raise VggCifarError(f"unknown fit {fit!r}; use one of {', '.join(FITS)}")
    return fit


def fit_image(img, fit: str = "squash"):
    """The part of a decoded Pillow image that becomes the model's input: all of it for
    ``squash``; its largest centred square for ``crop`` (the one place centre-cropping is done,
    for ``vgg-predict --fit crop`` and the demo alike).

    Cropping before the EXIF orientation is applied is safe: a centred square stays the centred
    square under every flip and quarter turn. The first frame of an animation is the one cropped.
    """
    w, h = img.size
    if check_fit(fit) == "squash" or w == h:
        return img
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def image_to_pixels(img, size: int = 32, label: str = "image",
                    fit: str = "squash") -> tuple[torch.Tensor, list[str]]:
    """A decoded Pillow image -> ``([3, size, size]`` uint8 tensor, notes``)``, exactly as the
    training data (:func:`vggcifar.images.pil_to_uint8`), after :func:`fit_image`."""
    note = animation_note(img)
    return pil_to_uint8(fit_image(img, fit), size=size, label=label), [note] if note else []


def load_pixels(source, size: int = 32, name: str | None = None,
                fit: str = "squash") -> tuple[torch.Tensor, list[str]]:
    """Decode one image (path, bytes or file object) into model pixels (``fit``: see
    :func:`fit_image`).

    Returns:
        ``([3, size, size]`` uint8 tensor, notes``)``: notes say e.g. that only the first frame
        of an animation was used.
    Raises:
        VggCifarError: unreadable, empty, truncated or oversized images (one-line message).
    """
    label = image_label(source, name)
    # size lets the decoder reduce big JPEGs while decoding (what a 32x32 model needs); the
    # process-wide decode budget is held until the pixels are made.
    with decoding(source, name=name, size=size) as img:
        return image_to_pixels(img, size, label, fit)


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
        tta: test-time augmentation, a mode of :data:`~vggcifar.serving.names.TTA_MODES` or a
            bool (``True``: ``flip``): each image's probabilities are the mean over its views,
            the image and its mirror image for ``flip``, and those plus four 1-pixel shifts for
            ``flip-shift`` (2 or 6 model inputs per image; ``info.accuracy(tta)`` gives the
            recorded test accuracy of each mode). Default: one view.
        fit: ``squash`` (default, as in training) or ``crop``: how a non-square picture becomes
            the square input (:func:`fit_image`).

    Class names and preprocessing come from the model file itself.
    """

    def __init__(self, model, backend: str = "auto", device: str | None = None,
                 workers: int | None = None, warmup: bool = True, tta: bool | str = False,
                 fit: str = "squash"):
        self.fit = check_fit(fit)
        self.tta = check_tta(tta)
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

    def _check_pixels(self, pixels) -> np.ndarray:
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.cpu().numpy()
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise VggCifarError(f"expected [N, 3, {self.input_size}, {self.input_size}] uint8 "
                                f"pixels, got {pixels.dtype} {list(pixels.shape)}")
        return pixels

    def _mode(self, tta) -> str:
        return self.tta if tta is None else check_tta(tta)

    def view_probabilities(self, pixels) -> tuple[np.ndarray, np.ndarray]:
        """Both classic serving modes at once: ``[N, 3, S, S]`` uint8 -> ``(one view, flip
        TTA)``, each ``[N, num_classes]`` float32 (flip TTA: the mean of the two views')."""
        pixels = self._check_pixels(pixels)
        both = self.backend.run(np.concatenate(tta_views(pixels, "flip")))
        one, mirrored = both[:len(pixels)], both[len(pixels):]
        return one, (one + mirrored) * np.float32(0.5)

    def probabilities(self, pixels, tta: bool | str | None = None) -> np.ndarray:
        """``[N, 3, S, S]`` uint8 (tensor or array) -> ``[N, num_classes]`` float32, the mean over
        the views of TTA mode ``tta`` (``None``: the Predictor's own ``tta``)."""
        return mean_over_views(self.backend.run, self._check_pixels(pixels), self._mode(tta))

    def outputs(self, x: np.ndarray, tta: bool | str | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """The model's contract: ``[N, 3, S, S]`` float32 RGB in [0, 1] -> ``(logits,
        probabilities)``, each ``[N, num_classes]`` float32 (what the exported ONNX graph and
        Triton return). With TTA (``None``: the Predictor's own ``tta``) each is the mean over
        the views.

        Raises:
            VggCifarError: ``x`` is not float32 ``[N, 3, S, S]``.
        """
        s = self.input_size
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape[1:] != (3, s, s):
            raise VggCifarError(f"expected [N, 3, {s}, {s}] float32 in [0, 1], got "
                                f"{getattr(x, 'dtype', type(x).__name__)} "
                                f"{list(getattr(x, 'shape', []))}")
        return mean_over_views(self.backend.outputs, x, self._mode(tta))

    def top_k(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        """``[num_classes]`` probabilities -> the ``k`` most likely ``(label, probability)``,
        most likely first (``k`` is clipped to 1..num_classes)."""
        k = max(1, min(k, len(probs)))
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]

    def prediction(self, source: str, probs: np.ndarray | None, top_k: int = 3, *,
                   ms: float = 0.0, notes: list[str] | None = None,
                   error: str | None = None, tta: bool | str | None = None) -> Prediction:
        """One image's :class:`Prediction` from its ``[num_classes]`` probabilities (decoded and
        classified elsewhere, e.g. by the HTTP API's batcher): the top ``top_k`` classes, or
        ``error`` set when ``error`` is given or the probabilities are not finite; ``tta``: the
        mode they come from (``None``: the Predictor's own)."""
        if error is None and probs is not None and not np.isfinite(probs).all():
            error = f"{source}: {NON_FINITE}"
        if error is not None or probs is None:
            return Prediction(source=source, error=error or f"{source}: no result",
                              backend=self.backend_name, ms=ms)
        top = self.top_k(probs, top_k)
        return Prediction(source=source, label=top[0][0], probability=top[0][1], top_k=top,
                          backend=self.backend_name, ms=ms, notes=list(notes or []),
                          tta=self.tta if tta is None else check_tta(tta))

    # ---- one image -------------------------------------------------------------------------

    def predict(self, source, top_k: int = 3, name: str | None = None, *,
                tta: bool | str | None = None, fit: str | None = None) -> Prediction:
        """Classify one image (path, bytes, file object or Pillow image).

        ``tta`` and ``fit`` choose the serving mode for this call (``None``: the Predictor's
        own), so one Predictor serves every mode. The result's ``pixels`` is the model's input.

        Raises:
            VggCifarError: the image cannot be read, or an unknown ``fit`` (one-line message).
        """
        t0 = time.perf_counter()
        fit = self.fit if fit is None else check_fit(fit)
        label = image_label(source, name)
        if hasattr(source, "mode") and hasattr(source, "size"):  # already a Pillow image
            pixels, notes = image_to_pixels(source, self.input_size, label, fit)
        else:
            pixels, notes = load_pixels(source, self.input_size, name=name, fit=fit)
        pixels = pixels.numpy()
        probs = self.probabilities(pixels[None], tta)[0]
        if not np.isfinite(probs).all():
            raise VggCifarError(f"{label}: {NON_FINITE}")
        ms = (time.perf_counter() - t0) * 1000
        top = self.top_k(probs, top_k)
        return Prediction(source=label, label=top[0][0], probability=top[0][1], top_k=top,
                          backend=self.backend_name, ms=ms, notes=notes, pixels=pixels,
                          tta=self._mode(tta))

    # ---- many files ------------------------------------------------------------------------

    def _decode(self, path) -> tuple[torch.Tensor | None, list[str], str | None, float]:
        t0 = time.perf_counter()
        try:
            pixels, notes = load_pixels(path, self.input_size, fit=self.fit)
            return pixels, notes, None, time.perf_counter() - t0
        except VggCifarError as e:
            return None, [], str(e), time.perf_counter() - t0

    def predict_files(self, paths: Iterable, top_k: int = 3,
                      batch_size: int = 64) -> Iterator[Prediction]:
        """Classify many files in batches, in order, in the Predictor's ``fit`` and ``tta``
        modes; a file that cannot be read yields a :class:`Prediction` with ``error`` set instead
        of stopping the run.

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
                if not np.isfinite(row).all():
                    out[j].error = f"{batch[j]}: {NON_FINITE}"
                    continue
                out[j] = self.prediction(batch[j], row, top_k, ms=decoded[j][3] * 1000 + share,
                                         notes=decoded[j][1])
        return out
