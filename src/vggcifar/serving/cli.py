"""`vgg-predict`: classify image files, folders and globs from the command line.

Exit codes: 0 every image was predicted; 1 some inputs failed (unreadable file or folder,
missing path, folder without images, non-finite model output) while others were predicted;
2 usage or input errors (bad option, no or invalid model, nothing at all to predict); 3 internal
error (a bug; see :mod:`vggcifar.cli_common`).

``-`` among the images reads one image from stdin (reported as file ``-``). Only torch-free
modules are imported before the command runs, so ``vgg-predict --help`` is fast.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import click

from ..cli_common import (DEVICE_HELP, EXIT_OK, EXIT_SOME_FAILED, command, json_option,
                          model_option, quiet_option, resolve_model, top_k_option, user_errors)
from ..errors import VggCifarError
from .names import BACKENDS, FITS

STDIN = "-"
# Stdin is read whole before decoding, so it is capped (``cat /dev/zero |`` must not fill the
# memory): 8 bytes for each of images.MAX_PIXELS (40 M), the largest image decoded, as
# uncompressed 16-bit RGBA.
MAX_STDIN_BYTES = 8 * 40_000_000


# Strict JSON: a NaN or infinity would be written as a bare NaN, which JSON parsers reject.
_dumps = functools.partial(json.dumps, allow_nan=False)


def _fmt_top(top) -> str:
    return ", ".join(f"{lab} {p:.1%}" for lab, p in top)


class _Table:
    """Fixed-width rows: file, label, probability, top-k."""

    def __init__(self, files):
        self.w_file = max(4, min(60, max(len(str(f)) for f in files)))

    def header(self) -> str:
        return f"{'file':<{self.w_file}}  {'label':<12}  {'probability':>11}  top-k"

    def row(self, pred) -> str:
        return (f"{pred.source:<{self.w_file}}  {pred.label:<12}  {pred.probability:>11.1%}  "
                f"{_fmt_top(pred.top_k)}")


@command("vgg-predict")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES...",
                type=click.Path(allow_dash=True))
@model_option()
@top_k_option()
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
              show_default=True,
              help="Runtime; auto = the fastest that works for the model file here.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@json_option("One JSON object per line (file, label, probability, top_k, backend, tta, ms); "
             "failures as {file, error}.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per model call.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when there is more than one batch and not "
                   "--quiet).")
@click.option("--tta", is_flag=True,
              help="Flip test-time augmentation: average each image's and its mirror image's "
                   "probabilities (two model inputs per image; the model line says the test "
                   "accuracy of each mode).")
@click.option("--tta-shift", is_flag=True,
              help="Flip plus 1-pixel shifts: average 6 views of each image (itself, its mirror "
                   "image, and 4 copies shifted one pixel right, left, down and up).")
@click.option("--fit", type=click.Choice(FITS), default="squash", show_default=True,
              help="Non-square pictures: squash the whole picture to a square (as training), "
                   "or crop its largest centred square first.")
@quiet_option("No progress bar, model line or summary line on stderr (errors and notes still "
              "appear).")
@user_errors
def main(inputs, model_path, top_k, backend, device, as_json, batch_size, progress, tta,
         tta_shift, fit, quiet):
    """Classify IMAGES (files, folders searched recursively, or glob patterns; - reads one
    image from stdin) with a vggcifar model: PNG, JPEG, WebP, BMP, GIF (first frame), TIFF.

    \b
    Exit codes:
      0  every image was predicted
      1  some inputs failed (unreadable file or folder, no images, non-finite output)
      2  usage or input error (bad option, no or invalid model, nothing to predict)
      3  internal error (a bug in vggcifar: please report it with the traceback)
    """
    from tqdm.auto import tqdm

    from .files import expand_inputs
    from .predictor import Prediction, Predictor

    if tta and tta_shift:
        raise click.UsageError("--tta-shift already averages the mirror image (6 views); give "
                               "--tta (2 views) or --tta-shift, not both")
    if progress and quiet:
        raise click.UsageError("--progress asks for the bar that --quiet turns off; give one")
    if inputs.count(STDIN) > 1:
        raise VggCifarError("IMAGES: - (stdin) can be given only once")
    stdin = STDIN in inputs
    files, problems = expand_inputs([a for a in inputs if a != STDIN])
    if not files and not stdin:
        for arg, reason in problems:
            click.echo(f"error: {arg}: {reason}", err=True)
        raise VggCifarError("nothing to predict: no image files among the given paths")
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1) if stdin else None

    tta = "flip-shift" if tta_shift else "flip" if tta else "none"
    model_path = resolve_model(model_path)
    predictor = Predictor(model_path, backend=backend, device=device, tta=tta, fit=fit)
    if not quiet:
        click.echo(f"model: {predictor.info.describe(tta=tta)}; backend: "
                   f"{predictor.backend_name}", err=True)
    classes = len(predictor.class_names)
    typed = click.get_current_context().get_parameter_source("top_k") == \
        click.core.ParameterSource.COMMANDLINE
    if top_k > classes and typed:  # a note, as the notes on images: the result is still right
        click.echo(f"note: --top-k {top_k}: the model has {classes} classes; listing all "
                   f"{classes}", err=True)

    failed = 0
    for arg, reason in problems:
        failed += 1
        click.echo(f"error: {arg}: {reason}", err=True)
        if as_json:
            click.echo(_dumps({"file": arg, "error": f"{arg}: {reason}"}))

    table = _Table(([STDIN] if stdin else []) + files)
    if not as_json:
        click.echo(table.header())
    show = (progress if progress is not None else len(files) > batch_size) and not quiet
    t0 = time.perf_counter()
    ok = 0

    def emit(pred) -> None:
        nonlocal ok, failed
        if pred.ok:
            ok += 1
            line = _dumps(pred.to_dict()) if as_json else table.row(pred)
            tqdm.write(line, file=sys.stdout)
            for note in pred.notes:
                tqdm.write(f"note: {pred.source}: {note}", file=sys.stderr)
        else:
            failed += 1
            tqdm.write(f"error: {pred.error}", file=sys.stderr)
            if as_json:
                tqdm.write(_dumps(pred.to_dict()), file=sys.stdout)

    if stdin:
        try:
            if len(data) > MAX_STDIN_BYTES:
                raise VggCifarError(f"{STDIN}: over the {MAX_STDIN_BYTES:,}-byte limit of an "
                                    "image read from stdin")
            emit(predictor.predict(data, top_k=top_k, name=STDIN))
        except VggCifarError as e:
            emit(Prediction(source=STDIN, error=str(e), backend=predictor.backend_name))
    with tqdm(total=len(files), unit="img", file=sys.stderr, disable=not show,
              mininterval=0.5, leave=False, dynamic_ncols=True) as bar:
        for pred in predictor.predict_files(files, top_k=top_k, batch_size=batch_size):
            emit(pred)
            bar.update(1)
    secs = time.perf_counter() - t0
    if not quiet:
        click.echo(f"{ok} predicted, {failed} failed in {secs:.2f} s "
                   f"({ok / secs if secs > 0 else 0:.0f} images/s)", err=True)
    sys.exit(EXIT_SOME_FAILED if failed else EXIT_OK)
