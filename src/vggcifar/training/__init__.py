"""Training: the trainer, its configuration and evaluation."""

from .config import TrainConfig
from .evaluate import evaluate
from .trainer import train

__all__ = ["TrainConfig", "evaluate", "train"]
