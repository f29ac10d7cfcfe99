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
class Speed:
    """Measured throughput of one architecture on one kind of machine, for the study's estimate.

    ``train_images_per_s``: training images per second over whole real epochs (batch 128, bf16);
    ``eval_images_per_s``: validation/test images per second (batch 1000); ``measured``: when,
    where and how, shown with the estimate.
    """

    train_images_per_s: float
    eval_images_per_s: float
    measured: str


# Keyed by (architecture, device type, CPU kind: :func:`vggcifar.runtime.devices.cpu_kind`);
# only full-width models in bf16 are looked up.
# A speed is only used on the kind of CPU it was measured on.
MEASURED_SPEEDS: dict[tuple[str, str, str], Speed] = {
    ("vgg16", "cpu", "amx"): Speed(
        train_images_per_s=412.0, eval_images_per_s=675.0,
        measured="2026-12-07 on the 2-core Intel Xeon with AMX (bf16): training 411.9 images/s, "
                 "the mean of the 70 epochs of the shipped VGG16's run (49,000 images, batch "
                 "128); evaluation 675 images/s, 5,000 validation images in 7.4 s in the "
                 "study's 1% split"),
    ("vgg16", "cpu", "avx512_bf16"): Speed(
        train_images_per_s=194.0, eval_images_per_s=560.0,
        measured="2026-12-07 on the 2-core AMD EPYC with AVX512-BF16, no AMX (bf16): training "
                 "194 images/s, the median of the 100 epochs of the study's 10% split (5,000 "
                 "images, batch 128); evaluation 560 images/s, 5,000 validation images in 8.9 s "
                 "in the same split"),
    ("vgg16", "cpu", "zen5"): Speed(
        train_images_per_s=365.0, eval_images_per_s=890.0,
        measured="2026-12-07 on the 2-core AMD EPYC of family 26 (Zen 5, AVX512-BF16 at full "
                 "512-bit width; bf16 matmul 835-877 GFLOP/s): training 361-378 images/s in "
                 "quiet epochs of the study's 50% split (25,000 images, batch 128); evaluation "
                 "about 890 images/s, 5,000 validation images in 5.6 s in the same split"),
}


@dataclass(frozen=True)
class Budget:
    """What a preset's epochs are sized for: ``images_per_s`` training speed (evaluation at the
    measured speed), the whole study in about ``total_hours``, no split over ``split_hours``."""

    images_per_s: float
    total_hours: float
    split_hours: float


@dataclass(frozen=True)
class Preset:
    """``options`` maps `vgg-study` option names (click parameter names) to default values;
    ``budget``: what its training length is sized for (None: not sized)."""

    description: str
    options: dict = field(default_factory=dict)
    budget: Budget | None = None


# The paper preset's epochs per split. The large splits get the most epochs that keep each under
# 2.5 hours at 500 training images/s (the proxies of docs/recipe.md: each doubling of the schedule
# multiplied the error by 0.72, so length is what buys accuracy). The small ones are far above
# the study's rows at any length tried (1%: 44.60% one view after 300 epochs, 45.41% after 267,
# against 36%; 10%: 78.55% after 150 epochs, 76.81% after about 100, against 72%), so they get
# fewer epochs: on the AMD EPYC without AMX (194 training images/s, 2.1 times slower) the two
# then finish together in about 1.5 hours, one working session, and can be kept (committed) before
# the machine changes.
PAPER_SPLIT_EPOCHS = "0.01:200,0.1:100,0.5:140,0.8:95"

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
            "The full study with the trainer's recipe (docs/recipe.md): VGG16, splits 0.01, 0.1, "
            "0.5 and 0.8 for 200, 100, 140 and 95 epochs, 5,000 validation images; about 5 hours "
            "at 500 training images/s, no split over 2.5 hours (the estimate at the measured "
            "speed is printed at the start). Meant to reach or beat the original study's 36%, "
            "72%, 88% and 91.2% one view."),
        options={"splits": "0.01,0.1,0.5,0.8", "arch": "vgg16",
                 "split_epochs": PAPER_SPLIT_EPOCHS, "epochs": 100, "min_steps": 4000,
                 "val_size": 5000},
        budget=Budget(images_per_s=500.0, total_hours=5.5, split_hours=2.5),
    ),
}


def apply_preset(name: str | None, values: dict, explicit: set[str]) -> dict:
    """Return ``values`` with the preset's defaults filled in for every option not in ``explicit``.

    An explicit ``--epochs`` or ``--steps`` replaces the preset's training length as a whole
    (the preset's ``epochs``, ``steps`` and ``split_epochs`` are all dropped); the preset's
    ``min_steps`` still applies to ``--epochs`` unless ``--min-steps`` is given too.
    """
    values = dict(values)
    if not name:
        return values
    preset = PRESETS[name]
    length_given = bool({"epochs", "steps"} & explicit)
    for key, val in preset.options.items():
        if key in explicit:
            continue
        if length_given and key in ("epochs", "steps", "split_epochs"):
            continue
        values[key] = val
    return values
