"""The shipped CIFAR-10 model, ready to use: :func:`load_pretrained` and the package's public
:func:`create_model`, which returns it for ``pretrained=True``.

Above :mod:`vggcifar.checkpoint` and :mod:`vggcifar.shipped` (it needs both), so the model
registry below them never has to import upwards.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint
from .checkpoint_file import model_spec
from .errors import VggCifarError
from .models import create_model as create_fresh_model
from .models import model_entry
from .shipped import shipped_manifest


def load_pretrained(map_location="cpu"):
    """The shipped model, verified by sha256: ``(model, meta)`` as from
    :func:`vggcifar.load_checkpoint` (model in eval mode, ``[N, 3, 32, 32]`` normalised input ->
    ``[N, 10]`` logits; ``meta["preproc"]`` holds mean/std and class names)."""
    return load_checkpoint(shipped_manifest(), map_location=map_location)


def create_model(name: str, num_classes: int = 10, pretrained: bool = False, **kwargs):
    """Build a network by name (:func:`vggcifar.models.create_model`: freshly initialised,
    ``[N, 3, 32, 32]`` -> ``[N, num_classes]`` logits).

    With ``pretrained=True`` it returns the shipped CIFAR-10 model instead (verified by sha256,
    in eval mode), which must be this architecture with these options (defaults filled in) and
    class count.

    Raises:
        VggCifarError: unknown name or option, or ``pretrained=True`` for another network than
            the shipped one.
    """
    if not pretrained:
        return create_fresh_model(name, num_classes, **kwargs)
    entry = model_entry(name)
    asked = entry.resolve(kwargs)
    model, meta = load_pretrained()
    arch, shipped_kwargs = model_spec(meta)
    shipped = model_entry(arch).resolve(shipped_kwargs)
    if (entry.name, num_classes, asked) != (arch, meta["num_classes"], shipped):
        def describe(kw: dict) -> str:
            return ", ".join(f"{k}={v!r}" for k, v in kw.items())
        raise VggCifarError(
            f"the shipped pretrained model is {arch} ({describe(shipped)}, {meta['num_classes']} "
            f"classes); create_model({name!r}, num_classes={num_classes}, {describe(asked)}, "
            "pretrained=True) asks for another")
    return model
