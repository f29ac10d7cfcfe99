"""`vgg-train`: command-line front end of :func:`vggcifar.training.train`.

Imports only torch-free modules before the command runs (``vgg-train --help`` is fast): the
architecture and head are checked in the command body, against the model registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..cli_common import DEVICE_HELP, QUIET_HELP, command, json_option, user_errors
from ..errors import VggCifarError
from .config import LOADERS, RESUME_OPTIONS, SCHEDULES, TrainConfig

D = TrainConfig()


def _field(flag: str, *args, **kw):
    """A click option for the TrainConfig field named like the flag, defaulting to its value."""
    attr = flag.split("/")[0].lstrip("-").replace("-", "_")
    return click.option(flag, *args, default=getattr(D, attr), show_default=True, **kw)


def train_options(fn):
    """The training options, shared by `vgg-train` and `vgg-study`."""
    opts = [
        _field("--arch", metavar="NAME",
               help="Architecture, by its name in the model registry: vgg11, vgg13, vgg16, "
                    "vgg19 (vggcifar.list_models() lists every registered one)."),
        _field("--head", metavar="mlp|linear",
               help="Classifier: mlp = 512-512-512-classes with dropout (the study's); "
                    "linear = one layer."),
        _field("--width", type=float, help="Channel multiplier (1 = real VGG)."),
        _field("--dropout", type=float, help="Dropout probability in the mlp head."),
        _field("--val-size", type=int,
               help="Cap on validation images (taken from the training images not used for "
                    "training)."),
        _field("--val-every", type=int,
               help="Validate every N epochs (0 = auto: often enough, never dominating "
                    "small-split runs)."),
        _field("--epochs", type=int, help="Training epochs (not with --steps: give one); the "
                                          "default is the full-set recipe's (docs/recipe.md)."),
        click.option("--steps", type=int, default=None,
                     help="Train for this many optimisation steps instead of --epochs."),
        _field("--batch-size", type=int,
               help="Global batch size (0 = auto from the training-set size: at least 16 steps "
                    "per epoch, 32..512 on CUDA, 32..128 on CPU)."),
        _field("--lr", type=float,
               help="Peak learning rate (0 = auto: 0.1 x batch/128, at most 0.4)."),
        _field("--momentum", type=float, help="SGD momentum."),
        _field("--nesterov/--no-nesterov",
               help="Nesterov momentum (may be switched when resuming)."),
        _field("--weight-decay", type=float, help="L2 weight decay."),
        _field("--schedule", type=click.Choice(SCHEDULES),
               help="Learning-rate schedule, stepped every batch."),
        _field("--warmup", type=float,
               help="Warm-up fraction of the onecycle and linear schedules (linear: warm-up, "
                    "then a straight line to 0)."),
        _field("--label-smoothing", type=float, help="Label smoothing of the cross-entropy loss."),
        _field("--cutout", type=click.IntRange(0, 32), metavar="PX",
               help="Cutout: set a PX x PX square (anywhere, clipped at the border) of each "
                    "training image to the mean colour; 0 = off (device loader only)."),
        _field("--wd-norm-bias/--no-wd-norm-bias",
               help="Apply weight decay to BatchNorm weights and biases too (off: only to the "
                    "convolution and linear weights)."),
        _field("--tta/--no-tta", help="Average predictions with the mirrored image at test time."),
        _field("--data", metavar="DIR", type=click.Path(file_okay=False),
               help="CIFAR-10 folder: cifar-10-batches-py or train/<class>/, test/<class>/ "
                    "images (detected). Downloaded here when missing and online."),
        click.option("--download/--no-download", default=True, show_default=True,
                     help="Download CIFAR-10 into --data when it holds no data."),
        _field("--loader", type=click.Choice(LOADERS),
               help="device = whole split on the device, batched augmentation; classic = "
                    "torchvision DataLoader with PIL transforms (baseline)."),
        _field("--workers", type=int, help="DataLoader workers for --loader classic."),
        _field("--device", help=DEVICE_HELP),
        click.option("--amp/--no-amp", default=None,
                     help="bf16 autocast. Default: on for CUDA and for a CPU that runs bf16 "
                          "natively (oneDNN's check; AVX512-BF16/AMX), off elsewhere. "
                          "config.json records the choice and why."),
        click.option("--channels-last/--no-channels-last", default=None,
                     help="channels_last memory format (default: on; faster on GPU and CPU)."),
        click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
                     help="torch.compile the model."),
        click.option("--sync-bn/--no-sync-bn", default=False, show_default=True,
                     help="SyncBatchNorm across ranks under torchrun."),
        _field("--ema", type=click.FloatRange(0, 1, max_open=True), metavar="DECAY",
               help="Evaluate and save an exponential moving average of the weights with this "
                    "per-step decay (e.g. 0.999: about the last 1,000 steps); 0 = off. May be "
                    "switched on when resuming."),
        _field("--save-every", type=click.IntRange(1),
               help="Write last.pt (for --resume) every N epochs and after the last one."),
        _field("--seed", type=int, help="Random seed (split, initialisation, augmentation)."),
        click.option("--quiet", is_flag=True, help=QUIET_HELP),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def check_model_options(arch: str, head: str) -> None:
    """``--arch`` and ``--head`` against the model registry (not a ``click.Choice``: listing the
    registry would import torch for ``--help``). Errors name the option."""
    from ..models import HEADS, list_models

    if arch not in list_models():
        raise click.BadParameter(f"{arch!r} is not a registered architecture; choose one of: "
                                 f"{', '.join(list_models())}", param_hint="'--arch'")
    if head not in HEADS:
        raise click.BadParameter(f"{head!r} is not one of {', '.join(HEADS)}",
                                 param_hint="'--head'")


def refuse_inapplicable(given: set[str], kw: dict) -> None:
    """A usage error for an option typed on the command line that the run would ignore (as
    vgg-export refuses options of formats not chosen): silently ignored, it hides a mistake,
    and a sweep over it trains identical runs. ``given``: parameter names typed; ``kw``: every
    option's value (after a preset)."""
    def typed(*names):
        return all(n in given for n in names)

    problems = []
    if typed("workers") and kw.get("loader") != "classic":
        problems.append("--workers applies only with --loader classic (the device loader "
                        "augments whole batches in this process)")
    if typed("epochs", "steps"):
        problems.append("--epochs and --steps both set the training length; give one")
    if typed("steps", "min_steps"):
        problems.append("--min-steps applies only with --epochs (--steps sets every split's "
                        "length)")
    if typed("dropout") and kw.get("head") != "mlp":
        problems.append("--dropout applies only with --head mlp (the linear head has none)")
    if typed("warmup") and kw.get("schedule") not in ("onecycle", "linear"):
        problems.append("--warmup applies only with --schedule onecycle or linear")
    no_split = kw.get("split") == 1  # vgg-train only: every image trains
    if no_split or kw.get("val_size") == 0:
        for o in ("val_size", "val_every"):
            if typed(o) and not (o == "val_size" and (kw[o] == 0 or not no_split)):
                problems.append(f"--{o.replace('_', '-')} applies only with a validation set "
                                "(--split below 1 and --val-size above 0)")
    single = os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1")
    if typed("sync_bn") and kw.get("sync_bn") and single:
        problems.append("--sync-bn applies only under torchrun with several processes")
    if problems:
        raise click.UsageError("; ".join(problems))


def config_from_options(**kw) -> TrainConfig:
    """Map click option values onto a :class:`TrainConfig`."""
    kw["compile"] = kw.pop("compile_")
    kw["progress"] = not kw.pop("quiet")
    return TrainConfig.from_dict(kw)


def run_folder_options(out: str | None, resume: str | None) -> dict:
    """vgg-train's ``--out`` (the run folder itself) as :class:`TrainConfig`'s ``out`` (parent)
    and ``name``; without it the trainer names the folder ``runs/ARCH-splitF-TIMESTAMP``."""
    if resume is not None:
        # The folder holding the file named (a link included): where the trainer continues.
        if out is not None and Path(out).resolve() != Path(resume).absolute().parent.resolve():
            raise click.BadParameter(f"{out} is not the run's folder: --resume continues the run "
                                     f"in its own folder ({Path(resume).parent}); drop --out",
                                     param_hint="'--out'")
        return {"resume": resume}
    if out is None:
        return {"out": D.out, "name": None}
    folder = Path(out)
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()
    return {"out": str(folder.parent), "name": folder.name}


# What a resumed run may take from its command line besides RESUME_OPTIONS: where the data is,
# which device, how chatty (TrainConfig.resumed), and the command's own switches.
RESUME_MAY_GIVE = {"data", "device", "quiet", "resume", "out", "as_json"}


def _option_name(param: str) -> str:
    return "--" + param.rstrip("_").replace("_", "-")


def _refuse_fixed_on_resume(given: set[str]) -> None:
    """Refuse options that a resumed run would ignore: it keeps the interrupted run's options
    (its schedule was fixed when it started), so ``--epochs 120`` would silently train to the old
    length."""
    fixed = sorted(given - RESUME_MAY_GIVE - set(RESUME_OPTIONS))
    if fixed:
        may = ", ".join(_option_name(o) for o in ("data", "device", "quiet", *RESUME_OPTIONS))
        raise VggCifarError(
            f"--resume continues the run with the options it started with; "
            f"{', '.join(_option_name(o) for o in fixed)} cannot change (a schedule is fixed "
            f"when a run starts; to train longer or differently, start a new run). A resumed "
            f"run takes only {may}")


@command("vgg-train")
@click.option("--split", type=float, default=D.split, show_default=True,
              help="Fraction of the 50,000 training images to train on, in (0, 1]; stratified "
                   "by class. The rest (up to --val-size) validates; 1 = no validation.")
@train_options
@click.option("--out", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Run folder written [default: runs/ARCH-splitF-TIMESTAMP]. It must not hold "
                   "a run already (continue one with --resume).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PATH", help="Continue an interrupted run from its last.pt (in its own "
                                   "folder).")
@json_option("Print the result as one JSON object (run_dir, test_accuracy, checkpoint, "
             "total_time_s) instead of a sentence.")
@user_errors
def main(out, resume, as_json, **kw):
    """Train a VGG on CIFAR-10 and write a run folder (--out): config.json, metrics.csv,
    best.pt, last.pt, curves.png, per_class.csv, confusion.png, samples.png and summary.json.

    The test set is used once, at the end, on the checkpoint with the best validation accuracy.
    Under torchrun the run uses DistributedDataParallel (--batch-size is the global batch).
    """
    from .distributed import DistInfo
    from .trainer import train

    ctx = click.get_current_context()
    given = {k for k in ctx.params if ctx.get_parameter_source(k) in
             (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)}
    if resume is None:
        check_model_options(kw["arch"], kw["head"])
        refuse_inapplicable(given, kw)
    else:  # the options of RESUME_OPTIONS given on this command line replace the saved ones
        _refuse_fixed_on_resume(given)
        kw["resume_overrides"] = [o for o in RESUME_OPTIONS if o in given]
    kw.update(run_folder_options(out, resume))
    summary = train(config_from_options(**kw))
    if not DistInfo.from_env().is_main:  # under torchrun, one result line
        return
    result = {k: summary[k] for k in ("run_dir", "test_accuracy", "checkpoint", "total_time_s")}
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"test accuracy {result['test_accuracy']:.2%} in "
                   f"{result['total_time_s']:.0f} s; model {result['checkpoint']}; run folder "
                   f"{result['run_dir']}")


if __name__ == "__main__":
    main()
