"""`vgg-export`: command-line front end of :func:`vggcifar.export.export_checkpoint`.

Imports only torch-free modules before the command runs (``vgg-export --help`` is fast).
"""

from __future__ import annotations

import json
import sys

import click

from ..cli_common import (Command, command, json_option, model_option, quiet_option,
                          resolve_model, stderr_logger, user_errors)
from .options import (CALIB_IMAGES, CALIBRATION_METHODS, DEFAULT_OPSET, EXPORTERS, MAX_BATCH,
                      MAX_OPSET, MIN_OPSET, PARITY_IMAGES, inapplicable_options)


class _ExportCommand(Command):
    """A positional argument (the old ``vgg-export CHECKPOINT``) is a usage error naming
    ``--model``."""

    def parse_args(self, ctx, args):
        ctx.allow_extra_args = True
        rest = super().parse_args(ctx, args)
        if ctx.args:
            raise click.UsageError(
                f"unexpected argument {ctx.args[0]!r}: vgg-export reads the model from --model "
                f"(vgg-export --model {ctx.args[0]} ...)", ctx)
        return rest


def _refuse_inapplicable(ctx: click.Context, formats: list[str]) -> None:
    """A usage error for an option typed on the command line that none of the chosen formats
    uses (``--calib-method`` without ``--int8``...): silently ignoring it would hide a mistake."""
    given = {opt for p in ctx.command.params
             if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE
             for opt in p.opts}
    problems = inapplicable_options(given, formats)
    if "--parity-images" in given and ctx.params.get("data") is None:
        # without --data the parity check has only random inputs: no test image is read
        problems.append("--parity-images applies only with --data (the test images it counts)")
    if problems:
        raise click.UsageError("; ".join(problems), ctx)


@command("vgg-export", cls=_ExportCommand)
@model_option("Model to export: a checkpoint (best.pt) or the shipped model's .json manifest. "
              "Default: the newest runs/*/best.pt, else the shipped model.")
@click.option("--onnx", is_flag=True, help="fp32 ONNX (always written: the other formats are "
              "built from it or checked with it).")
@click.option("--fp16", is_flag=True, help="fp16 ONNX (float32 input/outputs, casts inside); "
              "with --tensorrt also makes the engine fp16.")
@click.option("--int8", is_flag=True, help="int8 ONNX: static QDQ quantisation calibrated on "
              "--data training images.")
@click.option("--tensorrt", is_flag=True, help="TensorRT engine (needs the tensorrt package "
              "and an NVIDIA GPU).")
@click.option("--triton", "triton_dir", default=None, metavar="DIR",
              type=click.Path(file_okay=False), help="Also write a Triton Inference Server model "
              "repository in DIR: <name>/config.pbtxt (dynamic batching), <name>/1/model.onnx "
              "(the fp32 file), <name>/labels.txt; checked by parsing config.pbtxt back against "
              "the ONNX graph.")
@click.option("--triton-name", default=None, help="The model's name in the Triton repository "
              "[default: the run folder's name, or the manifest's for the shipped model].")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET,
              show_default=True, help="ONNX opset.")
@click.option("--exporter", type=click.Choice(("auto",) + EXPORTERS), default="auto",
              show_default=True, help="auto: TorchScript exporter, then dynamo, keeping the first "
              "that passes fp32 parity.")
@click.option("--out", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder written (the files and parity.json) [default: <checkpoint "
                   "folder>/export, or exports/<name> for the shipped model].")
@click.option("--data", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="CIFAR-10 folder (either format): real test images for parity, training "
                   "images for --int8 calibration.")
@click.option("--parity-images", type=click.IntRange(0), default=PARITY_IMAGES,
              show_default=True, help="Test images in the parity check (with --data).")
@click.option("--calib-images", type=click.IntRange(1), default=CALIB_IMAGES, show_default=True,
              help="Training images calibrating --int8.")
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default="minmax",
              show_default=True, help="int8 activation-range calibration.")
@click.option("--max-batch", type=click.IntRange(1), default=MAX_BATCH, show_default=True,
              help="Largest batch of the TensorRT engine's optimisation profile and of the "
                   "Triton model (max_batch_size).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Sampling of random inputs, test and calibration images.")
@json_option("Print the parity report (as parity.json) as one JSON object instead of the table.")
@quiet_option()
@user_errors
def main(model_path, onnx, fp16, int8, tensorrt, triton_dir, triton_name, opset, exporter, out,
         data, parity_images, calib_images, calib_method, max_batch, seed, as_json, quiet):
    """Export a model (--model: a best.pt, or the shipped model's .json) to ONNX
    fp32/fp16/int8, TensorRT and a Triton model repository, and check every file against it.

    Prints a table of the files with their parity figures (--json: the report) and writes the
    report as parity.json next to them. Exit status: 0 all within tolerance, 1 a parity check
    failed (files and report are kept), 2 a usage or input error (nothing is written).
    """
    formats = [k for k, on in (("onnx", onnx), ("fp16", fp16), ("int8", int8),
                               ("tensorrt", tensorrt), ("triton", triton_dir)) if on] or ["onnx"]
    _refuse_inapplicable(click.get_current_context(), formats)
    from .pipeline import export_checkpoint, format_table

    log = stderr_logger(quiet)
    checkpoint = resolve_model(model_path)
    report = export_checkpoint(
        checkpoint, formats, out=out, data=data, opset=opset, exporter=exporter,
        parity_images=parity_images, calib_images=calib_images, calib_method=calib_method,
        max_batch=max_batch, seed=seed, progress=not quiet, log=log, triton_dir=triton_dir,
        triton_name=triton_name)
    click.echo(json.dumps(report) if as_json else format_table(report))
    if report["status"] != "PASS":
        sys.exit(1)


if __name__ == "__main__":
    main()
