"""`vgg-study`: command-line front end of :func:`vggcifar.study.run_study`.

Imports only torch-free modules before the command runs (``vgg-study --help`` is fast).
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime

import click
from click.core import ParameterSource

from ..cli_common import Command, command, json_option, user_errors
from ..errors import VggCifarError
from ..training.cli import (check_model_options, config_from_options, refuse_inapplicable,
                            train_options)
from .presets import DEFAULT_SPLITS, PRESETS, apply_preset

STUDY_ONLY = ("splits", "only", "preset", "min_steps", "split_epochs", "out", "resume", "isolate",
              "note", "report_only", "copy_results", "as_json")
REPORT_ONLY_OPTIONS = {"out", "note", "report_only", "copy_results", "as_json", "quiet"}


class _RecordArgs(Command):
    """Keeps the command line as typed, for the report's "Reproduce" section."""

    def parse_args(self, ctx, args):
        ctx.meta["vggcifar.args"] = list(args)
        return super().parse_args(ctx, args)


def _preset_help() -> str:
    return " ".join(f"{name}: {p.description}" for name, p in PRESETS.items())


@command("vgg-study", cls=_RecordArgs)
@click.option("--splits", default=",".join(f"{s:g}" for s in DEFAULT_SPLITS), show_default=True,
              help="Training fractions, comma-separated, each in (0, 1] and given once; one run "
                   "per split.")
@click.option("--only", default=None, metavar="SPLITS",
              help="Train only these of the study's splits now (comma-separated, e.g. 0.8); "
                   "the others wait for a later --resume, and the report lists them as "
                   "unfinished. For a study that takes several sittings: run the most telling "
                   "split first. Not saved with the study.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Defaults for a named study; explicit options override them. " + _preset_help())
@train_options
@click.option("--min-steps", type=int, default=0, show_default=True,
              help="With --epochs: train every split for at least this many optimisation steps "
                   "(small splits get more epochs; 0 = off). Refused with --steps, which sets "
                   "every split's length.")
@click.option("--split-epochs", default=None, metavar="SPLIT:EPOCHS,...",
              help="Epochs of particular splits, e.g. 0.01:300,0.8:95; they replace --epochs "
                   "and --min-steps for the splits named. With --resume: new lengths for splits "
                   "not started yet (e.g. to finish on a slower machine), recorded in the "
                   "report; a started or finished split keeps its own.")
@click.option("--out", default=None, metavar="DIR", type=click.Path(file_okay=False),
              help="Study folder written (default: studies/<preset or arch>-<timestamp>). "
                   "Each split is a run folder inside it.")
@click.option("--resume", is_flag=True,
              help="Continue the study in --out with its saved options, however it stopped: "
                   "finished splits are kept, an interrupted split continues from its last.pt "
                   "(written every epoch).")
@click.option("--isolate/--no-isolate", default=True, show_default=True,
              help="Train each split in its own process, so that peak memory (process RSS on "
                   "CPU, a high-water mark) is measured per split.")
@click.option("--note", default=None,
              help="A line shown at the top of the report (with --report-only: replaces it).")
@click.option("--report-only", is_flag=True,
              help="Only rewrite report.md/report.json/figures of the study in --out.")
@click.option("--copy-results", default=None, metavar="DIR", type=click.Path(file_okay=False),
              help="After the report: copy the study's results without checkpoints into DIR "
                   "(study.json, the report and figures, and each finished split's config.json, "
                   "summary.json, metrics.csv and figures; a few hundred kB, fit to commit). A "
                   "copy of DIR continues with --resume --out on any machine: finished splits "
                   "are kept. Works with --report-only, e.g. while the study still runs.")
@json_option("Print the report's summary as one JSON object (study_dir, report, test_accuracy "
             "and test_accuracy_one_view per split, wall_time_s) instead of lines of text.")
@user_errors
def main(**kw):
    """Train the same VGG on several fractions of the CIFAR-10 training set and write a report
    (report.md, report.json, figures/) on test accuracy, epoch time and peak memory against the
    fraction, next to the original study's numbers.

    Every vgg-train option applies to every split. Example:
    vgg-study --preset cpu-quick --data data/cifar10-jpg --out studies/cpu-quick
    """
    from . import runner

    ctx = click.get_current_context()
    explicit = {k for k in kw if ctx.get_parameter_source(k) in
                (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    command = shlex.join(["vgg-study"] + ctx.meta.get("vggcifar.args", []))
    out = kw["out"]
    if kw["report_only"]:
        stray = sorted(explicit - REPORT_ONLY_OPTIONS)
        if stray:  # they would be ignored silently: a report trains nothing
            raise VggCifarError(
                "--report-only rewrites the report of the study in --out and trains nothing; it "
                "takes only --out, --note, --copy-results, --json and --quiet (drop "
                + ", ".join("--" + k.rstrip("_").replace("_", "-") for k in stray) + ")")
        _report_only(out, kw["note"], kw["as_json"], kw["copy_results"])
        return
    if kw["resume"]:
        preset = _saved_options(kw, explicit)
    else:
        preset = kw["preset"]
        kw = apply_preset(preset, kw, explicit)
        check_model_options(kw["arch"], kw["head"])
        refuse_inapplicable(explicit, kw)
    study = {k: kw.pop(k) for k in STUDY_ONLY}
    config = config_from_options(**kw)
    if not out:
        out = f"studies/{preset or config.arch}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if study["copy_results"]:  # before the training, not after it
        from .layout import check_copy_destination, read_manifest

        created = read_manifest(out).get("created") if study["resume"] else None
        check_copy_destination(out, study["copy_results"], created)
    rep = runner.run_study(out, study["splits"], config, min_steps=study["min_steps"],
                           split_epochs=study["split_epochs"], preset=preset,
                           resume=study["resume"], isolate=study["isolate"], command=command,
                           note=study["note"], only=study["only"])
    result = {"study_dir": out, "report": f"{out}/report.md", **_accuracies(rep),
              "wall_time_s": rep["study"]["wall_time_s"]}
    if study["copy_results"]:
        result["copied"] = _copy(out, study["copy_results"])
    _echo_result(result, study["as_json"])


def _report_only(out: str | None, note: str | None, as_json: bool,
                 copy_to: str | None = None) -> None:
    """``--report-only``: rewrite the report of the study in ``out`` (with a new note), and copy
    its results to ``copy_to``."""
    from .layout import set_note
    from .report import write_report

    if not out:
        raise VggCifarError("--report-only needs --out: the study folder to report on")
    if note is not None:
        set_note(out, note)
    result = {"report": f"{out}/report.md", **_accuracies(write_report(out))}
    if copy_to:
        result["copied"] = _copy(out, copy_to)
    _echo_result(result, as_json)


def _copy(out: str, dest: str) -> dict:
    """``--copy-results``: the study's results without checkpoints into ``dest``."""
    from .layout import copy_results

    files = copy_results(out, dest)
    return {"to": dest, "files": len(files),
            "splits": sorted({f.split("/")[0] for f in files if f.startswith("split-")})}


def _saved_options(kw: dict, explicit: set[str]) -> str | None:
    """``--resume``: fill ``kw`` with the study's saved options where none was given; returns
    the study's preset."""
    from .layout import read_manifest

    if not kw["out"]:
        raise VggCifarError("--resume needs --out: the study folder to continue")
    saved = read_manifest(kw["out"])
    if "preset" in explicit and kw["preset"] != saved.get("preset"):
        raise VggCifarError(f"--resume continues the study with its own preset "
                            f"({saved.get('preset')}); drop --preset {kw['preset']}")
    for k, v in saved["config"].items():
        param = "compile_" if k == "compile" else k
        if param in kw and param not in explicit and param not in STUDY_ONLY:
            kw[param] = v
    if "splits" not in explicit:
        kw["splits"] = ",".join(f"{s:g}" for s in saved["splits"])
    if "min_steps" not in explicit:
        kw["min_steps"] = saved.get("min_steps", 0)
    kept = ",".join(f"{k}:{v}" for k, v in (saved.get("split_epochs") or {}).items())
    if "split_epochs" not in explicit:
        kw["split_epochs"] = kept or None
    elif kept and kw["split_epochs"]:  # given lengths replace the saved ones of those splits
        kw["split_epochs"] = f"{kept},{kw['split_epochs']}"
    return saved.get("preset")


def _accuracies(rep: dict) -> dict:
    """Per split (keyed ``"0.5"``): test accuracy as the runs measured it and one view."""
    return {key: {f"{r['split']:g}": r.get(key) for r in rep["splits"]}
            for key in ("test_accuracy", "test_accuracy_one_view")}


def _echo_result(result: dict, as_json: bool) -> None:
    """The study's summary on stdout: one JSON object, or a few lines of text."""
    if as_json:
        click.echo(json.dumps(result))
        return
    for split, acc in result["test_accuracy"].items():
        one = result.get("test_accuracy_one_view", {}).get(split)
        shown = "-" if acc is None else f"{acc:.2%}"
        click.echo(f"split {split}: test accuracy {shown}"
                   + ("" if one is None else f" ({one:.2%} one view)"))
    wall = (f" after {result['wall_time_s']:.0f} s" if result.get("wall_time_s") is not None
            else "")
    click.echo(f"report: {result['report']}{wall}")
    if result.get("copied"):
        c = result["copied"]
        click.echo(f"copied {c['files']} files (no checkpoints; finished splits: "
                   f"{', '.join(c['splits']) or 'none'}) to {c['to']}")


if __name__ == "__main__":
    main()
