"""Named study settings (`vgg-study --preset NAME`): defaults that explicit options override."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SPLITS = (0.01, 0.1, 0.5, 0.8)

# The numbers of the study that started this project: VGG16 test accuracy per training fraction,
# and the final VGG16 (trained on the full training set) at 92.58%.
REFERENCE = {
    "source": "original study (VGG16)",
    "test_accuracy": {0.01: 0.36, 0.1: 0.72, 0.5: 0.88, 0.8: 0.912},
    "final_test_accuracy": 0.9258,
}


@dataclass(frozen=True)
class Preset:
    """``options`` maps `vgg-study` option names (click parameter names) to default values."""

    description: str
    options: dict = field(default_factory=dict)
    needs_gpu: bool = False


PRESETS: dict[str, Preset] = {
    "cpu-quick": Preset(
        description=(
            "A small version of the study that finishes in about 20 minutes on a 2-core CPU with "
            "the real data: VGG11 (about half the compute of VGG16), 3 epochs per split but at "
            "least 400 optimisation steps (so the 1% and 10% splits train for more epochs), and "
            "2,000 validation images. Shows the trend, not the final accuracies."),
        options={"splits": "0.01,0.1,0.5,0.8", "arch": "vgg11", "epochs": 3, "min_steps": 400,
                 "val_size": 2000},
    ),
    "paper": Preset(
        description=(
            "The full study on a GPU: VGG16, splits 0.01, 0.1, 0.5 and 0.8, 100 epochs per split "
            "and at least 4,000 optimisation steps (the 1% and 10% splits train for more epochs), "
            "5,000 validation images. Meant to reach or beat the original study's 36%, 72%, 88% "
            "and 91.2%."),
        options={"splits": "0.01,0.1,0.5,0.8", "arch": "vgg16", "epochs": 100, "min_steps": 4000,
                 "val_size": 5000},
        needs_gpu=True,
    ),
}


def apply_preset(name: str | None, values: dict, explicit: set[str]) -> dict:
    """Return ``values`` with the preset's defaults filled in for every option not in ``explicit``.

    An explicit ``--epochs`` or ``--steps`` replaces the preset's training length as a whole
    (the preset's ``epochs``/``steps`` are both dropped); the preset's ``min_steps`` still applies
    to ``--epochs`` unless ``--min-steps`` is given too.
    """
    values = dict(values)
    if not name:
        return values
    preset = PRESETS[name]
    length_given = bool({"epochs", "steps"} & explicit)
    for key, val in preset.options.items():
        if key in explicit:
            continue
        if length_given and key in ("epochs", "steps"):
            continue
        values[key] = val
    return values
