"""VGG model definitions."""

from .vgg import CONFIGS, HEADS, VGG, create_model, list_models

__all__ = ["CONFIGS", "HEADS", "VGG", "create_model", "list_models"]
