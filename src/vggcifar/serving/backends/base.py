"""What every backend shares: the :class:`Backend` interface, the :class:`ModelInfo` it exposes,
and how that info is read from a checkpoint's or an export's metadata."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import VggCifarError
from ...preprocessing import Preprocessing, uint8_to_unit
from ...calibration import softmax
from ...runtime.contract import (REQUIRED_METADATA, ModelFileError, decode_metadata,
                                 trained_with_tta)
from ...source import ModelSource
from ..names import check_tta, tta_label


@dataclass
class ModelInfo:
    """What the page and the CLI say about the loaded model.

    ``format`` is the file's :func:`~vggcifar.runtime.contract.model_kind` ("checkpoint",
    "shipped", "onnx" or "tensorrt"). ``test_accuracy`` is the one-view figure (what plain
    serving delivers); ``test_accuracy_tta`` the figure with flip test-time augmentation
    (``Predictor(tta=True)``), ``test_accuracy_flip_shift`` with the 6 views of
    ``tta="flip-shift"``. Each is ``None`` when the model file does not record it.
    """

    name: str
    path: str
    format: str
    preproc: Preprocessing
    arch: str | None = None
    test_accuracy: float | None = None
    test_accuracy_tta: float | None = None
    test_accuracy_flip_shift: float | None = None
    precision: str | None = None
    # Temperature scaling: probabilities = softmax(logits / temperature); 1.0 for model files
    # that record none (fitted on held-out images, see vggcifar.calibration).
    temperature: float = 1.0

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.preproc.class_names

    def accuracy(self, tta: bool | str = False) -> float | None:
        """The test accuracy of the serving mode ``tta`` (a TTA mode or a bool, see
        :func:`~vggcifar.serving.views.check_tta`; ``None``: not recorded)."""
        return {"none": self.test_accuracy, "flip": self.test_accuracy_tta,
                "flip-shift": self.test_accuracy_flip_shift}[check_tta(tta)]

    def accuracy_text(self, tta: bool | str = False) -> str:
        """e.g. ``test accuracy 90.42% (one view)`` or ``... (flip TTA)``."""
        acc, mode = self.accuracy(tta), tta_label(tta)
        return f"test accuracy {acc:.2%} ({mode})" if acc is not None else \
            f"test accuracy unknown ({mode})"

    def describe(self, tta: bool | str = False) -> str:
        """One line: ``name (arch, test accuracy 93.10% (one view))``, the figure of the chosen
        serving mode."""
        bits = [self.arch or "unknown arch"]
        if self.precision:
            bits.append(self.precision)
        bits.append(self.accuracy_text(tta))
        return f"{self.name} ({', '.join(bits)})"

    def present_as(self, path, kind: str) -> None:
        """Show this model as the file ``path`` of ``kind`` (an ONNX export made from a
        checkpoint is presented as that checkpoint); shipped weights are stored fp16."""
        self.name, self.path, self.format = display_name(path), str(path), kind
        if kind == "shipped":
            self.precision = SHIPPED_PRECISION


# The shipped model's weights are stored in fp16 and run in fp32.
SHIPPED_PRECISION = "fp16 weights"


class Backend:
    """One runtime serving one model file.

    ``name`` is the backend (``torch``, ``onnx``, ``tensorrt``...); ``device`` says where it runs
    (``cpu``, ``cuda:0``...); ``info`` describes the model.

    A backend implements :meth:`logits` (the ONNX contract: float RGB in [0, 1] in, logits out);
    probabilities are derived here, once for every runtime, with the model's temperature.
    """

    name = "?"
    device = "cpu"
    info: ModelInfo

    @classmethod
    def open(cls, source: ModelSource, device: str | None) -> "Backend":
        """Open ``source``, a model file resolved once by :func:`create_backend` (of a kind the
        backend's table row lists), on ``device`` (``None``/``auto``, ``cpu``, ``cuda[:N]``)."""
        return cls(source.path, device)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` float32 RGB in [0, 1] -> ``[N, num_classes]`` float32 logits (before
        the temperature)."""
        raise NotImplementedError

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[N, 3, S, S]`` float32 RGB in [0, 1] -> ``(logits, probabilities)``, each
        ``[N, num_classes]`` float32; probabilities = softmax(logits / temperature)."""
        z = check_outputs(self.logits(x), len(self.info.class_names), self.info.path, len(x))
        return z, softmax(z, self.info.temperature, np.float32)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` uint8 RGB -> ``[N, num_classes]`` float32 probabilities."""
        return self.outputs(uint8_to_unit(pixels))[1]

    def describe(self) -> str:
        return f"{self.name} ({self.device})"


def display_name(path: str | os.PathLike) -> str:
    """``run/best.pt`` for run checkpoints (the file name alone says little), else the name."""
    p = Path(path)
    if p.stem in ("best", "last") and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name


def served_accuracy(meta: dict) -> tuple[float | None, float | None]:
    """``(one view, flip TTA)`` test accuracies recorded for a model, ``None`` where unknown.

    A run's ``test_accuracy`` is its TTA figure when its config used flip TTA (exports record
    that as ``test_accuracy_with_tta``), else the one-view figure; ``test_accuracy_one_view`` is
    always one view.
    """
    def number(v):  # a fraction in [0, 1]; inf, nan, 5.0 or a 400-digit int are "unknown"
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return None
        try:
            v = float(v)
        except OverflowError:
            return None
        return v if 0.0 <= v <= 1.0 else None  # nan fails both comparisons

    acc, one = number(meta.get("test_accuracy")), number(meta.get("test_accuracy_one_view"))
    if trained_with_tta(meta) or meta.get("test_accuracy_with_tta") is True:
        return one, acc
    return (one if one is not None else acc), None


def flip_shift_accuracy(meta: dict) -> float | None:
    """The recorded test accuracy with the 6 views of ``flip-shift`` TTA, ``None`` if none."""
    v = meta.get("test_accuracy_flip_shift")
    try:
        v = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if 0.0 <= v <= 1.0 else None


def info_from_export_metadata(meta: dict, path, kind: str) -> ModelInfo:
    """Build :class:`ModelInfo` from ONNX ``metadata_props`` or a TensorRT sidecar (string
    values, see :mod:`vggcifar.runtime.contract`).

    Raises:
        ModelFileError: ``class_names``, ``mean`` or ``std`` missing (not a vggcifar export), or
            values out of bounds (see :func:`vggcifar.checkpoint.check_preprocessing`).
    """
    from ...checkpoint import check_preprocessing
    from ...checkpoint_file import temperature_of

    m = decode_metadata(meta)
    missing = [k for k in REQUIRED_METADATA if not m.get(k)]
    if missing:
        raise ModelFileError(
            f"{path} lacks the vggcifar metadata {', '.join(missing)}; "
            "export the model with vgg-export")
    pre = {"class_names": m["class_names"], "mean": m["mean"], "std": m["std"],
           "input_size": m.get("input_size") or 32}
    try:
        check_preprocessing(pre, None, f"{path} metadata")
        temperature = temperature_of(m, f"{path} metadata")
    except VggCifarError as e:
        raise ModelFileError(str(e)) from e
    one, tta = served_accuracy(m)
    return ModelInfo(
        name=display_name(path), path=str(path), format=kind, preproc=Preprocessing.from_dict(pre),
        arch=_token(m.get("arch")), test_accuracy=one, test_accuracy_tta=tta,
        test_accuracy_flip_shift=flip_shift_accuracy(m), precision=_token(m.get("precision")),
        temperature=temperature)


def _token(v) -> str | None:
    """A metadata value that is only shown (``arch``, ``precision``): a plain word such as
    ``vgg16`` or ``fp16``, else unknown (None); Markdown links or escape codes in a crafted
    file never reach a page or a terminal."""
    return v if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", v) else None


def check_outputs(y: np.ndarray, num_classes: int, path,
                  images: int | None = None) -> np.ndarray:
    """``y`` ``[N, C]`` as float32, or :class:`ModelFileError` when ``C`` is not the number of
    class names in the metadata (a graph with a symbolic size can only be checked per run), or
    ``N`` is not ``images`` (a graph that answers ``[1, C]`` for any batch would pair answers
    with the wrong images), or the values are not real numbers."""
    if y.ndim != 2 or y.shape[1] != num_classes:
        raise ModelFileError(f"{path} gave {y.shape[1:]} outputs per image, but its "
                             f"metadata names {num_classes} classes")
    if images is not None and y.shape[0] != images:
        raise ModelFileError(f"{path} gave {y.shape[0]} rows of outputs for {images} images")
    if y.dtype.kind not in "fiu":
        raise ModelFileError(f"{path} gives {y.dtype} outputs, not numbers")
    return y.astype(np.float32, copy=False)
