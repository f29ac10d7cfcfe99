"""A toy architecture, whole in this one file: how a new network joins vggcifar.

Importing this module registers ``toy`` (a tiny conv net) with its validator and its
``state_dict`` shapes, so that vgg-train's trainer, checkpoints (including the
refuse-before-allocating check), ONNX export and serving all handle it with no other change.
"""

from __future__ import annotations

from torch import nn

from vggcifar.errors import VggCifarError
from vggcifar.models import is_finite_number, register_model, show_value

MAX_CHANNELS = 64


def check_toy_kwargs(kw: dict) -> None:
    """``channels`` a whole number in 1..MAX_CHANNELS; ``dropout`` in [0, 1)."""
    ch, dropout = kw.get("channels"), kw.get("dropout")
    if not (isinstance(ch, int) and not isinstance(ch, bool) and 1 <= ch <= MAX_CHANNELS):
        raise VggCifarError(f"channels {show_value(ch)} outside 1..{MAX_CHANNELS}")
    if not (is_finite_number(dropout) and 0 <= dropout < 1):
        raise VggCifarError(f"dropout {show_value(dropout)} outside [0, 1)")


def toy_shapes(num_classes: int, channels: int, dropout: float) -> dict[str, tuple]:
    """The ``state_dict`` shapes of :func:`toy`, without building it."""
    return {"conv.weight": (channels, 3, 3, 3), "conv.bias": (channels,),
            "bn.weight": (channels,), "bn.bias": (channels,), "bn.running_mean": (channels,),
            "bn.running_var": (channels,), "bn.num_batches_tracked": (),
            "fc.weight": (num_classes, channels), "fc.bias": (num_classes,)}


class Toy(nn.Module):
    """conv 3x3 (stride 2) -> BatchNorm -> ReLU -> global average pool -> dropout -> linear.

    ``forward``: ``[N, 3, 32, 32]`` normalised float -> ``[N, num_classes]`` logits.
    """

    def __init__(self, num_classes: int, channels: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        h = self.pool(self.bn(self.conv(x)).relu()).flatten(1)  # [N, channels]
        return self.fc(self.drop(h))


@register_model("toy", validate=check_toy_kwargs, shapes=toy_shapes)
def toy(num_classes: int = 10, channels: int = 8, dropout: float = 0.0) -> Toy:
    """The toy network (see :class:`Toy`)."""
    return Toy(num_classes, channels, dropout)
