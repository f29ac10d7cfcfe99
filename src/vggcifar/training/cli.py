"""`vgg-train`: command-line front end of :func:`vggcifar.training.train`."""

from __future__ import annotations

import json
import os

import click

from ..cli_common import user_errors
from ..models import HEADS, list_models
from .config import LOADERS, SCHEDULES, TrainConfig

D = TrainConfig()


def train_options(fn):
    """The training options, shared by `vgg-train` and `vgg-study`."""
    opts = [
        click.option("--arch", type=click.Choice(list_models(), case_sensitive=False),
                     default=D.arch, show_default=True, help="VGG depth."),
        click.option("--head", type=click.Choice(HEADS), default=D.head, show_default=True,
                     help="Classifier: mlp = 512-512-512-classes with dropout (the study's); "
                          "linear = one layer."),
        click.option("--width", type=float, default=D.width, show_default=True,
                     help="Channel multiplier (1 = real VGG)."),
        click.option("--dropout", type=float, default=D.dropout, show_default=True),
        click.option("--val-size", type=int, default=D.val_size, show_default=True,
                     help="Cap on validation images (taken from the training images not used "
                          "for training)."),
        click.option("--val-every", type=int, default=D.val_every, show_default=True,
                     help="Validate every N epochs (0 = auto: often enough, never dominating "
                          "small-split runs)."),
        click.option("--epochs", type=int, default=D.epochs, show_default=True),
        click.option("--steps", type=int, default=None,
                     help="Train for this many optimisation steps instead of --epochs."),
        click.option("--batch-size", type=int, default=D.batch_size, show_default=True,
                     help="Global batch size (0 = auto from the training-set size: at least 16 "
                          "steps per epoch, 32..512 on CUDA, 32..128 on CPU)."),
        click.option("--lr", type=float, default=D.lr, show_default=True,
                     help="Peak learning rate (0 = auto: 0.1 x batch/128, at most 0.4)."),
        click.option("--momentum", type=float, default=D.momentum, show_default=True),
        click.option("--nesterov/--no-nesterov", default=D.nesterov, show_default=True),
        click.option("--weight-decay", type=float, default=D.weight_decay, show_default=True),
        click.option("--schedule", type=click.Choice(SCHEDULES), default=D.schedule,
                     show_default=True, help="Learning-rate schedule, stepped every batch."),
        click.option("--warmup", type=float, default=D.warmup, show_default=True,
                     help="Warm-up fraction of the onecycle schedule."),
        click.option("--label-smoothing", type=float, default=D.label_smoothing, show_default=True),
        click.option("--tta/--no-tta", default=D.tta, show_default=True,
                     help="Average predictions with the mirrored image at test time."),
        click.option("--data", default=D.data, show_default=True,
                     help="CIFAR-10 folder: cifar-10-batches-py or train/<class>/, test/<class>/ "
                          "images (detected). Downloaded here when missing and online."),
        click.option("--download/--no-download", default=True, show_default=True),
        click.option("--loader", type=click.Choice(LOADERS), default=D.loader, show_default=True,
                     help="device = whole split on the device, batched augmentation; classic = "
                          "torchvision DataLoader with PIL transforms (baseline)."),
        click.option("--workers", type=int, default=D.workers, show_default=True,
                     help="DataLoader workers for --loader classic."),
        click.option("--device", default=D.device, show_default=True, help="auto, cpu or cuda[:N]."),
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
        click.option("--save-every", type=click.IntRange(1), default=D.save_every,
                     show_default=True,
                     help="Write last.pt (for --resume) every N epochs and after the last one."),
        click.option("--seed", type=int, default=D.seed, show_default=True),
        click.option("--quiet", is_flag=True, help="No progress bar or epoch table."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def config_from_options(**kw) -> TrainConfig:
    """Map click option values onto a :class:`TrainConfig`."""
    kw["compile"] = kw.pop("compile_")
    kw["progress"] = not kw.pop("quiet")
    return TrainConfig.from_dict(kw)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--split", type=float, default=D.split, show_default=True,
              help="Fraction of the 50,000 training images to train on, in (0, 1]; stratified "
                   "by class. The rest (up to --val-size) validates; 1 = no validation.")
@train_options
@click.option("--name", default=None, help="Run folder name (default: ARCH-splitF-TIMESTAMP).")
@click.option("--out", default=D.out, show_default=True, help="Parent folder of run folders.")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue an interrupted run from its last.pt.")
@user_errors
def main(**kw):
    """Train a VGG on CIFAR-10 and write a run folder: config.json, metrics.csv, best.pt,
    last.pt, curves.png, per_class.csv, confusion.png, samples.png and summary.json.

    The test set is used once, at the end, on the checkpoint with the best validation accuracy.
    Under torchrun the run uses DistributedDataParallel (--batch-size is the global batch).
    """
    from .trainer import train

    summary = train(config_from_options(**kw))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one result line
            click.echo(json.dumps({k: summary[k] for k in ("run_dir", "test_accuracy", "checkpoint",
                                                       "total_time_s")}))


if __name__ == "__main__":
    main()
