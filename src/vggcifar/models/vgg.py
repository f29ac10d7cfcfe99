"""VGG networks for 32x32 inputs, built by name from one configuration table and registered as
``vgg11``, ``vgg13``, ``vgg16`` and ``vgg19`` (options ``head``, ``width``, ``dropout``)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import VggCifarError
from .conv3x3 import Conv3x3
from .registry import is_finite_number, register_model, show_value

# Numbers are 3x3 conv output channels (each followed by BatchNorm and ReLU); "M" is a 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
HEADS = ("mlp", "linear")


class VGG(nn.Module):
    """VGG with BatchNorm for CIFAR-sized inputs.

    ``forward``: ``[N, 3, 32, 32]`` normalised float -> ``[N, num_classes]`` logits.

    Args:
        cfg: layer list from :data:`CONFIGS`.
        num_classes: output classes.
        head: ``"mlp"`` (512-512 ReLU Dropout, twice, then 512-classes, as in the original study)
            or ``"linear"`` (one 512-classes layer).
        width: channel multiplier (1.0 is the real network; tests use small widths).
        dropout: dropout probability in the ``mlp`` head.
    """

    def __init__(self, cfg, num_classes: int = 10, head: str = "mlp", width: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = max(1, int(round(v * width)))
                layers += [Conv3x3(in_ch, out_ch),
                           nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        if head == "mlp":
            hidden = max(1, int(round(512 * width)))
            self.classifier = nn.Sequential(
                nn.Linear(in_ch, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        elif head == "linear":
            self.classifier = nn.Sequential(nn.Linear(in_ch, num_classes))
        else:
            raise VggCifarError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The study's initialisation: Xavier-normal conv weights, zero biases, BatchNorm 1/0,
        Linear weights N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


# Bounds on what a checkpoint may ask us to build, checked before anything is allocated: the
# widest network trained here is width 1; 4 is already a 16x larger model.
MAX_WIDTH = 4.0


def check_vgg_kwargs(kw: dict) -> None:
    """The registry validator of VGG's options: ``head`` in :data:`HEADS`,
    ``0 < width <= MAX_WIDTH``, ``0 <= dropout < 1``.

    Raises:
        VggCifarError: the first bad value, e.g. ``width 40.0 outside (0, 4]``.
    """
    head, width, dropout = kw.get("head"), kw.get("width"), kw.get("dropout")
    if not isinstance(head, str) or head not in HEADS:
        raise VggCifarError(f"unknown head {show_value(head)} (known: {', '.join(HEADS)})")
    if not (is_finite_number(width) and 0 < width <= MAX_WIDTH):
        raise VggCifarError(f"width {show_value(width)} outside (0, {MAX_WIDTH:g}]")
    if not (is_finite_number(dropout) and 0 <= dropout < 1):
        raise VggCifarError(f"dropout {show_value(dropout)} outside [0, 1)")


def vgg_shapes(arch: str, head: str, width: float, num_classes: int) -> dict[str, tuple]:
    """The ``state_dict`` shapes of :class:`VGG`, computed from its layer table without building
    it (building even on the ``meta`` device costs seconds of first-use imports). Mirrors
    ``VGG.__init__``; ``tests/test_serving_safety.py`` checks it against real models."""
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


def _register(arch: str) -> None:
    """Register ``arch`` (a key of :data:`CONFIGS`) with its builder, validator and shapes."""
    def build(num_classes: int = 10, head: str = "mlp", width: float = 1.0,
              dropout: float = 0.2) -> VGG:
        return VGG(CONFIGS[arch], num_classes=num_classes, head=head, width=width,
                   dropout=dropout)

    def shapes(num_classes: int, head: str, width: float, dropout: float) -> dict[str, tuple]:
        return vgg_shapes(arch, head, width, num_classes)

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = f"{arch.upper()} with BatchNorm for 32x32 inputs (see :class:`VGG`)."
    register_model(arch, validate=check_vgg_kwargs, shapes=shapes)(build)


for _arch in CONFIGS:
    _register(_arch)
