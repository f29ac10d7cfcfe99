"""Training: the trainer, its configuration and evaluation."""

# Imported on first use (see vggcifar._lazy): `vgg-* --help` must not import torch.
from .._lazy import lazy_package

_EXPORTS = {
    "TrainConfig": ".config",
    "evaluate": ".evaluate",
    "train": ".trainer",
}
lazy_package(__name__, _EXPORTS)

