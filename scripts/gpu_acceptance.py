#!/usr/bin/env python3
"""GPU acceptance: check every GPU claim of vggcifar with one command on one CUDA GPU.

    PYTHONPATH=src python scripts/gpu_acceptance.py ../shared/data/cifar10-jpg.tar.gz OUT_DIR
    PYTHONPATH=src python scripts/gpu_acceptance.py --dry-run OUT_DIR     # CPU, tiny, for CI

Needs torch, torchvision, onnx, onnxruntime, click, matplotlib and tqdm (no gradio, no pip
install, no network). Within --budget-s seconds (default 540, i.e. 9 minutes) it:

1. unpacks the archive and trains VGG16 on --split 1 with the fast recipe, timing the run from
   process start (data loading and compilation included) and the training steps alone;
2. runs the study's `paper` preset with the time left (smallest splits first, so the largest come
   last; whatever finished is reported);
3. exports the VGG16 checkpoint to ONNX fp32 and fp16 and runs the parity report on CUDA
   (TensorRT too when installed);
4. measures training throughput (eager vs torch.compile), the loader benchmark
   (benchmarks/bench_loader.py on CUDA) and inference throughput;
5. writes logs, summary.json, the reports, figures and the fp16 weights (split into files under
   16 MB) to OUT_DIR, and prints a results table last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# The recipe of the shipped VGG16 (also recorded in models/README.md).
GPU_RECIPE = ["--arch", "vgg16", "--split", "1", "--epochs", "40", "--batch-size", "512",
              "--lr", "0.4", "--nesterov", "--label-smoothing", "0.1", "--tta", "--compile",
              "--device", "cuda"]
DRY_RECIPE = ["--arch", "vgg11", "--width", "0.125", "--head", "linear", "--split", "1",
              "--steps", "6", "--lr", "0.05", "--device", "cpu"]


def elapsed() -> float:
    return time.perf_counter() - T0


def run_cli(module: str, args: list[str], log: Path, timeout: float | None = None,
            script: Path | None = None) -> dict:
    """Run ``module.main`` (a click command), or ``script`` when given, in a fresh interpreter;
    log its output."""
    cmd = ([sys.executable, str(script), *args] if script else
           [sys.executable, "-c", f"from {module} import main; main()", *args])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join([module, *args]) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t
    print(f"[{elapsed():6.0f}s] {module} -> {rc} in {wall:.0f}s (log: {log})", flush=True)
    return {"rc": rc, "wall_s": wall, "log": str(log), "args": args}


def unpack(archive: Path, dest: Path) -> Path:
    if not (dest / "train").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    return dest


def make_dry_archive(out: Path) -> Path:
    from vggcifar.testing import write_image_folder

    src = write_image_folder(out / "dry-src", n_train=200, n_test=100)
    archive = out / "dry-cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for sub in ("train", "test"):
            tar.add(src / sub, arcname=sub)
    shutil.rmtree(src)
    return archive


def train_throughput(device: str, compile_: bool, dry: bool, steps: int) -> dict:
    """Training images/s of VGG16 (bf16, channels_last on CUDA) on device-loader batches,
    timed with CUDA events after warm-up."""
    import torch

    from vggcifar.data import DeviceLoader
    from vggcifar.models import create_model
    from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    batch = 512 if cuda else 32
    model = create_model("vgg11" if dry else "vgg16", width=0.125 if dry else 1.0).to(dev)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fwd = torch.compile(model) if compile_ else model
    imgs = torch.randint(0, 256, (batch * 8, 3, 32, 32), dtype=torch.uint8)
    loader = DeviceLoader(imgs, torch.randint(0, 10, (len(imgs),)), batch, train=True,
                          mean=CIFAR10_MEAN, std=CIFAR10_STD, device=dev,
                          dtype=torch.bfloat16 if cuda else torch.float32, channels_last=True)

    def step(x, y):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batches = list(loader)
    t_first = time.perf_counter()
    for x, y in batches[:3]:  # warm-up, includes compilation
        step(x, y)
    if cuda:
        torch.cuda.synchronize()
    warm = time.perf_counter() - t_first
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    if cuda:
        end.record()
        torch.cuda.synchronize()
        secs = start.elapsed_time(end) / 1000
    else:
        secs = time.perf_counter() - t
    return {"compile": compile_, "batch": batch, "steps": steps,
            "images_per_s": steps * batch / secs, "warmup_s": warm}


def inference_throughput(checkpoint: Path, device: str, onnx_files: list[Path], dry: bool) -> list:
    """Inference images/s at batch 1024 (64 on CPU): PyTorch fp32/bf16 and onnxruntime."""
    import numpy as np
    import torch

    import vggcifar

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    batch = 1024 if cuda else 64
    reps = 3 if dry else 30
    model, _ = vggcifar.load_checkpoint(checkpoint, map_location=dev)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    rows = []
    for name, dtype in (("torch fp32", None), ("torch bf16 autocast", torch.bfloat16)):
        if dtype is not None and not cuda:
            continue
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype is not None):
            for _ in range(3):
                model(x)
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                model(x)
            if cuda:
                torch.cuda.synchronize()
        rows.append({"engine": name, "batch": batch, "images_per_s": reps * batch / (time.perf_counter() - t)})
    try:
        import onnxruntime as ort
    except ImportError:
        return rows
    providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
    xin = np.random.rand(batch, 3, 32, 32).astype(np.float32)
    for f in onnx_files:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(f), opts, providers=providers)
        except Exception as e:  # record and go on: the table says what failed
            rows.append({"engine": f"onnxruntime {f.name}", "error": str(e)[:200]})
            continue
        name = sess.get_inputs()[0].name
        for _ in range(2):
            sess.run(None, {name: xin})
        t = time.perf_counter()
        for _ in range(reps):
            sess.run(None, {name: xin})
        rows.append({"engine": f"onnxruntime {sess.get_providers()[0]} {f.name}", "batch": batch,
                     "images_per_s": reps * batch / (time.perf_counter() - t)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive", nargs="?", help="cifar10-jpg.tar.gz (not needed with --dry-run)")
    ap.add_argument("out", help="output folder")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny synthetic data and model on the CPU: checks every stage in seconds")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    args = ap.parse_args()
    if not args.dry_run and not args.archive:
        ap.error("give the data archive (or --dry-run)")
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    import torch

    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch; use --dry-run to check the script on a CPU",
              file=sys.stderr)
        return 2
    summary: dict = {"dry_run": dry, "budget_s": args.budget_s, "device": device,
                     "torch": str(torch.__version__),
                     "gpu": torch.cuda.get_device_name(0) if not dry else None}
    archive = make_dry_archive(out) if dry else Path(args.archive).resolve()
    data = unpack(archive, out / "data")
    summary["unpack_s"] = elapsed()
    os.environ.setdefault("VGGCIFAR_CACHE", str(out / "cache"))

    # 1. The headline run.
    recipe = list(DRY_RECIPE if dry else GPU_RECIPE)
    if args.epochs:
        recipe[recipe.index("--epochs") + 1] = str(args.epochs)
    train_args = recipe + ["--data", str(data), "--out", str(out / "runs"), "--name", "vgg16-split1",
                           "--seed", "0", "--quiet"]
    r = run_cli("vggcifar.training.cli", train_args, out / "logs" / "1-train.log")
    run_dir = out / "runs" / "vgg16-split1"
    summary["train"] = {**r, "command": "vgg-train " + " ".join(train_args)}
    if (run_dir / "summary.json").exists():
        s = json.loads((run_dir / "summary.json").read_text())
        summary["train"].update({k: s.get(k) for k in (
            "test_accuracy", "per_class_accuracy", "total_time_s", "train_time_s",
            "mean_epoch_time_s", "mean_images_per_s", "peak_memory_mb", "peak_reserved_mb",
            "epochs", "steps")})
        summary["train"]["process_wall_s"] = r["wall_s"]
    ckpt = run_dir / "best.pt"

    # 2. The study, with the time left after reserving time for stages 3-5.
    reserve = 20.0 if dry else 120.0
    left = args.budget_s - elapsed() - reserve
    study_dir = out / "study"
    study_args = (["--splits", "0.5,1", "--arch", "vgg11", "--width", "0.125", "--head", "linear",
                   "--steps", "3", "--device", "cpu"] if dry else
                  ["--preset", "paper", "--device", "cuda", "--compile"])
    study_args += ["--data", str(data), "--out", str(study_dir), "--quiet"]
    if left > 30:
        r = run_cli("vggcifar.study.cli", study_args, out / "logs" / "2-study.log", timeout=left)
    else:
        r = {"rc": "skipped", "wall_s": 0.0, "reason": f"only {left:.0f}s left"}
    summary["study"] = {**r, "command": "vgg-study " + " ".join(study_args)}
    if study_dir.exists():
        rr = run_cli("vggcifar.study.cli", ["--out", str(study_dir), "--report-only"],
                     out / "logs" / "2-study-report.log")
        if (study_dir / "report.json").exists():
            rep = json.loads((study_dir / "report.json").read_text())
            summary["study"]["test_accuracy"] = {
                f"{s['split']:g}": s.get("test_accuracy") for s in rep.get("splits", [])}
        summary["study"]["report_rc"] = rr["rc"]

    # 3. Export and parity on the GPU.
    export_args = [str(ckpt), "--onnx", "--fp16", "--out", str(out / "export"), "--data", str(data)]
    try:
        import tensorrt  # noqa: F401
        export_args.append("--tensorrt")
    except ImportError:
        pass
    r = run_cli("vggcifar.export.cli", export_args, out / "logs" / "3-export.log")
    summary["export"] = {**r, "command": "vgg-export " + " ".join(export_args)}
    parity = out / "export" / "parity.json"
    if parity.exists():
        summary["export"]["parity"] = json.loads(parity.read_text())

    # 4. Throughput.
    tp = []
    for comp in (False, True):
        try:
            tp.append(train_throughput(device, comp, dry, steps=5 if dry else 60))
        except Exception as e:  # keep going: a failed measurement is a result too
            tp.append({"compile": comp, "error": f"{type(e).__name__}: {e}"[:300]})
    summary["train_throughput"] = tp
    loader_json = out / "loader.json"
    bench = ["--data", str(data), "--device", device, "--json", str(loader_json)] + (
        ["--images", "1000", "--workers", "0"] if dry else [])
    run_cli("benchmarks/bench_loader.py", bench, out / "logs" / "4-loader.log", timeout=120,
            script=ROOT / "benchmarks" / "bench_loader.py")
    summary["loader"] = (json.loads(loader_json.read_text()) if loader_json.exists()
                         else {"error": "see logs/4-loader.log"})
    onnx_files = sorted((out / "export").glob("*.onnx")) if (out / "export").exists() else []
    try:
        summary["inference_throughput"] = inference_throughput(ckpt, device, onnx_files, dry)
    except Exception as e:
        summary["inference_throughput"] = [{"error": f"{type(e).__name__}: {e}"[:300]}]

    # 5. Artefacts: fp16 weights in parts under 16 MB, figures, summary, table.
    if ckpt.exists():
        from vggcifar.shipped import pack_shipped

        manifest = pack_shipped(ckpt, out / "model-fp16")
        summary["model_fp16"] = str(manifest)
        for f in ("curves.png", "confusion.png", "samples.png", "per_class.csv", "metrics.csv",
                  "summary.json", "config.json"):
            if (run_dir / f).exists():
                shutil.copy(run_dir / f, out / f"train-{f}")
    if dry:
        shutil.rmtree(out / "data", ignore_errors=True)
    summary["total_s"] = elapsed()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_table(summary)
    ok = summary["train"]["rc"] == 0 and summary["export"]["rc"] == 0
    return 0 if ok else 1


def print_table(s: dict) -> None:
    t = s.get("train", {})
    lines = [("device", s.get("gpu") or s["device"]),
             ("train rc", t.get("rc")),
             ("VGG16 test accuracy", f"{t['test_accuracy']:.2%}" if t.get("test_accuracy") is not None else "-"),
             ("run wall time (process start)", f"{t.get('process_wall_s', 0):.1f}s"),
             ("training steps time", f"{t.get('train_time_s') or 0:.1f}s"),
             ("study", f"rc {s['study'].get('rc')}, test acc {s['study'].get('test_accuracy')}"),
             ("export rc", s["export"].get("rc"))]
    ld = s.get("loader", {})
    lines.append(("loader img/s: device vs classic", f"{ld['device_loader_img_s']:,} vs "
                  f"{ld['classic_loader_img_s']:,} ({ld['speedup']}x)" if "speedup" in ld
                  else ld.get("error")))
    for row in s.get("train_throughput", []):
        lines.append((f"train img/s ({'compiled' if row.get('compile') else 'eager'})",
                      f"{row['images_per_s']:,.0f}" if "images_per_s" in row else row.get("error")))
    for row in s.get("inference_throughput", []):
        lines.append((f"infer img/s {row.get('engine', '')}",
                      f"{row['images_per_s']:,.0f}" if "images_per_s" in row else row.get("error")))
    lines.append(("total script time", f"{s['total_s']:.0f}s of {s['budget_s']:.0f}s budget"))
    w = max(len(k) for k, _ in lines)
    print("\n" + "=" * (w + 30))
    for k, v in lines:
        print(f"{k:<{w}}  {v}")
    print("=" * (w + 30))


if __name__ == "__main__":
    sys.exit(main())
