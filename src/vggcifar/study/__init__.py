"""Training-fraction studies: train the same VGG on several fractions of the CIFAR-10 training
set (one ordinary run folder per split, all by :func:`vggcifar.training.train`) and report
accuracy, time and memory against the fraction (`vgg-study`)."""

from .presets import PRESETS, REFERENCE, Preset, apply_preset
from .report import collect, explicit_command, write_report
from .runner import parse_splits, plan_epochs, read_manifest, run_name, run_study, split_state

__all__ = ["PRESETS", "REFERENCE", "Preset", "apply_preset", "collect", "explicit_command",
           "parse_splits", "plan_epochs", "read_manifest", "run_name", "run_study",
           "split_state", "write_report"]
