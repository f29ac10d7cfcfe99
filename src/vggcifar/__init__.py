"""vggcifar: VGG on CIFAR-10, fast training, verified export, serving."""

__version__ = "0.1.0"

from .checkpoint import load_checkpoint  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .shipped import load_pretrained  # noqa: E402

__all__ = ["__version__", "create_model", "list_models", "load_checkpoint", "load_pretrained"]
