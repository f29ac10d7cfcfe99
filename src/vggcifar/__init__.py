"""vggcifar: VGG on CIFAR-10, fast training, verified export, serving."""

__version__ = "0.1.0"

# The rest is imported on first use (see vggcifar._lazy), so that `import vggcifar` and
# `vgg-* --help` do not import torch.
from ._lazy import lazy_package

_EXPORTS = {
    "load_checkpoint": ".checkpoint",
    "create_model": ".pretrained",
    "list_models": ".models",
    "load_pretrained": ".pretrained",
}
lazy_package(__name__, _EXPORTS)

