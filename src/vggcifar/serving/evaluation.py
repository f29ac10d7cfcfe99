"""Accuracy and calibration of a servable model on a labelled image set, measured the way serving
predicts.

Every accuracy figure that the README and the model card quote comes from here (``vgg-eval``):
the images go through the same :class:`~vggcifar.serving.Predictor` backends as ``vgg-predict``
and the demo, so the figure is what a user gets, whatever the model file (checkpoint, shipped
manifest, ONNX, TensorRT engine).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..calibration import ECE_BINS, calibration_figures, plot_reliability, softmax
from ..errors import VggCifarError
from ..preprocessing import uint8_to_unit
from .views import VIEW_COUNT, tta_views

# The modes measured, with their keys' suffix in the result and their name in "calibration":
# one view, flip TTA (2 views: the first two of flip-shift's) and flip+shift TTA (6 views).
MODES = (("none", "", "one_view"), ("flip", "_tta", "tta"),
         ("flip-shift", "_flip_shift", "flip_shift"))


def evaluate_predictor(predictor, images: torch.Tensor, labels: torch.Tensor,
                       batch_size: int = 500, progress: bool = False,
                       views: dict | None = None) -> dict:
    """Classify ``images`` one view, with flip TTA and with flip+shift TTA (6 views), in one
    pass, and measure how well the probabilities are calibrated, before and after the model's
    temperature.

    Args:
        predictor: a :class:`~vggcifar.serving.Predictor` (its own ``tta`` setting is ignored:
            every mode is measured).
        images: ``[N, 3, S, S]`` uint8 pixels (``S`` = the model's input size).
        labels: ``[N]`` int64 class indices in the model's class order.
        batch_size: images per model call.
        progress: show a progress bar on stderr.
        views: a dict to fill with the arrays behind the calibration figures, for
            :func:`plot_calibration`: ``labels`` ``[N]`` and, for ``one_view``, ``tta`` and
            ``flip_shift``, ``(before, after)`` ``[N, C]`` probabilities.
    Returns:
        ``{"n", "accuracy", "per_class", "confusion", "ece", "nll", "brier", "calibration"}``
        for one view, the same keys with the suffix ``_tta`` for flip TTA and ``_flip_shift``
        for flip+shift TTA; accuracies are fractions, ``per_class*`` map class
        name -> recall, ``confusion*`` are ``[C][C]`` lists of counts (rows: true class,
        columns: predicted). ``ece``, ``nll``, ``brier`` (``*_tta``) are those of the served
        probabilities (with the model's temperature); ``calibration`` holds ``temperature``,
        ``bins`` and, for ``one_view`` and ``tta``, the figures ``before`` (T = 1) and ``after``
        the temperature (and the same for ``flip_shift``). Everything is JSON-able.
    Raises:
        VggCifarError: shapes that do not fit the model, or non-finite model outputs.
    """
    n = int(labels.numel())
    if (images.dim() != 4 or images.shape[0] != n or images.shape[1] != 3
            or images.dtype != torch.uint8):
        raise VggCifarError(f"expected [N, 3, S, S] uint8 images and N labels, got "
                            f"{images.dtype} {list(images.shape)} and {n} labels")
    if n == 0:
        raise VggCifarError("no images to evaluate")
    c = len(predictor.class_names)
    y = labels.numpy().astype(np.int64)
    if y.min() < 0 or y.max() >= c:
        raise VggCifarError(f"labels outside the model's {c} classes")
    logits = _view_logits(predictor, images.numpy(), batch_size, progress)
    t = predictor.info.temperature
    probs = {}  # "before"/"after" -> one [N, C] array per mode of MODES
    for name, temp in (("before", 1.0), ("after", t)):
        p = np.stack([softmax(z, temp, np.float32) for z in logits])  # as served
        # TTA as Predictor serves it: the mean of the views' probabilities.
        probs[name] = [p[:VIEW_COUNT[mode]].mean(0) for mode, _, _ in MODES]
    out = {"n": n}
    names = list(predictor.class_names)
    for k, (_, suffix, _) in enumerate(MODES):
        m = np.zeros((c, c), dtype=np.int64)
        np.add.at(m, (y, probs["after"][k].argmax(1)), 1)
        recall = m.diagonal() / np.maximum(m.sum(1), 1)
        out["accuracy" + suffix] = float(m.trace()) / n
        out["per_class" + suffix] = {name: float(r) for name, r in zip(names, recall)}
        out["confusion" + suffix] = m.tolist()
        out.update({key + suffix: v for key, v in
                    calibration_figures(probs["after"][k], y).items()})
    out["calibration"] = {"temperature": t, "bins": ECE_BINS, **{
        key: {name: calibration_figures(probs[name][k], y) for name in ("before", "after")}
        for k, (_, _, key) in enumerate(MODES)}}
    if views is not None:
        views.update({"labels": y, **{key: (probs["before"][k], probs["after"][k])
                                      for k, (_, _, key) in enumerate(MODES)}})
    return out


def _view_logits(predictor, x_all: np.ndarray, batch_size: int, progress: bool) -> np.ndarray:
    """``[6, N, C]`` float32 logits of the 6 flip+shift views of ``x_all`` ``[N, 3, S, S]``
    uint8 (the first is the image itself, the second its mirror image).

    Raises:
        VggCifarError: non-finite model outputs.
    """
    from tqdm.auto import tqdm

    n, c = len(x_all), len(predictor.class_names)
    logits = np.zeros((VIEW_COUNT["flip-shift"], n, c), dtype=np.float32)
    with tqdm(total=n, unit="img", desc="evaluating", file=sys.stderr, disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for i in range(0, n, batch_size):
            x = x_all[i:i + batch_size]
            for k, view in enumerate(tta_views(x, "flip-shift")):
                z = predictor.backend.outputs(uint8_to_unit(view))[0]
                if not np.isfinite(z).all():
                    raise VggCifarError("the model returned non-finite outputs (NaN or inf): "
                                        "its weights are damaged")
                logits[k, i:i + len(x)] = z
            bar.update(len(x))
    return logits


def plot_calibration(views: dict, path, title: str) -> None:
    """Write the reliability diagram from the ``views`` :func:`evaluate_predictor` filled: one
    view and flip TTA, each before and after the model's temperature."""
    plot_reliability({"one view": (*views["one_view"], views["labels"]),
                      "flip TTA": (*views["tta"], views["labels"])}, path, title)


def format_report(result: dict, class_names, model_line: str, data_line: str) -> str:
    """Human-readable report: headline accuracies, calibration, per-class table, confusion
    matrix."""
    cal = result["calibration"]
    lines = [f"model: {model_line}", f"data:  {data_line}", "",
             f"accuracy, one view (vgg-predict, the demo): {result['accuracy']:.2%}",
             f"accuracy, flip TTA (--tta):                 {result['accuracy_tta']:.2%}",
             f"accuracy, flip+shift TTA (--tta-shift):     {result['accuracy_flip_shift']:.2%}",
             "",
             f"calibration (ECE {cal['bins']} bins, NLL, Brier), temperature "
             f"T = {cal['temperature']:.4g}:",
             f"{'':<10} {'':<9} {'ECE':>7} {'NLL':>7} {'Brier':>7}"]
    for mode, label in (("one_view", "one view"), ("tta", "flip TTA"),
                        ("flip_shift", "flip+shift")):
        for when in ("before", "after"):
            f = cal[mode][when]
            lines.append(f"{label:<10} {when + ' T':<9} {f['ece']:>7.4f} {f['nll']:>7.4f} "
                         f"{f['brier']:>7.4f}")
    lines += ["", f"{'class':<12} {'one view':>9} {'flip TTA':>9}"]
    for name in class_names:
        lines.append(f"{name:<12} {result['per_class'][name]:>9.2%} "
                     f"{result['per_class_tta'][name]:>9.2%}")
    short = [name[:5] for name in class_names]
    lines += ["", "confusion matrix, one view (rows: true class, columns: predicted)",
              f"{'':<12}" + "".join(f"{s:>6}" for s in short)]
    for name, row in zip(class_names, result["confusion"]):
        lines.append(f"{name:<12}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
