"""Inference benchmark, every runtime side by side on the CPU: PyTorch eager fp32 and bf16
autocast, onnxruntime fp32 and int8, OpenVINO fp32 and bf16 (and PyTorch CUDA, onnxruntime CUDA
and a TensorRT engine when a GPU is usable).

For each backend: batch-1 latency (median and p99) and images/s, batch-64 throughput, and top-1
accuracy on real CIFAR-10 test images. The ONNX files are produced by
``vggcifar.export.export_checkpoint`` (with its parity check) into ``--work``; OpenVINO compiles
the fp32 export as ``--backend openvino`` does (OpenVINO 2026.4 cannot compile the int8 QDQ file:
"No suitable implementations").

    python benchmarks/bench_inference.py CHECKPOINT --data data/cifar10-jpg

Latency and throughput do not depend on the weights; accuracy does, so always state which
checkpoint the numbers came from (the script prints it with its sha256).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vggcifar.checkpoint import load_checkpoint
from vggcifar.data import load_cifar10
from vggcifar.export import export_checkpoint
from vggcifar.export import parity as P
from vggcifar.preprocessing import normalize, uint8_to_unit
from vggcifar.training.config import cpu_bf16_support


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure_all(backends: list[tuple[str, object]], images: np.ndarray, labels: np.ndarray,
                args) -> list[dict]:
    """Latency, throughput and accuracy of each ``(name, fn)`` backend, ``fn``: ``[N, 3, 32, 32]``
    float32 in [0, 1] -> logits.

    The CPU is shared with other jobs, so the timings are interleaved: ``args.rounds`` rounds,
    each timing every backend in turn, so that a busy period slows all backends alike instead of
    whichever happened to run then.
    """
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 3, 32, 32), dtype=np.float32)
    x64 = rng.random((64, 3, 32, 32), dtype=np.float32)
    lat = {n: [] for n, _ in backends}
    thr = {n: [] for n, _ in backends}
    for _, fn in backends:  # warm-up: allocations, kernel selection, thread pools
        for _ in range(5):
            fn(x1)
        fn(x64)
    per_round_lat = max(1, args.latency_iters // args.rounds)
    per_round_thr = max(1, args.throughput_iters // args.rounds)
    for _ in range(args.rounds):
        for name, fn in backends:
            for _ in range(per_round_lat):
                t = time.perf_counter()
                fn(x1)
                lat[name].append(time.perf_counter() - t)
            for _ in range(per_round_thr):
                t = time.perf_counter()
                fn(x64)
                thr[name].append(64 / (time.perf_counter() - t))
    rows = []
    for name, fn in backends:
        logits = P.run_batched(fn, images, batch_size=256)
        row = {"backend": name,
               "latency_b1_median_ms": 1e3 * statistics.median(lat[name]),
               "latency_b1_p99_ms": 1e3 * float(np.percentile(lat[name], 99)),
               "throughput_b64_img_s": statistics.median(thr[name]),
               "throughput_b64_best_img_s": max(thr[name]),
               "accuracy": float((logits.argmax(1) == labels).mean()),
               "accuracy_images": int(len(labels))}
        print(f"  {name:40s} b1 {row['latency_b1_median_ms']:7.2f} ms (p99 "
              f"{row['latency_b1_p99_ms']:7.2f})  b64 {row['throughput_b64_img_s']:8.1f} img/s "
              f"(best {row['throughput_b64_best_img_s']:.1f})  acc {row['accuracy']:.2%}",
              file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def torch_fn(model, preproc, device="cpu", dtype=torch.float32, channels_last=False,
             autocast=False):
    """``autocast``: bf16 autocast (the weights stay fp32), as vgg-train's --amp on CPU."""
    model = model.to(device, dtype).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(device)
        t = normalize(t, preproc.mean, preproc.std).to(dtype)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.autocast(t.device.type, torch.bfloat16, enabled=autocast):
            return model(t).float().cpu().numpy()

    return run


def ort_fn(path, provider="CPUExecutionProvider", options=None, threads=None):
    from vggcifar.runtime.onnx import ort_session

    sess, active = ort_session(path, provider, options=options, threads=threads)
    return None if active != provider else P.ort_runner(sess)


def openvino_fns(onnx_file) -> list[tuple[str, object]]:
    """OpenVINO on the fp32 export in each precision this CPU runs natively, compiled as
    ``--backend openvino`` compiles it; none where openvino is not importable."""
    from vggcifar.runtime.openvino import cpu_precision, openvino_status
    from vggcifar.serving.backends import OpenVinoBackend

    ok, reason = openvino_status()
    if not ok:
        print(f"  (no OpenVINO: {reason})", file=sys.stderr)
        return []
    native, why = cpu_precision()
    print(f"  (OpenVINO: {reason}; native precision {native}: {why})", file=sys.stderr)
    return [(f"openvino {p} (cpu)", OpenVinoBackend(onnx_file, "cpu", precision=p).logits)
            for p in dict.fromkeys(["fp32", native])]


def to_markdown(rows: list[dict], baseline: str) -> str:
    base = next((r for r in rows if r["backend"] == baseline), None)
    head = ("| Backend | b64 throughput median (img/s) | b64 best (img/s) | b1 (img/s) | "
            "b1 latency median (ms) | b1 latency p99 (ms) | b64 vs " + baseline +
            " | Test accuracy |")
    lines = [head, "|---|" + "---:|" * 7]
    for r in rows:
        speed = (f"{r['throughput_b64_img_s'] / base['throughput_b64_img_s']:.2f}x"
                 if base else "-")
        lines.append(f"| {r['backend']} | {r['throughput_b64_img_s']:,.0f} | "
                     f"{r['throughput_b64_best_img_s']:,.0f} | "
                     f"{1e3 / r['latency_b1_median_ms']:,.0f} | {r['latency_b1_median_ms']:.2f} | "
                     f"{r['latency_b1_p99_ms']:.2f} | {speed} | "
                     f"{r['accuracy']:.1%} ({r['accuracy_images']:,} images) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", help="best.pt or shipped .json (default: newest "
                    "runs/*/best.pt, else the shipped model)")
    ap.add_argument("--data", default="data/cifar10-jpg", help="CIFAR-10 folder")
    ap.add_argument("--images", type=int, default=1000, help="test images for accuracy")
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--calib-method", default="minmax")
    ap.add_argument("--latency-iters", type=int, default=200)
    ap.add_argument("--throughput-iters", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPU threads for PyTorch and onnxruntime (OpenVINO: every core, as "
                    "served)")
    ap.add_argument("--work", default=None, help="folder for the exported files (default: temp)")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)

    if args.checkpoint is None:
        from vggcifar.shipped import default_model

        path, reason = default_model()
        print(f"using the {reason}", file=sys.stderr)
        args.checkpoint = str(path)
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="vgg-bench-"))
    print(f"exporting {args.checkpoint} to {work} (fp32 + int8, with parity)", file=sys.stderr)
    t = time.perf_counter()
    report = export_checkpoint(args.checkpoint, ["onnx", "int8"], out=work, data=args.data,
                               parity_images=min(args.images, 1000),
                               calib_images=args.calib_images, calib_method=args.calib_method,
                               log=lambda m: print(m, file=sys.stderr))
    export_s = time.perf_counter() - t

    model, meta = load_checkpoint(args.checkpoint)
    data = load_cifar10(args.data, download=False, verbose=False)
    idx = P.sample_indices(len(data.test_y), args.images, seed=0)
    images = uint8_to_unit(data.test_x[torch.from_numpy(idx)])
    labels = data.test_y[torch.from_numpy(idx)].numpy()

    print(f"benchmarking on {cpu_name()} ({os.cpu_count()} cores, {args.threads} threads)",
          file=sys.stderr)
    fresh = lambda: load_checkpoint(args.checkpoint)[0]  # noqa: E731  (each backend its own copy)
    pre = meta["preproc"]
    backends = [
        ("pytorch eager fp32 (cpu)", torch_fn(model, pre)),
        ("pytorch eager fp32 channels_last (cpu)", torch_fn(fresh(), pre, channels_last=True)),
    ]
    if cpu_bf16_support()[0]:
        backends.append(("pytorch bf16 autocast channels_last (cpu)",
                         torch_fn(fresh(), pre, channels_last=True, autocast=True)))
    backends += [
        ("onnxruntime fp32 (cpu)", ort_fn(work / "model.onnx", threads=args.threads)),
        ("onnxruntime int8 (cpu)", ort_fn(work / "model-int8.onnx", threads=args.threads)),
        *openvino_fns(work / "model.onnx"),
    ]
    if torch.cuda.is_available():
        backends += [("pytorch eager fp32 (cuda)", torch_fn(fresh(), pre, "cuda")),
                     ("pytorch eager fp16 (cuda)", torch_fn(fresh(), pre, "cuda", torch.float16))]
        fn = ort_fn(work / "model.onnx", "CUDAExecutionProvider", {"use_tf32": 0})
        if fn is not None:
            backends.append(("onnxruntime fp32 (cuda)", fn))
        from vggcifar.runtime.tensorrt import EngineRunner, tensorrt_status

        ok, reason = tensorrt_status()
        if ok:
            trt_dir = work / "trt"
            trt_report = export_checkpoint(args.checkpoint, ["onnx", "fp16", "tensorrt"],
                                           out=trt_dir, data=args.data, parity_images=500,
                                           max_batch=256)
            engine = next(e for e in trt_report["formats"] if e["format"] == "tensorrt")
            backends.append(("tensorrt fp16 engine", EngineRunner(trt_dir / engine["file"])))
        else:
            print(f"  (no TensorRT: {reason})", file=sys.stderr)
    load_before = os.getloadavg()
    t = time.perf_counter()
    rows = measure_all(backends, images, labels, args)
    bench_s = time.perf_counter() - t
    load_after = os.getloadavg()

    result = {"checkpoint": report["checkpoint"], "source_sha256": report["source_sha256"],
              "arch": report["arch"], "checkpoint_test_accuracy": report["checkpoint_test_accuracy"],
              "export_status": report["status"], "export_seconds": export_s,
              "bench_seconds": bench_s, "loadavg_before": load_before, "loadavg_after": load_after,
              "int8_parity": next(e for e in report["formats"] if e["format"] == "int8")["results"],
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                          "python": platform.python_version()},
              "versions": report["versions"], "args": vars(args), "rows": rows}
    print(f"\ncheckpoint: {result['checkpoint']} (sha256 {result['source_sha256'][:12]}, "
          f"{result['arch']}, recorded test accuracy {result['checkpoint_test_accuracy']})")
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"{args.threads} threads, GPU: {result['machine']['gpu']}")
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    print(to_markdown(rows, "onnxruntime fp32 (cpu)"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
