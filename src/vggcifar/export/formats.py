"""The export formats: :data:`FORMATS` is the table (like ultralytics' exporter table), one row
per format, each with a small build function that writes its file into a staging folder and
returns its parity figures. :mod:`.pipeline` runs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import VggCifarError
from ..runtime.contract import INPUT_NAME, LOGITS, build_metadata, write_engine_sidecar
from ..runtime.onnx import ort_session
from . import parity
from .onnx_export import export_onnx
from .options import DEFAULT_OPSET, EXPORTERS, MAX_BATCH

TRT_TIMING_CACHE = "tensorrt-timing.cache"
ORT_TRT_CACHE = "ort-tensorrt-cache"


@dataclass
class ExportJob:
    """State shared by the format builders during one :func:`export_checkpoint` call."""

    model: torch.nn.Module
    meta: dict
    source_sha256: str
    stage: Path
    out: Path
    inputs: parity.ParityInputs
    reference: dict
    formats: tuple[str, ...]
    opset: int = DEFAULT_OPSET
    exporter: str = "auto"
    calib: np.ndarray | None = None
    calib_method: str = "minmax"
    max_batch: int = MAX_BATCH
    progress: bool = False
    log: Callable[[str], None] = lambda msg: None
    files: dict = field(default_factory=dict)          # format key -> staged path
    triton_dir: Path | None = None                     # --triton: the model repository
    triton_name: str | None = None
    chosen_exporter: str | None = None
    exporter_attempts: list = field(default_factory=list)

    @property
    def fp16(self) -> bool:
        return "fp16" in self.formats

    def metadata(self, precision: str, exporter: str | None = None) -> dict[str, str]:
        return build_metadata(self.meta, precision=precision,
                              exporter=exporter or self.chosen_exporter or "unknown",
                              source_sha256=self.source_sha256)

    def onnx_parity(self, path: Path, precision: str, cpu_rows: list | None = None) -> list[dict]:
        """Parity rows on onnxruntime CPU (reusing ``cpu_rows`` if given) and every GPU
        provider that really works here."""
        rows = list(cpu_rows) if cpu_rows is not None else self._cpu_rows(path, precision)
        for runtime, sess in parity.gpu_ort_sessions(path, precision=precision,
                                                     trt_cache_dir=self.out / ORT_TRT_CACHE):
            self.log(f"  parity on {runtime}")
            rows += parity.parity_rows(parity.ort_runner(sess), self.reference, self.inputs,
                                       precision=precision, runtime=runtime,
                                       progress=self.progress)
        return rows

    def _cpu_rows(self, path: Path, precision: str) -> list[dict]:
        sess, _ = ort_session(path)
        rows = parity.parity_rows(parity.ort_runner(sess), self.reference, self.inputs,
                                  precision=precision, runtime="ort-cpu", progress=self.progress)
        bad = _dynamic_batch_failures(sess, self.inputs.random)
        if bad:
            rows[0]["failures"] = rows[0]["failures"] + bad
        return rows


def _dynamic_batch_failures(sess, like: np.ndarray) -> list[str]:
    """Batches of 1 and 7 must give the rows a batch of 8 gives (the batch axis is really
    dynamic and nothing mixes images). ``like``: any ``[N, 3, S, S]`` input, for the shape."""
    x = parity.random_inputs(8, like.shape[-1], seed=12345)
    full = sess.run([LOGITS], {INPUT_NAME: x})[0]
    bad = []
    for n in (1, 7):
        part = sess.run([LOGITS], {INPUT_NAME: np.ascontiguousarray(x[:n])})[0]
        if part.shape[0] != n or not np.allclose(part, full[:n], rtol=1e-4, atol=1e-4):
            bad.append(f"batch {n} output differs from the same images in a batch of 8")
    return bad


def _entry(fmt: "ExportFormat", path: Path, precision: str, rows: list[dict], **extra) -> dict:
    fails = [f"{r['runtime']} {r['inputs']}: {f}" for r in rows for f in r["failures"]]
    return {"format": fmt.key, "name": fmt.title, "file": path.name, "precision": precision,
            "size_bytes": path.stat().st_size, "status": "FAIL" if fails else "PASS",
            "failures": fails, "results": rows, **extra}


# ---------------------------------------------------------------------- one function per format
def _build_onnx(job: ExportJob, fmt: "ExportFormat") -> dict:
    """fp32 ONNX. With exporter "auto", tries each exporter in :data:`EXPORTERS` order and keeps
    the first whose file passes fp32 parity on CPU (the dynamo exporter of torch 2.9+ has had
    accuracy bugs on convnets, so the result decides, not the version)."""
    candidates = EXPORTERS if job.exporter == "auto" else (job.exporter,)
    best = None  # (failures, max diff, exporter, path, rows)
    for ex in candidates:
        path = job.stage / f"{ex}-{fmt.filename('fp32')}"
        job.log(f"exporting ONNX fp32 with the {ex} exporter (opset {job.opset})")
        try:
            export_onnx(job.model, job.meta["preproc"], path, precision="fp32", exporter=ex,
                        opset=job.opset, metadata=job.metadata("fp32", ex))
        except Exception as e:  # exporter crash, or its output failing the ONNX checker
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            job.exporter_attempts.append({"exporter": ex, "status": "ERROR", "error": msg[:500]})
            job.log(f"  {ex} exporter failed: {msg[:200]}")
            continue
        rows = job._cpu_rows(path, "fp32")
        fails = [f for r in rows for f in r["failures"]]
        worst = max(r["max_abs_diff"] for r in rows)
        job.exporter_attempts.append({"exporter": ex, "status": "FAIL" if fails else "PASS",
                                      "max_abs_diff": worst, "failures": fails})
        if best is None or len(fails) < len(best[0]) or (
                len(fails) == len(best[0]) and worst < best[1]):
            best = (fails, worst, ex, path, rows)
        if not fails:
            break
        job.log(f"  {ex} export fails fp32 parity: {'; '.join(fails)}")
    if best is None:
        errors = "; ".join(f"{a['exporter']}: {a['error']}" for a in job.exporter_attempts)
        raise VggCifarError(f"no exporter could export the model to ONNX ({errors})")
    _, _, ex, path, rows = best
    job.chosen_exporter = ex
    final = job.stage / fmt.filename("fp32")
    os.replace(path, final)
    for a in candidates:  # drop the other exporters' files
        (job.stage / f"{a}-{fmt.filename('fp32')}").unlink(missing_ok=True)
    job.files[fmt.key] = final
    rows = job.onnx_parity(final, "fp32", cpu_rows=rows)
    return _entry(fmt, final, "fp32", rows, exporter=ex)


def _build_fp16(job: ExportJob, fmt: "ExportFormat") -> dict:
    """fp16 ONNX: fp16 weights and activations, float32 input/outputs (casts in the graph)."""
    ex = job.chosen_exporter or ("torchscript" if job.exporter == "auto" else job.exporter)
    path = job.stage / fmt.filename("fp16")
    job.log(f"exporting ONNX fp16 with the {ex} exporter")
    try:
        export_onnx(job.model, job.meta["preproc"], path, precision="fp16", exporter=ex,
                    opset=job.opset, metadata=job.metadata("fp16", ex))
    except RuntimeError as e:
        raise VggCifarError(f"fp16 export failed: {e}") from e
    job.files[fmt.key] = path
    return _entry(fmt, path, "fp16", job.onnx_parity(path, "fp16"), exporter=ex)


def _build_int8(job: ExportJob, fmt: "ExportFormat") -> dict:
    """int8 ONNX: static QDQ quantisation of the fp32 file, calibrated on training images."""
    from .quantize import quantize_int8

    path = job.stage / fmt.filename("int8")
    job.log(f"quantising to int8 ({len(job.calib)} calibration images, {job.calib_method})")
    quantize_int8(job.files["onnx"], path, job.calib, metadata=job.metadata("int8"),
                  method=job.calib_method)
    job.files[fmt.key] = path
    rows = job.onnx_parity(path, "int8")
    extra = {"exporter": job.chosen_exporter, "calibration_images": int(len(job.calib)),
             "calibration_method": job.calib_method}
    test = [r for r in rows if r["inputs"] == "test" and r["runtime"] == "ort-cpu"]
    if test:
        extra["accuracy_change_points"] = 100.0 * (test[0]["accuracy"]
                                                   - test[0]["accuracy_reference"])
    return _entry(fmt, path, "int8", rows, **extra)


def _build_tensorrt(job: ExportJob, fmt: "ExportFormat") -> dict:
    """Serialized TensorRT engine (fp16 with --fp16, else fp32), batch 1..max_batch."""
    from ..runtime.tensorrt import EngineRunner
    from . import tensorrt

    precision = "fp16" if job.fp16 else "fp32"
    src_key = "fp16" if tensorrt.engine_source(job.fp16) == "fp16" else "onnx"
    path = job.stage / fmt.filename(precision)
    job.log(f"building TensorRT {precision} engine from {job.files[src_key].name} "
            f"(batch 1..{job.max_batch})")
    info = tensorrt.build_engine(job.files[src_key], path, fp16=job.fp16,
                                 max_batch=job.max_batch, timing_cache=job.out / TRT_TIMING_CACHE)
    # Engines cannot carry metadata; a sidecar JSON holds the same keys as the ONNX files.
    write_engine_sidecar(path, {**job.metadata(precision),
                                **{k: str(v) for k, v in info.items()}})
    job.files[fmt.key] = path
    runner = EngineRunner(path)
    rows = parity.parity_rows(runner, job.reference, job.inputs, precision=precision,
                              runtime="tensorrt", batch_size=min(parity.BATCH, job.max_batch),
                              progress=job.progress)
    return _entry(fmt, path, precision, rows, exporter=job.chosen_exporter, **info)


def _build_triton(job: ExportJob, fmt: "ExportFormat") -> dict:
    """Triton model repository around the fp32 ONNX file, written straight into
    ``job.triton_dir`` (see :mod:`.triton`), then parsed back and checked against the graph; the
    copied file gets the same parity check as the fp32 file."""
    from .. import __version__
    from . import triton

    name = job.triton_name
    job.log(f"writing the Triton model repository {job.triton_dir}/{name} "
            f"(max_batch_size {job.max_batch})")
    comment = (f"Written by vgg-export (vggcifar {__version__}) from {job.meta.get('arch')} "
               f"checkpoint sha256 {job.source_sha256[:16]}.\n"
               "Input image: float32 RGB in [0, 1], [N, 3, H, W]; normalisation is in the graph.")
    model_dir = triton.write_triton_repo(job.files["onnx"], job.triton_dir, name,
                                         job.meta["preproc"].class_names, max_batch=job.max_batch,
                                         comment=comment)
    path = model_dir / triton.MODEL_VERSION / triton.MODEL_FILE
    rows = job._cpu_rows(path, "fp32")
    problems = triton.validate_model_dir(model_dir, job.meta["preproc"].class_names)
    rows[0]["failures"] = rows[0]["failures"] + [f"config.pbtxt: {p}" for p in problems]
    entry = _entry(fmt, path, "fp32", rows, exporter=job.chosen_exporter,
                   triton_model=name, triton_repository=str(job.triton_dir.resolve()),
                   config=str(model_dir / triton.CONFIG_NAME), structural_problems=problems)
    entry["file"] = f"{name}/{triton.MODEL_VERSION}/{triton.MODEL_FILE}"
    entry["path"] = str(path)
    return entry


@dataclass(frozen=True)
class ExportFormat:
    """One row of the format table.

    ``key``: the CLI flag (``--<key>``) and the report's ``format``; ``stem``/``suffix`` name the
    file (``model.onnx``, ``model-fp16.onnx``, ...); ``build(job, fmt)`` writes it into the
    staging folder and returns the report entry.
    """

    key: str
    title: str
    stem: str
    suffix: str
    build: Callable[[ExportJob, "ExportFormat"], dict]

    def filename(self, precision: str) -> str:
        tag = "" if precision == "fp32" else f"-{precision}"
        return f"{self.stem}{tag}{self.suffix}"


FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("onnx", "ONNX fp32", "model", ".onnx", _build_onnx),
    ExportFormat("fp16", "ONNX fp16", "model", ".onnx", _build_fp16),
    ExportFormat("int8", "ONNX int8", "model", ".onnx", _build_int8),
    ExportFormat("tensorrt", "TensorRT", "model", ".engine", _build_tensorrt),
    ExportFormat("triton", "Triton repo", "model", ".onnx", _build_triton),
)
FORMAT_KEYS = tuple(f.key for f in FORMATS)
