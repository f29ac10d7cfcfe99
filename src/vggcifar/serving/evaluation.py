"""Accuracy of a servable model on a labelled image set, measured the way serving predicts.

Every accuracy figure that the README and the model card quote comes from here (``vgg-eval``):
the images go through the same :class:`~vggcifar.serving.Predictor` backends as ``vgg-predict``
and the demo, so the figure is what a user gets, whatever the model file (checkpoint, shipped
manifest, ONNX, TensorRT engine).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..errors import VggCifarError


def evaluate_predictor(predictor, images: torch.Tensor, labels: torch.Tensor,
                       batch_size: int = 500, progress: bool = False) -> dict:
    """Classify ``images`` one view and with flip TTA, in one pass.

    Args:
        predictor: a :class:`~vggcifar.serving.Predictor` (its own ``tta`` setting is ignored:
            both figures are measured).
        images: ``[N, 3, S, S]`` uint8 pixels (``S`` = the model's input size).
        labels: ``[N]`` int64 class indices in the model's class order.
        batch_size: images per model call.
        progress: show a progress bar on stderr.
    Returns:
        ``{"n", "accuracy", "accuracy_tta", "per_class", "per_class_tta",
        "confusion", "confusion_tta"}``; accuracies are fractions, ``per_class*`` map class
        name -> recall, ``confusion*`` are ``[C][C]`` lists of counts (rows: true class,
        columns: predicted).
    Raises:
        VggCifarError: shapes that do not fit the model, or non-finite model outputs.
    """
    from tqdm.auto import tqdm

    n = int(labels.numel())
    if images.dim() != 4 or images.shape[0] != n or images.dtype != torch.uint8:
        raise VggCifarError(f"expected [N, 3, S, S] uint8 images and N labels, got "
                            f"{images.dtype} {list(images.shape)} and {n} labels")
    if n == 0:
        raise VggCifarError("no images to evaluate")
    c = len(predictor.class_names)
    y = labels.numpy().astype(np.int64)
    if y.min() < 0 or y.max() >= c:
        raise VggCifarError(f"labels outside the model's {c} classes")
    confusion = np.zeros((2, c, c), dtype=np.int64)
    x_all = images.numpy()
    with tqdm(total=n, unit="img", desc="evaluating", file=sys.stderr, disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for i in range(0, n, batch_size):
            x = x_all[i:i + batch_size]
            views = predictor.view_probabilities(x)
            for k, probs in enumerate(views):
                if not np.isfinite(probs).all():
                    raise VggCifarError("the model returned non-finite outputs (NaN or inf): "
                                        "its weights are damaged")
                np.add.at(confusion[k], (y[i:i + batch_size], probs.argmax(1)), 1)
            bar.update(len(x))
    names = list(predictor.class_names)
    out = {"n": n}
    for k, suffix in enumerate(("", "_tta")):
        m = confusion[k]
        recall = m.diagonal() / np.maximum(m.sum(1), 1)
        out["accuracy" + suffix] = float(m.trace()) / n
        out["per_class" + suffix] = {name: float(r) for name, r in zip(names, recall)}
        out["confusion" + suffix] = m.tolist()
    return out


def format_report(result: dict, class_names, model_line: str, data_line: str) -> str:
    """Human-readable report: headline accuracies, per-class table, confusion matrix."""
    lines = [f"model: {model_line}", f"data:  {data_line}", "",
             f"accuracy, one view (vgg-predict, the demo): {result['accuracy']:.2%}",
             f"accuracy, flip TTA (--tta):                 {result['accuracy_tta']:.2%}", "",
             f"{'class':<12} {'one view':>9} {'flip TTA':>9}"]
    for name in class_names:
        lines.append(f"{name:<12} {result['per_class'][name]:>9.2%} "
                     f"{result['per_class_tta'][name]:>9.2%}")
    short = [name[:5] for name in class_names]
    lines += ["", "confusion matrix, one view (rows: true class, columns: predicted)",
              f"{'':<12}" + "".join(f"{s:>6}" for s in short)]
    for name, row in zip(class_names, result["confusion"]):
        lines.append(f"{name:<12}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
