"""Preprocessing: the single place that defines how pixels become model input.

Training, evaluation, export (the normalisation is baked into the ONNX graph) and serving all use
these definitions, and the values travel with every checkpoint and exported model, so serving can
never disagree with training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Per-channel mean and standard deviation of the CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
INPUT_SIZE = 32


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input: resize to ``input_size`` (antialiased), scale
    to [0, 1], subtract ``mean`` and divide by ``std`` per channel."""

    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    input_size: int = INPUT_SIZE
    class_names: tuple[str, ...] = field(default=CIFAR10_CLASSES)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            input_size=int(d.get("input_size", INPUT_SIZE)),
            class_names=tuple(str(c) for c in d["class_names"]),
        )


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalise a float batch in [0, 1].

    Args:
        x: ``[N, 3, H, W]`` float tensor with values in [0, 1].
    Returns:
        ``[N, 3, H, W]`` tensor ``(x - mean) / std`` in ``x``'s dtype.
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalise pixels in [0, 255] in place: ``x * (1 / (255 std)) - mean / std``.

    Args:
        x: ``[N, C, H, W]`` floating tensor of pixel values 0..255 (any memory format).
    Returns:
        ``x``, now normalised model input.
    """
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    scale, shift = (1.0 / (255.0 * std_t)).to(x.dtype), (-mean_t / std_t).to(x.dtype)
    n, c, h, w = x.shape
    if c > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # Channels are the innermost dimension here: broadcasting a [C] vector over them makes
        # loops of C elements, which CPUs do not vectorise (4.7x slower on the 2-core CPU).
        # Each image's whole H*W*C pattern of factors keeps every loop long.
        flat = x.permute(0, 2, 3, 1).view(n, h * w * c)
        torch.addcmul(shift.repeat(h * w), flat, scale.repeat(h * w), out=flat)
        return x
    # One fused multiply-add pass over the batch.
    return torch.addcmul(shift.view(1, c, 1, 1), x, scale.view(1, c, 1, 1), out=x)


def uint8_to_input(x: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """``[N, 3, H, W]`` uint8 pixels -> normalised ``[N, 3, H, W]`` tensor of ``dtype``."""
    return normalize_(x.to(dtype), mean, std)


def uint8_to_unit(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` uint8 (numpy, or a CPU tensor) -> float32 numpy in [0, 1]: the exported
    graphs' input (they normalise inside)."""
    if isinstance(x, torch.Tensor):
        x = x.numpy()
    return x.astype(np.float32) * np.float32(1.0 / 255.0)


class Normalize(torch.nn.Module):
    """In-graph normalisation for exported models: input RGB float in [0, 1], ``[N, 3, H, W]``."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
