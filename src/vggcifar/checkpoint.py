"""Checkpoints: saving atomically, loading safely, and rebuilding a ready-to-use model.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` accepts:

    format, format_version       "vggcifar-checkpoint", FORMAT_VERSION
    arch, head, width, num_classes, dropout
    preprocessing                Preprocessing.to_dict(): mean, std, input_size, class_names
    state_dict                   model weights (fp32, or fp16 for the compact shipped model)
    config                       the resolved training options (JSON-able)
    metrics                      one dict per epoch
    epoch, test_accuracy, versions, created
    training_state (last.pt)     optimizer, scheduler, RNG states, best so far: for --resume
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch

from .errors import VggCifarError
from .io import atomic_write  # noqa: F401  (re-exported: callers import it from here)
from .models import CONFIGS, HEADS, create_model, list_models
from .preprocessing import INPUT_SIZE, Preprocessing

FORMAT = "vggcifar-checkpoint"
FORMAT_VERSION = 1
META_KEYS = ("arch", "head", "width", "num_classes", "dropout", "preprocessing", "config",
             "metrics", "epoch", "test_accuracy", "test_accuracy_one_view", "versions", "created",
             "format_version")
# Bounds on what a checkpoint may ask us to build, checked before anything is allocated: the
# widest network trained here is width 1; 4 is already a 16x larger model.
MAX_WIDTH = 4.0
MAX_CLASSES = 1000


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Atomically save a checkpoint dict built by :func:`make_checkpoint`."""
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def make_checkpoint(model: torch.nn.Module, *, arch: str, head: str, width: float,
                    num_classes: int, dropout: float, preprocessing: Preprocessing,
                    config: dict | None = None, metrics: list | None = None, epoch: int = 0,
                    test_accuracy: float | None = None, training_state: dict | None = None,
                    versions: dict | None = None, created: str | None = None,
                    test_accuracy_one_view: float | None = None) -> dict:
    """Assemble the checkpoint dict (see module docstring). ``test_accuracy`` is the run's
    figure (with flip TTA when the run used it); ``test_accuracy_one_view`` is without TTA, i.e.
    what serving, which classifies one view, delivers."""
    model = unwrap_model(model)
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": arch, "head": head, "width": float(width), "num_classes": int(num_classes),
        "dropout": float(dropout), "preprocessing": preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config or {}, "metrics": metrics or [], "epoch": int(epoch),
        "test_accuracy": test_accuracy, "test_accuracy_one_view": test_accuracy_one_view,
        "versions": versions or {}, "created": created,
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


def torch_load_reason(e: Exception) -> str:
    """One line saying why ``torch.load`` refused a file.

    torch's message for a file the weights-only loader refuses advises loading it again with
    ``weights_only=False``, which runs any code the file holds; that advice is dropped, and so
    are its links and boilerplate. What is left is the loader's actual finding, e.g.
    ``Unsupported operand 110`` or ``... unsupported GLOBAL posix.system ...``.
    """
    noise = ("weights only load failed", "weights_only", "please file an issue",
             "check the documentation", "trusted source")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not any(n in ln.lower() for n in noise)]
    reason = (keep or [type(e).__name__])[0]
    return reason.split(". ")[0].rstrip(".")[:200]


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and validate a checkpoint dict (weights only, no code execution).

    Raises:
        VggCifarError: missing file, unreadable/corrupt file, or a file that is not a vggcifar
            checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise VggCifarError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise VggCifarError(f"checkpoint {path} is a folder; pass the .pt file inside it")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise VggCifarError(
            f"{path} is not a readable vggcifar checkpoint ({torch_load_reason(e)}); "
            "pass a best.pt/last.pt written by vgg-train") from e
    check_format(ckpt, path)
    return ckpt


def check_format(ckpt, where) -> None:
    """Refuse anything but a vggcifar checkpoint dict of a format version we understand."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VggCifarError(
            f"{where} is not a vggcifar checkpoint (no '{FORMAT}' marker); "
            "pass a best.pt/last.pt written by vgg-train")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise VggCifarError(f"{where} has a malformed checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise VggCifarError(
            f"{where} has checkpoint format {version}, newer than this vggcifar "
            f"understands ({FORMAT_VERSION}); upgrade vggcifar")


def _show(v) -> str:
    """A value from a file, shown briefly (it may be anything, of any length)."""
    return repr(v)[:40]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_preprocessing(pre, num_classes: int | None, where="model") -> None:
    """Check a preprocessing description (:meth:`Preprocessing.to_dict` form, from a checkpoint
    or an export's metadata): ``class_names`` a list of 1..MAX_CLASSES names (``num_classes``
    of them when given), ``mean`` three finite numbers, ``std`` three positive ones, and
    ``input_size`` 32 (five 2x2 pools leave 1x1, which the classifier's input size assumes).

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
    if num_classes is not None and len(names) != num_classes:
        bad(f"{len(names)} class names for a model with {num_classes} outputs")
    for key in ("mean", "std"):
        vals = pre.get(key)
        if not (isinstance(vals, (list, tuple)) and len(vals) == 3
                and all(_is_number(v) for v in vals)):
            bad(f"{key} is not three finite numbers")
    if not all(v > 0 for v in pre["std"]):
        bad("std has a value <= 0")
    size = pre.get("input_size", INPUT_SIZE)
    if size != INPUT_SIZE:
        bad(f"input size {_show(size)}; these VGG networks take {INPUT_SIZE}x{INPUT_SIZE} images")


def check_architecture(ckpt: dict, where="checkpoint") -> None:
    """Check a checkpoint's description of its network against what vggcifar builds, before
    anything is allocated: a known ``arch`` and ``head``, ``0 < width <= MAX_WIDTH``,
    ``1 <= num_classes <= MAX_CLASSES``, one class name per output, 32x32 input (five 2x2 pools
    leave 1x1, which the classifier's input size assumes), three finite means and positive
    standard deviations, and ``state_dict`` a dict of tensors.

    Raises:
        VggCifarError: naming the first value that is out of bounds.
    """
    def bad(what: str):
        raise VggCifarError(f"{where}: {what}; the file is damaged or was not written by vggcifar")

    arch, head = ckpt.get("arch"), ckpt.get("head", "mlp")
    if not isinstance(arch, str) or arch.lower() not in list_models():
        bad(f"unknown architecture {_show(arch)} (known: {', '.join(list_models())})")
    if head not in HEADS:
        bad(f"unknown head {_show(head)} (known: {', '.join(HEADS)})")
    width, dropout = ckpt.get("width", 1.0), ckpt.get("dropout", 0.2)
    if not (_is_number(width) and 0 < width <= MAX_WIDTH):
        bad(f"width {_show(width)} outside (0, {MAX_WIDTH:g}]")
    if not (_is_number(dropout) and 0 <= dropout < 1):
        bad(f"dropout {_show(dropout)} outside [0, 1)")
    n = ckpt.get("num_classes")
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CLASSES):
        bad(f"num_classes {_show(n)} outside 1..{MAX_CLASSES}")
    check_preprocessing(ckpt.get("preprocessing"), n, where)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad("state_dict is not a dict of tensors")


def vgg_shapes(arch: str, head: str, width: float, num_classes: int) -> dict[str, tuple]:
    """The ``state_dict`` shapes of :class:`vggcifar.models.VGG`, computed from its layer table
    without building it (building even on the ``meta`` device costs seconds of first-use
    imports). Mirrors ``VGG.__init__``; ``tests/test_serving_safety.py`` checks it against real
    models."""
    shapes: dict[str, tuple] = {}
    i, in_ch = 0, 3
    for v in CONFIGS[arch.lower()]:
        if v == "M":
            i += 1
            continue
        out = max(1, int(round(v * width)))
        shapes[f"features.{i}.weight"], shapes[f"features.{i}.bias"] = (out, in_ch, 3, 3), (out,)
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"features.{i + 1}.{k}"] = (out,)
        shapes[f"features.{i + 1}.num_batches_tracked"] = ()
        i, in_ch = i + 3, out  # conv, batchnorm, relu
    hidden = max(1, int(round(512 * width)))
    linears = ([(0, in_ch, hidden), (3, hidden, hidden), (6, hidden, num_classes)]
               if head == "mlp" else [(0, in_ch, num_classes)])
    for j, n_in, n_out in linears:
        shapes[f"classifier.{j}.weight"], shapes[f"classifier.{j}.bias"] = (n_out, n_in), (n_out,)
    return shapes


def model_from_checkpoint(ckpt: dict, where="checkpoint") -> torch.nn.Module:
    """Rebuild the fp32 model from a checkpoint dict, in eval mode.

    The description is checked first (:func:`check_architecture`), then every weight's shape is
    compared with :func:`vgg_shapes`, so a file claiming a larger network than its weights hold
    is refused before the real one is allocated.

    Raises:
        VggCifarError: a bad description, or weights that do not fit the architecture.
    """
    check_architecture(ckpt, where)
    kwargs = dict(num_classes=ckpt["num_classes"], head=ckpt.get("head", "mlp"),
                  width=ckpt.get("width", 1.0), dropout=ckpt.get("dropout", 0.2))
    want = vgg_shapes(ckpt["arch"], kwargs["head"], kwargs["width"], kwargs["num_classes"])
    got = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if want != got:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = [k for k in want if k in got and want[k] != got[k]]
        first = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                 else f"{wrong[0]} is {list(got[wrong[0]])}, expected {list(want[wrong[0]])}")
        raise VggCifarError(f"{where}: weights do not match {ckpt['arch']} "
                            f"(width {kwargs['width']:g}, {kwargs['num_classes']} classes): "
                            f"{first}")
    model = create_model(ckpt["arch"], **kwargs)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise VggCifarError(f"{where}: weights do not match {ckpt['arch']}: "
                            f"{str(e).splitlines()[0]}") from e
    return model.eval()


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint and return ``(model, meta)``.

    ``model`` is in eval mode, on ``map_location``, expecting ``[N, 3, 32, 32]`` normalised input
    and returning ``[N, num_classes]`` logits. ``meta`` holds everything else in the checkpoint
    (arch, head, preprocessing, config, metrics, test_accuracy, ...) plus ``path`` and a
    ``Preprocessing`` object under ``"preproc"``. Files ending in ``.json`` are treated as the
    manifest of a shipped model stored in parts (see :mod:`vggcifar.shipped`).
    """
    path = Path(path)
    if path.suffix == ".json":
        from .shipped import read_shipped
        ckpt = read_shipped(path)
    else:
        ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(map_location)
    meta = {k: ckpt.get(k) for k in META_KEYS}
    meta["path"] = str(path)
    meta["preproc"] = Preprocessing.from_dict(ckpt["preprocessing"])
    return model, meta


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
