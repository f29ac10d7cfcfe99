"""Training-fraction studies: train the same VGG on several fractions of the CIFAR-10 training
set (one ordinary run folder per split, all by :func:`vggcifar.training.train`) and report
accuracy, time and memory against the fraction (`vgg-study`)."""

# Imported on first use (see vggcifar._lazy): `vgg-* --help` must not import torch.
from .._lazy import lazy_package

_EXPORTS = {
    "PRESETS": ".presets",
    "REFERENCE": ".presets",
    "Preset": ".presets",
    "apply_preset": ".presets",
    "collect": ".collect",
    "explicit_command": ".collect",
    "write_report": ".report",
    "parse_split_epochs": ".runner",
    "parse_splits": ".runner",
    "plan_splits": ".runner",
    "plan_epochs": ".runner",
    "read_manifest": ".layout",
    "run_name": ".layout",
    "run_study": ".runner",
    "split_state": ".layout",
}
lazy_package(__name__, _EXPORTS)

