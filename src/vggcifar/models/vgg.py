"""VGG networks for 32x32 inputs, built by name from one configuration table."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import VggCifarError

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
                layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
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


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, e.g. ``['vgg11', 'vgg13', 'vgg16', 'vgg19']``."""
    return sorted(CONFIGS)


def create_model(name: str, num_classes: int = 10, head: str = "mlp", width: float = 1.0,
                 dropout: float = 0.2, pretrained: bool = False) -> VGG:
    """Build a freshly initialised VGG by name (see :class:`VGG` for the arguments).

    With ``pretrained=True`` it returns the shipped CIFAR-10 model instead (verified by sha256,
    in eval mode), which must be this architecture with the default head, width and 10 classes.
    """
    key = str(name).lower()
    if key not in CONFIGS:
        raise VggCifarError(
            f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    if pretrained:
        return _pretrained(key, num_classes, head, width)
    if head not in HEADS:
        raise VggCifarError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    if not width > 0:
        raise VggCifarError(f"width must be > 0, got {width}")
    return VGG(CONFIGS[key], num_classes=num_classes, head=head, width=width, dropout=dropout)


def _pretrained(key: str, num_classes: int, head: str, width: float) -> VGG:
    from ..shipped import load_pretrained  # the shipped model is read through checkpoints

    model, meta = load_pretrained()
    shipped = (meta["arch"], meta["num_classes"], meta["head"], float(meta["width"]))
    if (key, num_classes, head, float(width)) != shipped:
        raise VggCifarError(
            f"the shipped pretrained model is {shipped[0]} (head {shipped[2]}, width "
            f"{shipped[3]:g}, {shipped[1]} classes); create_model({key!r}, num_classes="
            f"{num_classes}, head={head!r}, width={width:g}, pretrained=True) asks for another")
    return model
