"""Model definitions and the registry that builds them by name.

Importing this package registers every architecture below (each module registers itself).
"""

from . import vgg  # noqa: F401  (imported for its side effect: registers vgg11/13/16/19)
from .registry import (ModelEntry, create_model, is_finite_number, list_models, model_entry,
                       register_model, show_value, unregister_model)
from .vgg import CONFIGS, HEADS, MAX_WIDTH, VGG, check_vgg_kwargs, vgg_shapes

__all__ = ["CONFIGS", "HEADS", "MAX_WIDTH", "VGG", "ModelEntry", "check_vgg_kwargs",
           "create_model", "is_finite_number", "list_models", "model_entry", "register_model",
           "show_value", "unregister_model", "vgg_shapes"]
