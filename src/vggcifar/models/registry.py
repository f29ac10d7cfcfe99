"""The model registry: architectures by name, each with the checks that make loading a checkpoint
safe.

An architecture is one module that decorates its builder::

    @register_model("tiny", validate=check_tiny_kwargs, shapes=tiny_shapes)
    def tiny(num_classes: int = 10, channels: int = 8) -> nn.Module: ...

``validate(kwargs)`` raises :class:`VggCifarError` naming the first bad value (the message is the
finding alone, e.g. ``width 40.0 outside (0, 4]``; callers add where it came from).
``shapes(num_classes, **kwargs)`` returns the ``state_dict`` shapes the builder would produce
without building anything, so a checkpoint claiming a huge network is refused before any memory
is allocated. Both are optional: without ``shapes``, checkpoints of that architecture are only
checked against the model after it is built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..checks import is_finite_number
from ..errors import VggCifarError

@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: registry key (lower case).
        builder: ``builder(num_classes=..., **kwargs) -> nn.Module``; ``[N, 3, 32, 32]`` normalised
            input -> ``[N, num_classes]`` logits.
        defaults: the builder's keyword arguments and their defaults (``num_classes`` excluded).
        validate: ``validate(kwargs)`` raising :class:`VggCifarError`, or None.
        shapes: ``shapes(num_classes, **kwargs) -> {state_dict key: shape tuple}``, or None.
    """

    name: str
    builder: Callable[..., Any]
    defaults: dict = field(default_factory=dict)
    validate: Callable[[dict], None] | None = None
    shapes: Callable[..., dict] | None = None

    def resolve(self, kwargs: dict) -> dict:
        """``kwargs`` completed with the builder's defaults and validated.

        Raises:
            VggCifarError: an argument the builder does not take, or one ``validate`` refuses.
        """
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise VggCifarError(f"{self.name} takes no option {unknown[0]!r} (its options: {known})")
        full = {**self.defaults, **kwargs}
        if self.validate is not None:
            self.validate(full)
        return full


_REGISTRY: dict[str, ModelEntry] = {}


def show_value(v) -> str:
    """A value read from a file, shown briefly in a message (it may be anything, of any size)."""
    return repr(v)[:40]


def _keyword_defaults(builder: Callable) -> dict:
    """The builder's keyword parameters with their defaults, ``num_classes`` excluded; every one
    must have a default so that a checkpoint can omit it."""
    out = {}
    for p in inspect.signature(builder).parameters.values():
        if p.name == "num_classes" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise TypeError(f"model builder {builder.__name__}: parameter {p.name!r} needs a default")
        out[p.name] = p.default
    return out


def register_model(name: str, *, validate: Callable[[dict], None] | None = None,
                   shapes: Callable[..., dict] | None = None) -> Callable:
    """Decorator registering ``builder`` under ``name`` (see the module docstring). Registering a
    name again replaces the entry (a test module imported twice stays harmless)."""
    def deco(builder: Callable) -> Callable:
        key = name.lower()
        _REGISTRY[key] = ModelEntry(key, builder, _keyword_defaults(builder), validate, shapes)
        return builder
    return deco


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (a test's temporary architecture); unknown names are
    ignored."""
    _REGISTRY.pop(name.lower(), None)


def list_models() -> list[str]:
    """Registered names, sorted, e.g. ``['vgg11', 'vgg13', 'vgg16', 'vgg19']``."""
    return sorted(_REGISTRY)


def model_entry(name) -> ModelEntry:
    """The registry entry of ``name`` (case-insensitive).

    Raises:
        VggCifarError: not a registered architecture (the message lists the known ones).
    """
    entry = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if entry is None:
        raise VggCifarError(
            f"unknown architecture {str(name)[:40]!r}; choose one of: {', '.join(list_models())}")
    return entry


def create_model(name: str, num_classes: int = 10, **kwargs):
    """Build a freshly initialised network by name.

    Args:
        name: a registered architecture (:func:`list_models`).
        num_classes: outputs.
        **kwargs: the architecture's options (VGG: ``head``, ``width``, ``dropout``).

    Returns:
        ``nn.Module`` in training mode: ``[N, 3, 32, 32]`` -> ``[N, num_classes]`` logits.

    Raises:
        VggCifarError: unknown name, option or out-of-range value.
    """
    entry = model_entry(name)
    return entry.builder(num_classes=num_classes, **entry.resolve(kwargs))
