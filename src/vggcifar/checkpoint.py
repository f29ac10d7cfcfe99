"""Checkpoints: saving atomically, loading safely, and rebuilding a ready-to-use model.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` accepts (format
version 2; version-1 files still load, see :mod:`vggcifar.checkpoint_file`):

    format, format_version       "vggcifar-checkpoint", FORMAT_VERSION
    arch, model_kwargs           registry name and the builder's options (JSON-able), so that
                                 ``create_model(arch, num_classes, **model_kwargs)`` rebuilds it
    num_classes
    preprocessing                Preprocessing.to_dict(): mean, std, input_size, class_names
    state_dict                   model weights (fp32, or fp16 for the compact shipped model)
    config                       the resolved training options (JSON-able)
    metrics                      one dict per epoch
    epoch, test_accuracy, test_accuracy_one_view, versions, created
    test_accuracy_flip_shift     (optional) with 6-view flip+shift TTA: the shipped model's,
                                 measured by vgg-eval (scripts/ship_model.py)
    temperature                  temperature scaling: probabilities = softmax(logits / T), fitted
                                 on held-out images (absent in older files: T = 1)
    calibration                  how T was chosen (images, NLL/ECE before and after, or why 1)
    training_state (last.pt)     optimizer, scheduler, RNG states, best so far: for --resume
"""

from __future__ import annotations

import os

import torch

from .checks import MAX_CLASSES, class_names_problem
from .checkpoint_file import FORMAT, FORMAT_VERSION, model_spec, temperature_of
from .errors import VggCifarError
from .io import atomic_write
from .models import create_model, is_finite_number, list_models, model_entry, show_value
from .preprocessing import INPUT_SIZE, Preprocessing
from .source import ModelSource, resolve_source

META_KEYS = ("arch", "model_kwargs", "num_classes", "preprocessing", "config", "metrics",
             "epoch", "test_accuracy", "test_accuracy_one_view", "test_accuracy_flip_shift",
             "versions", "created", "format_version", "calibration")
# MAX_CLASSES (checks.py) bounds what a checkpoint may ask us to build, checked before anything
# is allocated (each architecture bounds its own options through its registry validator).


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Atomically save a checkpoint dict built by :func:`make_checkpoint`."""
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def make_checkpoint(model: torch.nn.Module, *, arch: str, num_classes: int,
                    preprocessing: Preprocessing, model_kwargs: dict | None = None,
                    config: dict | None = None, metrics: list | None = None, epoch: int = 0,
                    test_accuracy: float | None = None, training_state: dict | None = None,
                    versions: dict | None = None, created: str | None = None,
                    test_accuracy_one_view: float | None = None, temperature: float = 1.0,
                    calibration: dict | None = None, **more_model_kwargs) -> dict:
    """Assemble the checkpoint dict (see module docstring).

    ``model_kwargs`` are the options ``model`` was built with (``create_model(arch, num_classes,
    **model_kwargs)``); further keyword arguments (``head=``, ``width=``, ... as callers of
    format version 1 passed them) are added to them. ``test_accuracy`` is the run's figure (with
    flip TTA when the run used it); ``test_accuracy_one_view`` is without TTA, i.e. what
    serving, which classifies one view, delivers. ``temperature`` is the fitted ``T`` (1: none)
    and ``calibration`` a JSON-able record of how it was chosen.
    """
    model = unwrap_model(model)
    kwargs = {**(model_kwargs or {}), **more_model_kwargs}
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": arch, "model_kwargs": kwargs, "num_classes": int(num_classes),
        "preprocessing": preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config or {}, "metrics": metrics or [], "epoch": int(epoch),
        "test_accuracy": test_accuracy, "test_accuracy_one_view": test_accuracy_one_view,
        "versions": versions or {}, "created": created,
        "temperature": float(temperature), "calibration": calibration or {},
    }
    if training_state is not None:
        ckpt["training_state"] = training_state
    return ckpt


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def check_preprocessing(pre, num_classes: int | None, where="model") -> None:
    """Check a preprocessing description (:meth:`Preprocessing.to_dict` form, from a checkpoint
    or an export's metadata): ``class_names`` a list of 1..MAX_CLASSES names (``num_classes``
    of them when given), ``mean`` three finite numbers, ``std`` three positive ones, and
    ``input_size`` 32 (the networks here are built for 32x32 input).

    Raises:
        VggCifarError: naming the first value that is wrong.
    """
    def bad(what: str):
        raise VggCifarError(f"{where}: {what}; the file is damaged or was not written by vggcifar")

    if not isinstance(pre, dict):
        bad("no preprocessing description")
    names = pre.get("class_names")
    if (not isinstance(names, (list, tuple)) or not 1 <= len(names) <= MAX_CLASSES
            or not all(isinstance(c, str) for c in names)):
        bad(f"class_names is not a list of 1 to {MAX_CLASSES} names")
    if (problem := class_names_problem(list(names))) is not None:
        bad(problem)  # they are printed to terminals and shown on pages
    if num_classes is not None and len(names) != num_classes:
        bad(f"{len(names)} class names for a model with {num_classes} outputs")
    for key in ("mean", "std"):
        vals = pre.get(key)
        if not (isinstance(vals, (list, tuple)) and len(vals) == 3
                and all(is_finite_number(v) for v in vals)):
            bad(f"{key} is not three finite numbers")
    if not all(v > 0 for v in pre["std"]):
        bad("std has a value <= 0")
    size = pre.get("input_size", INPUT_SIZE)
    if size != INPUT_SIZE:
        bad(f"input size {show_value(size)}; these networks take {INPUT_SIZE}x{INPUT_SIZE} images")


def check_architecture(ckpt: dict, where="checkpoint") -> dict:
    """Check a checkpoint's description of its network against what vggcifar builds, before
    anything is allocated: a registered ``arch`` whose validator accepts ``model_kwargs`` (VGG:
    known ``head``, ``0 < width <= 4``, dropout in [0, 1)), ``1 <= num_classes <= MAX_CLASSES``,
    one class name per output, 32x32 input, three finite means and positive standard
    deviations, and ``state_dict`` a dict of tensors.

    Returns:
        the complete model kwargs (stored ones plus the builder's defaults).

    Raises:
        VggCifarError: naming the first value that is out of bounds.
    """
    def bad(what: str):
        raise VggCifarError(f"{where}: {what}; the file is damaged or was not written by vggcifar")

    arch, kwargs = model_spec(ckpt)
    if not isinstance(arch, str) or arch.lower() not in list_models():
        bad(f"unknown architecture {show_value(arch)} (known: {', '.join(list_models())})")
    entry = model_entry(arch)
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        bad("model_kwargs is not a dict of options")
    try:
        kwargs = entry.resolve(kwargs)
    except VggCifarError as e:
        bad(str(e))
    n = ckpt.get("num_classes")
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CLASSES):
        bad(f"num_classes {show_value(n)} outside 1..{MAX_CLASSES}")
    check_preprocessing(ckpt.get("preprocessing"), n, where)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad("state_dict is not a dict of tensors")
    return kwargs


def check_weight_shapes(ckpt: dict, kwargs: dict, where="checkpoint") -> None:
    """Compare every weight's shape with what the architecture would build (its registry
    ``shapes``), so a file claiming a larger network than its weights hold is refused before the
    real one is allocated. Architectures registered without ``shapes`` are skipped here (their
    weights are still checked by ``load_state_dict`` after building).

    Raises:
        VggCifarError: a missing, unexpected or wrongly shaped weight (the first one).
    """
    entry = model_entry(ckpt["arch"])
    if entry.shapes is None:
        return
    want = entry.shapes(ckpt["num_classes"], **kwargs)
    got = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if want != got:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = [k for k in want if k in got and want[k] != got[k]]
        first = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                 else f"{wrong[0]} is {list(got[wrong[0]])}, expected {list(want[wrong[0]])}")
        options = ", ".join(f"{k} {v:g}" if is_finite_number(v) else f"{k} {v}"
                            for k, v in kwargs.items())
        raise VggCifarError(f"{where}: weights do not match {ckpt['arch']} ({options}, "
                            f"{ckpt['num_classes']} classes): {first}")


def model_from_checkpoint(ckpt: dict, where="checkpoint") -> torch.nn.Module:
    """Rebuild the fp32 model from a checkpoint dict (format version 2 form, as
    :func:`read_checkpoint` returns), in eval mode.

    The description is checked first (:func:`check_architecture`), then every weight's shape
    (:func:`check_weight_shapes`), and only then is the model built.

    Raises:
        VggCifarError: a bad description, or weights that do not fit the architecture.
    """
    kwargs = check_architecture(ckpt, where)
    check_weight_shapes(ckpt, kwargs, where)
    model = create_model(ckpt["arch"], ckpt["num_classes"], **kwargs)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise VggCifarError(f"{where}: weights do not match {ckpt['arch']}: "
                            f"{str(e).splitlines()[0]}") from e
    return model.eval()


def load_checkpoint(path: str | os.PathLike | ModelSource, map_location="cpu"):
    """Load a checkpoint (a path, or a :class:`~vggcifar.source.ModelSource` already resolved,
    whose verified bytes are used as they are) and return ``(model, meta)``.

    ``model`` is in eval mode, on ``map_location``, expecting ``[N, 3, 32, 32]`` normalised input
    and returning ``[N, num_classes]`` logits. ``meta`` holds everything else in the checkpoint
    (arch, model_kwargs, num_classes, preprocessing, config, metrics, test_accuracy, ...) plus
    ``path``, a ``Preprocessing`` object under ``"preproc"`` and the checked ``temperature`` (1.0
    for files without one); read the architecture with
    :func:`model_spec`. The model options also appear at top level (``meta["head"]``), as in
    format version 1, for readers not yet using ``model_kwargs``. A shipped model's ``.json``
    manifest (see :mod:`vggcifar.shipped`) loads the model stored in its parts.
    """
    source = resolve_source(path)
    path = source.path
    ckpt = source.checkpoint()
    model = model_from_checkpoint(ckpt, path).to(map_location)
    meta = {k: ckpt.get(k) for k in META_KEYS}
    for k, v in model_spec(ckpt)[1].items():
        meta.setdefault(k, v)
    meta["temperature"] = temperature_of(ckpt, path)
    meta["path"] = str(path)
    meta["preproc"] = Preprocessing.from_dict(ckpt["preprocessing"])
    return model, meta
