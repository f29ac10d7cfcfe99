"""Inference images/s on one device: a checkpoint's PyTorch model (fp32, and bf16 autocast on a
GPU) and exported ONNX graphs through the onnx serving backend on each onnxruntime provider this
build has. A measurement to run on a new device (the GPU acceptance script does); failures are
rows too, so one broken runtime never hides the others."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..runtime.onnx import CPU, CUDA, onnxruntime_status
from ..timebox import one_line


def _seconds(fn, reps: int, dev: torch.device | None) -> float:
    """Wall seconds for ``reps`` calls of ``fn()``, queued GPU work on ``dev`` included."""
    cuda = dev is not None and dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def torch_rows(checkpoint: Path, dev: torch.device, batch: int, reps: int) -> list[dict]:
    """The model on ``dev`` (channels-last), ``[batch, 3, 32, 32]`` random input already there,
    3 warm-up calls then ``reps`` timed ones, in fp32 and (on CUDA) bf16 autocast."""
    from ..checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint, map_location=dev)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    rows = []
    for name, amp in (("torch fp32", False), ("torch bf16 autocast", True)):
        if amp and dev.type != "cuda":
            continue
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            for _ in range(3):
                model(x)
            secs = _seconds(lambda: model(x), reps, dev)
        rows.append({"engine": name, "device": dev.type, "batch": batch,
                     "cpu_only": dev.type != "cuda", "images_per_s": round(reps * batch / secs, 1)})
    return rows


def onnx_rows(files: list[Path], dev: torch.device, batch: int, reps: int) -> list[dict]:
    """Each ``.onnx`` file through :class:`~vggcifar.serving.backends.OnnxBackend` (float RGB
    in [0, 1], host arrays in and out), on CUDA when ``dev`` is a GPU and onnxruntime has the
    provider, and on the CPU with a smaller load (``min(batch, 256)``, ``min(reps, 5)``: VGG16
    runs ~1,000s of images/s there). A provider this build lacks gives a ``skipped`` row."""
    from .backends import create_backend

    usable, why = onnxruntime_status()
    if not usable:
        return [{"engine": "onnxruntime", "skipped": why}]
    import onnxruntime

    avail = onnxruntime.get_available_providers()
    x = np.random.rand(batch, 3, 32, 32).astype(np.float32)
    rows = []
    for f in files:
        for provider, device in ((CUDA, "cuda"), (CPU, "cpu")):
            label = f"onnxruntime {provider} {f.name}"
            if provider not in avail:
                rows.append({"engine": label, "skipped": f"{provider} not in this onnxruntime "
                             f"build (providers: {', '.join(avail)})"})
                continue
            if provider == CUDA and dev.type != "cuda":
                continue
            b, n = (min(batch, 256), min(reps, 5)) if device == "cpu" else (batch, reps)
            try:
                backend = create_backend(f, "onnx", device)
                backend.logits(x[:b])  # warm-up
                secs = _seconds(lambda: backend.logits(x[:b]), n, None)
                rows.append({"engine": label, "batch": b, "cpu_only": device == "cpu",
                             "images_per_s": round(n * b / secs, 1)})
            except Exception as e:  # noqa: BLE001 - a failed measurement is a result too
                rows.append({"engine": label, "error": one_line(e)})
    return rows


def inference_rows(checkpoint: Path, dev: torch.device, onnx_files: list[Path], batch: int,
                   reps: int) -> list[dict]:
    """:func:`torch_rows` then :func:`onnx_rows`: ``{"engine", "batch", "images_per_s",
    "cpu_only", ...}`` per measurement, or ``{"engine", "skipped" | "error"}``."""
    return torch_rows(checkpoint, dev, batch, reps) + onnx_rows(onnx_files, dev, batch, reps)
