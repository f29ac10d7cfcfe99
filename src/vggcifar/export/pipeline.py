"""The export pipeline: :func:`export_checkpoint` validates the request, prepares the parity
inputs and the reference logits once, runs the requested rows of :data:`.formats.FORMATS` in
order into a staging folder, and only when every file was produced publishes them to the output
folder with ``parity.json``. A user error (bad checkpoint, unwritable folder, missing data) leaves
nothing behind; a parity failure keeps the files and the report, marked FAIL.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import load_checkpoint
from ..errors import VggCifarError
from ..io import atomic_write, check_writable, make_shared
from ..preprocessing import uint8_to_unit
from ..runtime.contract import model_kind
from ..source import resolve_source
from . import parity
from .formats import FORMAT_KEYS, FORMATS, ExportJob
from .options import (CALIB_IMAGES, DEFAULT_OPSET, EXPORTERS, MAX_BATCH, PARITY_IMAGES,
                      RANDOM_IMAGES)

REPORT_NAME = "parity.json"


def default_out_dir(checkpoint: str | os.PathLike) -> Path:
    """``<run folder>/export`` for a ``.pt``; ``exports/<name>`` for a shipped ``.json``
    manifest (the models/ folder of an installed package may be read-only)."""
    p = Path(checkpoint)
    if model_kind(p) == "shipped":
        return Path("exports") / p.stem
    return p.parent / "export"


def _prepare_out(out: Path) -> bool:
    """Create ``out`` if needed and prove it is writable. Returns whether it was created.

    Raises:
        VggCifarError: it cannot be created or written.
    """
    created = not out.exists()
    check_writable(out, "output folder")
    return created


def _versions() -> dict:
    import onnx
    import onnxruntime

    from .. import __version__

    v = {"vggcifar": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
         "onnxruntime": onnxruntime.__version__}
    try:
        import tensorrt

        v["tensorrt"] = tensorrt.__version__
    except Exception:
        pass
    return v


@dataclass
class _Request:
    """A validated export request: the formats in build order and the Triton target."""

    wanted: tuple[str, ...]
    triton_dir: Path | None
    triton_name: str | None


def _validate(checkpoint, formats, *, exporter: str, data, max_batch: int, triton_dir,
              triton_name: str | None) -> _Request:
    """Every check that needs no model loaded; nothing is written except the Triton folder.

    Raises:
        VggCifarError: unknown format or exporter, --int8 without --data, a bad --max-batch,
            TensorRT missing, --triton without its folder or with a bad model name.
    """
    unknown = [f for f in formats if f not in FORMAT_KEYS]
    if unknown:
        raise VggCifarError(f"unknown format(s) {unknown}; choose from {', '.join(FORMAT_KEYS)}")
    wanted = ("onnx",) + tuple(k for k in FORMAT_KEYS if k in formats and k != "onnx")
    if exporter not in ("auto",) + EXPORTERS:
        raise VggCifarError(f"unknown exporter {exporter!r}; choose auto, {', '.join(EXPORTERS)}")
    if "int8" in wanted and data is None:
        raise VggCifarError("--int8 needs calibration images: pass --data with CIFAR-10 "
                            "(training images calibrate, test images measure the accuracy change)")
    if max_batch < 1:
        raise VggCifarError(f"--max-batch must be at least 1, got {max_batch}")
    if "tensorrt" in wanted:
        from ..runtime.tensorrt import require_tensorrt

        require_tensorrt()
    if "triton" in wanted:
        from .triton import check_model_name, triton_model_name

        if triton_dir is None:
            raise VggCifarError("the triton format needs the repository folder (--triton DIR)")
        triton_dir = Path(triton_dir)
        triton_name = check_model_name(triton_name or triton_model_name(checkpoint))
        _prepare_out(triton_dir)
    return _Request(wanted, triton_dir, triton_name)


def _inputs(meta: dict, data, *, wanted, parity_images: int, random_images: int,
            calib_images: int, seed: int):
    """``(parity inputs, int8 calibration images [N, 3, S, S] float32 in [0, 1] or None)``;
    the real images come from ``data`` (checked to have the model's classes)."""
    preproc = meta["preproc"]
    cifar = None
    if data is not None:
        from ..data import load_cifar10

        cifar = load_cifar10(data, download=False, verbose=False)
        parity.check_classes(cifar.classes, preproc.class_names)
    inputs = parity.make_parity_inputs(cifar, n_random=random_images, n_test=parity_images,
                                       size=preproc.input_size, seed=seed)
    calib = None
    if "int8" in wanted:
        idx = parity.sample_indices(len(cifar.train_y), calib_images, seed + 1)
        calib = uint8_to_unit(cifar.train_x[torch.from_numpy(idx)])
    return inputs, calib


def _report(job: ExportJob, entries: list[dict], checkpoint, data, seed: int) -> dict:
    """The parity report (before publishing: paths are added by :func:`_publish`)."""
    meta, inputs = job.meta, job.inputs
    return {
        "status": "PASS" if all(e["status"] == "PASS" for e in entries) else "FAIL",
        "checkpoint": str(Path(checkpoint).resolve()), "source_sha256": job.source_sha256,
        "arch": meta["arch"], "model_kwargs": meta.get("model_kwargs"),
        "head": meta.get("head"), "width": meta.get("width"),
        "checkpoint_test_accuracy": meta.get("test_accuracy"),
        "exporter": job.chosen_exporter, "exporter_attempts": job.exporter_attempts,
        "opset": job.opset, "out": str(job.out.resolve()),
        "inputs": {"random": len(inputs.random),
                   "test": 0 if inputs.test is None else len(inputs.test),
                   "data": None if data is None else str(data), "seed": seed},
        "tolerances": parity.tolerances_dict(),
        "tolerance_rule": ("fp32: max |diff| and agreement on every input set; fp16/int8: "
                           "agreement (and int8 accuracy drop) on the real test images, or "
                           "on the random inputs when no --data is given"),
        "formats": entries, "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _publish(report: dict, entries: list[dict], stage: Path, out: Path) -> None:
    """Move the staged files into ``out`` (each rename is atomic) and write ``parity.json``.

    Caches (TensorRT timing cache, onnxruntime's TensorRT engine cache) live in ``out`` directly
    so that later exports reuse them."""
    moved = []
    for path in sorted(stage.iterdir()):
        os.replace(path, out / path.name)
        moved.append(out / path.name)
    atomic_write(out / REPORT_NAME, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    # Staged files (mkstemp) are owner-only; exports are read by serving as another user. Only
    # what this export wrote: any other name in ``out`` (a sidecar name beside an .onnx file)
    # may be someone else's file or link.
    make_shared([out / REPORT_NAME, *moved])
    for e in entries:
        e.setdefault("path", str(out / e["file"]))
    report["report_path"] = str(out / REPORT_NAME)


def export_checkpoint(checkpoint: str | os.PathLike, formats=("onnx",), *,
                      out: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                      opset: int = DEFAULT_OPSET, exporter: str = "auto",
                      parity_images: int = PARITY_IMAGES, random_images: int = RANDOM_IMAGES,
                      calib_images: int = CALIB_IMAGES, calib_method: str = "minmax",
                      max_batch: int = MAX_BATCH, seed: int = 0, progress: bool = False,
                      log: Callable[[str], None] | None = None,
                      triton_dir: str | os.PathLike | None = None,
                      triton_name: str | None = None) -> dict:
    """Export a checkpoint to the requested formats and check each against it.

    Args:
        checkpoint: a ``best.pt``/``last.pt`` or a shipped-model ``.json`` manifest.
        formats: keys of :data:`FORMATS` ("onnx", "fp16", "int8", "tensorrt", "triton"); "onnx"
            (fp32) is always produced because the others are checked against it or built from it.
        out: output folder (default :func:`default_out_dir`).
        data: CIFAR-10 folder: real test images for parity (``parity_images`` of them, sampled)
            and training images for int8 calibration (``calib_images``). Required for "int8".
        opset: ONNX opset. exporter: "auto", "torchscript" or "dynamo".
        random_images: number of random ``[0, 1]`` inputs in the parity check.
        max_batch: largest batch of the TensorRT optimisation profile, and the Triton
            model's ``max_batch_size``.
        triton_dir, triton_name: for "triton", the model repository folder and the model's
            name in it (default :func:`vggcifar.export.triton.triton_model_name`).
        seed: sampling of random inputs, test and calibration images.
    Returns:
        the report (also written to ``<out>/parity.json``): ``status`` "PASS"/"FAIL",
        ``formats`` (one entry per file with its parity ``results``), provenance and versions.
    Raises:
        VggCifarError: user errors; nothing is left in ``out`` in that case.
    """
    log = log or (lambda msg: None)
    for name, v, low in (("seed", seed, 0), ("parity_images", parity_images, 0),
                         ("random_images", random_images, 0), ("calib_images", calib_images, 1)):
        if type(v) is not int or v < low:  # numpy's sampling would fail after the model load
            raise VggCifarError(f"{name} must be an integer >= {low}, got {v!r}")
    req = _validate(checkpoint, formats, exporter=exporter, data=data, max_batch=max_batch,
                    triton_dir=triton_dir, triton_name=triton_name)
    source = resolve_source(checkpoint)  # read and verified once: the model and its digest
    model, meta = load_checkpoint(source)
    sha = source.sha256
    out = Path(out) if out is not None else default_out_dir(checkpoint)
    created = _prepare_out(out)
    stage = Path(tempfile.mkdtemp(prefix=".vgg-export-", dir=out))
    try:
        inputs, calib = _inputs(meta, data, wanted=req.wanted, parity_images=parity_images,
                                random_images=random_images, calib_images=calib_images,
                                seed=seed)
        sizes = ", ".join(f"{n} {len(x)}" for n, x, _ in inputs.sets())
        log(f"reference logits from the checkpoint ({sizes} images)")
        reference = parity.reference_logits(model, meta["preproc"], inputs, progress=progress)
        job = ExportJob(model=model, meta=meta, source_sha256=sha, stage=stage, out=out,
                        inputs=inputs, reference=reference, formats=req.wanted, opset=opset,
                        exporter=exporter, calib=calib, calib_method=calib_method,
                        max_batch=max_batch, progress=progress, log=log,
                        triton_dir=req.triton_dir, triton_name=req.triton_name)
        entries = [fmt.build(job, fmt) for fmt in FORMATS if fmt.key in req.wanted]
        report = _report(job, entries, checkpoint, data, seed)
        _publish(report, entries, stage, out)
        return report
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------- the table
def _fmt_size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def format_table(report: dict) -> str:
    """The report as a text table: one line per file, runtime and input set."""
    head = ("Format", "File", "Size", "Runtime", "Inputs", "max|d|", "mean|d|", "Top-1 agree",
            "Acc torch", "Acc export", "Status")
    lines = [head]
    for e in report["formats"]:
        first = True
        for r in e["results"]:
            status = ("FAIL" if r["failures"] else "PASS") if r["checked"] else "info"
            lines.append((e["name"] if first else "", e["file"] if first else "",
                          _fmt_size(e["size_bytes"]) if first else "", r["runtime"],
                          f"{r['inputs']} {r['n']}", f"{r['max_abs_diff']:.2e}",
                          f"{r['mean_abs_diff']:.2e}", _pct(r["agreement"]),
                          _pct(r["accuracy_reference"]), _pct(r["accuracy"]), status))
            first = False
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    for e in report["formats"]:
        for f in e["failures"]:
            text.append(f"FAIL {e['name']}: {f}")
        if "accuracy_change_points" in e:
            text.append(f"{e['name']}: test accuracy change {e['accuracy_change_points']:+.2f} "
                        "points vs the checkpoint")
    attempts = ", ".join(f"{a['exporter']} {a['status']}" for a in report["exporter_attempts"])
    text.append(f"exporter: {report['exporter']} (tried: {attempts}); opset {report['opset']}")
    text.append(f"overall: {report['status']}; report {report.get('report_path', REPORT_NAME)}")
    return "\n".join(text)
