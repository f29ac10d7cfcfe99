"""Lazy package exports (PEP 562), so that ``import vggcifar.serving.cli`` and ``vgg-* --help``
do not import torch, onnx or gradio: a package ``__init__`` lists its public names and the
submodule each comes from, and a name is imported on first use.

Standard library only: every command-line module imports this before its command runs.
"""

from __future__ import annotations

import importlib
import sys
import types


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make the names of ``exports`` (``{"Predictor": ".predictor", ...}``) attributes of the
    package ``name``, imported from their submodule on first access.

    Where an exported name is also a submodule's name (``vggcifar.training.evaluate``, the
    function, lives in ``vggcifar/training/evaluate.py``), importing that submodule does not
    replace the exported object, exactly as with an eager ``from .evaluate import evaluate``.
    """
    module = sys.modules[name]
    # The public names are the exports (and the package's own __version__, where it has one).
    module.__all__ = sorted(exports) + [n for n in ("__version__",) if hasattr(module, n)]

    class LazyPackage(types.ModuleType):
        def __getattr__(self, attr):
            source = exports.get(attr)
            if source is None:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
            value = getattr(importlib.import_module(source, name), attr)
            self.__dict__[attr] = value
            return value

        def __dir__(self):
            return sorted(set(self.__dict__) | set(exports))

        def __setattr__(self, attr, value):
            if (attr in exports and isinstance(value, types.ModuleType)
                    and value.__name__ == f"{name}.{attr}" and exports[attr] == f".{attr}"):
                return  # the submodule was imported: keep its exported function as the attribute
            super().__setattr__(attr, value)

    module.__class__ = LazyPackage
