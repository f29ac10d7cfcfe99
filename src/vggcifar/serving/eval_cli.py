"""`vgg-eval`: accuracy of any servable model on the CIFAR-10 test set of a data folder.

Imports only torch-free modules before the command runs (``vgg-eval --help`` is fast).
"""

from __future__ import annotations

import json

import click

from ..cli_common import (DEVICE_HELP, command, json_option, model_option, quiet_option,
                          resolve_model, user_errors)
from .names import BACKENDS


@command("vgg-eval")
@model_option()
@click.option("--data", "data_path", type=click.Path(exists=True, file_okay=False), required=True,
              metavar="DIR",
              help="CIFAR-10 folder (cifar-10-batches-py or train/ and test/ image folders); its "
                   "test images are evaluated.")
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
              show_default=True, help="Runtime; auto = the fastest that works for the model here.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N test images (quick checks).")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Images per model call.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              default=None, metavar="FILE",
              help="Also write the reliability diagram (PNG): one view and flip TTA, before and "
                   "after the model's temperature.")
@json_option("Print one JSON object instead of tables.")
@quiet_option("No progress bar or data-loading lines on stderr.")
@user_errors
def main(model_path, data_path, backend, device, limit, batch_size, plot_path, as_json, quiet):
    """Measure a model's test accuracy the way vgg-predict and the demo serve it: one view per
    image, with flip TTA (as vgg-predict --tta) and with flip+shift TTA (6 views, as vgg-predict
    --tta-shift), per-class accuracy and the confusion
    matrix, and how well its probabilities are calibrated (ECE over 15 bins, NLL, Brier score,
    before and after the model's temperature). Every accuracy and calibration figure in the
    README and the model card comes from this command.

    Exit codes: 0 measured; 2 usage or input error (bad model or data); 3 internal error.
    """
    from ..data import load_cifar10
    from ..errors import VggCifarError
    from .evaluation import evaluate_predictor, format_report, plot_calibration
    from .predictor import Predictor

    model_path = resolve_model(model_path)
    if plot_path:  # fail before the evaluation, not after it
        from pathlib import Path

        from ..io import check_writable

        if Path(plot_path).suffix.lower() != ".png":  # the figure is written as PNG bytes
            raise click.BadParameter(f"{plot_path}: the diagram is a PNG; name the file "
                                     "*.png", param_hint="'--plot'")
        check_writable(Path(plot_path).resolve().parent, "--plot folder")
    predictor = Predictor(model_path, backend=backend, device=device)
    # The test images only (or the cache): a damaged training image must not block this.
    data = load_cifar10(data_path, download=False, verbose=not quiet, test_only=True)
    if tuple(data.classes) != tuple(predictor.class_names):
        raise VggCifarError(
            f"the data's classes ({', '.join(data.classes)}) differ from the model's "
            f"({', '.join(predictor.class_names)})")
    size = predictor.input_size
    if tuple(data.test_x.shape[2:]) != (size, size):
        raise VggCifarError(f"the data's images are {tuple(data.test_x.shape[2:])}, the model "
                            f"takes {size}x{size}")
    x, y = data.test_x, data.test_y
    if limit:
        x, y = x[:limit], y[:limit]
    views: dict = {}
    result = evaluate_predictor(predictor, x, y, batch_size=batch_size, progress=not quiet,
                                views=views)
    info = predictor.info
    if plot_path:
        plot_calibration(views, plot_path,
                         f"{info.name} ({info.arch or 'unknown arch'}), {result['n']:,} test "
                         f"images, temperature T = {info.temperature:.4g}")
    if as_json:
        click.echo(json.dumps({
            "model": str(model_path), "name": info.name, "arch": info.arch,
            "backend": predictor.backend_name, "data": data.source, "data_format": data.kind,
            "split": "test", "classes": list(predictor.class_names), **result},
            allow_nan=False))
        return
    click.echo(format_report(result, predictor.class_names,
                             f"{info.name} ({info.arch or 'unknown arch'}) on "
                             f"{predictor.backend_name}",
                             f"{data.source} ({data.kind}), {result['n']:,} test images"))


if __name__ == "__main__":
    main()
