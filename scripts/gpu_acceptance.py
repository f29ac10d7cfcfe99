#!/usr/bin/env python3
"""GPU acceptance: what one short loan of a CUDA GPU can tell about vggcifar, returned whatever fails.

    bash scripts/gpu_acceptance.sh --archive .gpu-data/cifar10-jpg.tar.gz --out "$OUT"
    bash scripts/gpu_acceptance.sh --dry-run --out /tmp/gpu-dry        # CPU, tiny, same code paths

Stages, in this order. Each runs as a subprocess in its own process group (killed as a group,
workers included, when its time is up) and gets min(its cap, time left before the deadline):

    #  stage     cap s  what it tells
    -  prepare       -  versions, GPU, onnxruntime providers, tensorrt; unpack the archive
    0  smoke       100  device-loader gather on CUDA == CPU; 20 bf16 + compile training steps on
                        a small split with evaluation; ONNX export; eager vs compiled img/s
    1  headline    270  VGG16, full training set, bf16, compile, target >= 93.5% test;
                        last.pt only every 10 epochs (--save-every)
    2  export       75  ONNX fp32/fp16 (+ TensorRT if it imports) of the headline model, parity,
                        GPU inference img/s
    3  study       rest shrunk study: 1% and 10% splits; only started with >= 60 s left
    -  pack          -  fp16 model parts + manifest of the headline model into OUT

Deadline: --budget-s (default 540 s) after the script starts, minus a 15 s reserve for packing.
After every stage OUT/summary.json and OUT/results.tar.gz (<= 15 MB: logs with the epoch tables,
metrics.csv, summaries, parity.json, benchmark JSON, figures) are rewritten atomically, so a
later failure or kill loses nothing already measured. OUT ends with at most 8 files (checked
before exit): summary.json, results.tar.gz, the fp16 model manifest and its parts (< 16 MiB
each). Data, the decoded-image cache and checkpoints live in a work folder outside OUT (--work,
default a temporary folder, removed at the end).

Needs torch, torchvision, onnx, onnxruntime, click, matplotlib, tqdm; no gradio (nothing here
imports it), no network, no pip. Exit status: 0 every stage that ran passed and OUT is within
its limits; 1 otherwise (results are still written); 2 usage error or no GPU.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


@dataclass(frozen=True)
class Stage:
    num: int
    name: str
    cap_s: float  # None-like "rest" is float("inf")
    min_s: float  # not started with less time than this
    what: str


STAGES = [
    Stage(0, "smoke", 100, 20, "loader gather CUDA == CPU; 20 bf16+compile steps; export; eager vs compiled"),
    Stage(1, "headline", 270, 30, "VGG16 full set, bf16, compile, target >= 93.5%"),
    Stage(2, "export", 75, 15, "ONNX fp32/fp16 (+TensorRT), parity, inference img/s"),
    Stage(3, "study", float("inf"), 60, "shrunk study: 1% and 10% splits"),
]
DRY_MIN_S = 0.0  # the dry run starts a stage with any time left (so a small budget times out)
RESERVE_S, DRY_RESERVE_S = 15.0, 5.0  # kept for packing after the last stage
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES = 8, 16 * 2**20, 64 * 2**20
MAX_TAR_BYTES = 15 * 10**6
TAR_MEMBER_BUDGET = 14 * 10**6  # uncompressed bytes put in the tarball
LOG_TAIL_BYTES = 2 * 10**6      # longer logs keep their head and tail
TARGET = 0.935
SAVE_EVERY = 10

# The headline recipe: VGG16 on the full training set on a GPU. (The shipped model is a VGG16
# trained on the CPU, 90.42%; see src/vggcifar/weights/README.md.)
GPU_HEADLINE = ["--arch", "vgg16", "--split", "1", "--epochs", "40", "--batch-size", "512",
                "--lr", "0.4", "--nesterov", "--label-smoothing", "0.1", "--tta", "--amp",
                "--compile", "--device", "cuda", "--save-every", str(SAVE_EVERY), "--seed", "0"]
DRY_HEADLINE = ["--arch", "vgg11", "--width", "0.125", "--head", "linear", "--split", "1",
                "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--amp", "--compile", "--device", "cpu",
                "--save-every", "1", "--seed", "0"]
GPU_STUDY = ["--splits", "0.01,0.1", "--arch", "vgg16", "--epochs", "100", "--amp",
             "--device", "cuda", "--save-every", "50"]
DRY_STUDY = ["--splits", "0.5", "--arch", "vgg11", "--width", "0.125", "--head", "linear",
             "--steps", "3", "--device", "cpu"]


def elapsed() -> float:
    return time.perf_counter() - T0


# ====================================================================== small helpers
def atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


def read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_group(pgid: int, proc: subprocess.Popen | None = None, grace_s: float = 3.0) -> bool:
    """SIGTERM the process group, SIGKILL what is left after ``grace_s``; True when no live
    process is left in it. ``proc`` (the group's leader) is reaped on the way."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        t = time.perf_counter()
        while True:
            if proc is not None:
                proc.poll()
            if not group_alive(pgid):
                return True
            if time.perf_counter() - t >= wait:
                break
            time.sleep(0.1)
    return False


def run_group(cmd: list[str], log: Path, timeout: float, env: dict | None = None,
              cwd: Path = ROOT) -> dict:
    """Run ``cmd`` in its own session (process group), output appended to ``log``. On timeout
    the whole group is killed (a study's split worker too); after a normal exit any process
    left in the group is killed as well."""
    t = time.perf_counter()
    with open(log, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=max(0.1, timeout))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
        except BaseException:  # interrupted: take the group down with us
            kill_group(p.pid, p, grace_s=1.0)
            p.wait()
            raise
        gone = kill_group(p.pid, p, grace_s=3.0 if status == "timeout" else 0.5)
        if p.returncode is None:
            p.wait()
        wall = time.perf_counter() - t
        f.write(f"\n[gpu_acceptance] {status} rc={rc} after {wall:.1f}s (limit {timeout:.0f}s); "
                f"process group {'gone' if gone else 'NOT gone'}\n".encode())
    return {"status": status, "rc": rc, "wall_s": round(wall, 2), "group_gone": gone}


# ====================================================================== environment
def environment(device) -> dict:
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": str(torch.__version__),
           "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
           "cudnn": None, "gpu": None, "gpu_count": 0, "cpu_count": os.cpu_count(),
           "platform": platform.platform()}
    try:
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception as e:  # noqa: BLE001
        env["cudnn"] = short_error(e)
    if torch.cuda.is_available():
        env["gpu_count"] = torch.cuda.device_count()
        env["gpu"] = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    from importlib import metadata

    for mod in ("torchvision", "onnx", "onnxruntime", "click", "matplotlib", "tqdm"):
        try:
            env[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            try:  # onnxruntime-gpu and similar distributions of the same module
                env[mod] = str(__import__(mod).__version__)
            except Exception as e:  # noqa: BLE001
                env[mod] = f"not available ({short_error(e)})"
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception as e:  # noqa: BLE001
        env["onnxruntime_providers"] = short_error(e)
    try:
        import tensorrt

        env["tensorrt"] = str(tensorrt.__version__)
    except Exception as e:  # noqa: BLE001
        env["tensorrt"] = f"does not import ({short_error(e)})"
    from vggcifar.training.config import resolve_amp

    env["amp_default_here"] = list(resolve_amp(None, torch.device(device)))
    return env


def tensorrt_imports() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


def make_dry_archive(work: Path) -> Path:
    from vggcifar.testing import write_image_folder

    src = write_image_folder(work / "dry-src", n_train=200, n_test=100)
    archive = work / "dry-cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for sub in ("train", "test"):
            tar.add(src / sub, arcname=sub)
    shutil.rmtree(src)
    return archive


def unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(dest)
    # Accept an archive holding train/ and test/ at its top or one folder down.
    if not (dest / "train").is_dir():
        subs = [d for d in dest.iterdir() if (d / "train").is_dir()]
        if subs:
            return subs[0]
    return dest


# ====================================================================== stage bodies (children)
def _save_stage(ctx: dict, name: str, result: dict) -> None:
    atomic_text(Path(ctx["work"]) / "stages" / f"{name}.json",
                json.dumps(result, indent=2, default=str))


def loader_check(dev, dry: bool) -> dict:
    """The device loader's gather and batches on ``dev`` equal those computed on the CPU."""
    import torch

    from vggcifar.data import DeviceLoader
    from vggcifar.data.loader import gather_augmented
    from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD

    n, batch = (256, 64) if dry else (8192, 512)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    res = {"images": n, "batch": batch, "compared": f"{dev.type} vs cpu",
           "cpu_only": dev.type != "cuda"}
    # The raw gather (crop + flip in one index_select): must be bit-identical.
    kw = dict(train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, channels_last=True, seed=1)
    ref = DeviceLoader(imgs, labels, batch, device="cpu", **kw)
    on = DeviceLoader(imgs, labels, batch, device=dev, **kw)
    idx = torch.randint(0, n, (batch,), generator=g)
    dy, dx = torch.randint(0, 9, (batch,), generator=g), torch.randint(0, 9, (batch,), generator=g)
    flips = torch.rand(batch, generator=g) < 0.5
    a = gather_augmented(ref.images, idx, dy, dx, flips, 32)
    b = gather_augmented(on.images, idx.to(dev), dy.to(dev), dx.to(dev), flips.to(dev), 32)
    res["gather_equal"] = bool(torch.equal(a, b.cpu()))
    for name, dtype, tol in (("fp32", torch.float32, 1e-5), ("bf16", torch.bfloat16, 2 ** -6)):
        ref = DeviceLoader(imgs, labels, batch, device="cpu", dtype=dtype, **kw)
        on = DeviceLoader(imgs, labels, batch, device=dev, dtype=dtype, **kw)
        diff, labels_equal, nb = 0.0, True, 0
        for (xa, ya), (xb, yb) in zip(ref, on):
            assert xb.dtype == dtype
            diff = max(diff, float((xa.float() - xb.float().cpu()).abs().max()))
            labels_equal &= bool(torch.equal(ya, yb.cpu()))
            nb += 1
        res[f"batches_{name}"] = {"batches": nb, "labels_equal": labels_equal,
                                  "max_abs_diff": diff, "tolerance": tol,
                                  "ok": labels_equal and diff <= tol}
    # Throughput of the loader on the device (an epoch of n images, bf16).
    on = DeviceLoader(imgs, labels, batch, device=dev, dtype=torch.bfloat16, **kw)
    for _ in on:  # warm-up
        pass
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t, reps = time.perf_counter(), (2 if dry else 10)
    for e in range(reps):
        on.set_epoch(e)
        for _ in on:
            pass
    if dev.type == "cuda":
        torch.cuda.synchronize()
    res["loader_images_per_s"] = round(reps * n / (time.perf_counter() - t))
    res["ok"] = res["gather_equal"] and all(res[f"batches_{k}"]["ok"] for k in ("fp32", "bf16"))
    return res


def train_throughput(dev, compile_: bool, dry: bool, steps: int) -> dict:
    """Training images/s (bf16 autocast, channels_last, device-loader batches) after warm-up,
    timed with CUDA events on a GPU."""
    import torch

    from vggcifar.data import DeviceLoader
    from vggcifar.models import create_model
    from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD

    cuda = dev.type == "cuda"
    batch = 512 if cuda else 32
    model = create_model("vgg11" if dry else "vgg16", width=0.125 if dry else 1.0).to(dev)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    backend = os.environ.get("VGGCIFAR_COMPILE_BACKEND") or "inductor"
    fwd = torch.compile(model, backend=backend) if compile_ else model
    imgs = torch.randint(0, 256, (batch * 8, 3, 32, 32), dtype=torch.uint8)
    loader = DeviceLoader(imgs, torch.randint(0, 10, (len(imgs),)), batch, train=True,
                          mean=CIFAR10_MEAN, std=CIFAR10_STD, device=dev,
                          dtype=torch.bfloat16, channels_last=True)

    def step(x, y):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batches = list(loader)
    t_first = time.perf_counter()
    for x, y in batches[:1 if dry else 3]:  # warm-up, includes compilation
        step(x, y)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
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
    row = {"model": "vgg11 x0.125" if dry else "vgg16", "compile": compile_,
           "backend": backend if compile_ else None, "batch": batch, "steps": steps,
           "images_per_s": round(steps * batch / secs, 1), "warmup_s": round(warm, 2),
           "device": dev.type, "cpu_only": not cuda}
    if cuda:
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def inference_throughput(checkpoint: Path, dev, onnx_files: list[Path], dry: bool) -> list:
    """Inference images/s at batch 1024 (64 on a CPU): PyTorch fp32 / bf16 and onnxruntime
    (whatever providers it really has; the CPU build labels its rows CPU-only)."""
    import numpy as np
    import torch

    import vggcifar

    cuda = dev.type == "cuda"
    batch = 1024 if cuda else 64
    reps = 3 if dry else 30
    model, _ = vggcifar.load_checkpoint(checkpoint, map_location=dev)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    rows = []
    for name, amp in (("torch fp32", False), ("torch bf16 autocast", True)):
        if amp and not cuda:
            continue
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            for _ in range(3):
                model(x)
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                model(x)
            if cuda:
                torch.cuda.synchronize()
        rows.append({"engine": name, "device": dev.type, "batch": batch, "cpu_only": not cuda,
                     "images_per_s": round(reps * batch / (time.perf_counter() - t), 1)})
    try:
        import onnxruntime as ort
    except ImportError as e:
        return rows + [{"engine": "onnxruntime", "skipped": short_error(e)}]
    avail = ort.get_available_providers()
    xin = np.random.rand(batch, 3, 32, 32).astype(np.float32)
    for f in onnx_files:
        for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
            label = f"onnxruntime {provider} {f.name}"
            if provider not in avail:
                rows.append({"engine": label, "skipped": f"{provider} not in this onnxruntime "
                             f"build (providers: {', '.join(avail)})"})
                continue
            if provider == "CUDAExecutionProvider" and not cuda:
                continue
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            on_cpu = provider == "CPUExecutionProvider"
            # The CPU provider gets a smaller load: VGG16 runs ~1,000s of images/s there.
            b, n = (min(batch, 256), min(reps, 5)) if on_cpu else (batch, reps)
            try:
                sess = ort.InferenceSession(str(f), opts, providers=[provider])
                name = sess.get_inputs()[0].name
                sess.run(None, {name: xin[:b]})
                t = time.perf_counter()
                for _ in range(n):
                    sess.run(None, {name: xin[:b]})
                rows.append({"engine": label, "batch": b, "cpu_only": on_cpu,
                             "images_per_s": round(n * b / (time.perf_counter() - t), 1)})
            except Exception as e:  # noqa: BLE001 - a failed measurement is a result too
                rows.append({"engine": label, "error": short_error(e)})
    return rows


def stage_smoke(ctx: dict) -> int:
    import torch

    from vggcifar.export.formats import export_checkpoint
    from vggcifar.training import TrainConfig, train

    dry, dev = ctx["dry"], torch.device(ctx["device"])
    res: dict = {"device": dev.type, "cpu_only": dev.type != "cuda"}
    work = Path(ctx["work"])
    ok = True

    def step(name, fn):
        nonlocal ok
        t = time.perf_counter()
        print(f"[smoke] {name} ...", flush=True)
        try:
            res[name] = fn()
        except Exception as e:  # noqa: BLE001 - record it and go on with the next check
            import traceback

            traceback.print_exc()
            res[name] = {"error": short_error(e)}
            ok = False
        if isinstance(res[name], dict):
            res[name]["wall_s"] = round(time.perf_counter() - t, 2)
        print(f"[smoke] {name}: {json.dumps(res[name], default=str)[:600]}", flush=True)
        _save_stage(ctx, "smoke", res)

    step("loader", lambda: loader_check(dev, dry))
    if isinstance(res["loader"], dict) and res["loader"].get("ok") is False:
        ok = False

    def train20():
        cfg = TrainConfig(
            arch="vgg11" if dry else "vgg16", width=0.125 if dry else 1.0,
            head="linear" if dry else "mlp", split=0.5 if dry else 0.2, steps=20,
            val_size=50 if dry else 2000, batch_size=32 if dry else 512,
            lr=0.05 if dry else 0.4, nesterov=True, amp=True, compile=True, tta=True,
            data=ctx["data"], out=str(work / "smoke-runs"), name="smoke", device=dev.type,
            seed=0, progress=True)
        s = train(cfg)
        return {k: s.get(k) for k in (
            "test_accuracy", "test_accuracy_one_view", "best_val_accuracy", "steps", "compile",
            "amp", "amp_reason", "batch_size", "total_time_s", "train_time_s",
            "mean_images_per_s", "peak_memory_mb", "peak_reserved_mb", "run_dir")}

    step("train", train20)
    if "error" in res["train"] or not str(res["train"].get("compile", "")).startswith("compiled"):
        ok = False

    def export():
        ckpt = Path(res["train"]["run_dir"]) / "best.pt"
        rep = export_checkpoint(ckpt, ["onnx", "fp16"], out=work / "smoke-export",
                                data=ctx["data"], parity_images=32 if dry else 256,
                                progress=False, log=lambda m: print(m, flush=True))
        return {"status": rep["status"], "files": [f.get("file") or f.get("path") or f.get("format")
                                                   for f in rep.get("formats", [])]}

    if "run_dir" in res["train"]:
        step("export", export)
        if res["export"].get("status") != "PASS":
            ok = False
    else:
        res["export"] = {"skipped": "no smoke checkpoint (training failed)"}

    def throughput():
        rows = []
        for comp in (False, True):
            try:
                rows.append(train_throughput(dev, comp, dry, steps=2 if dry else 30))
            except Exception as e:  # noqa: BLE001
                rows.append({"compile": comp, "error": short_error(e)})
        eager, comp = rows
        if "images_per_s" in eager and "images_per_s" in comp:
            rows.append({"compiled_over_eager": round(comp["images_per_s"] / eager["images_per_s"], 3)})
        return {"rows": rows}

    step("throughput", throughput)
    res["ok"] = ok
    _save_stage(ctx, "smoke", res)
    return 0 if ok else 1


def stage_export(ctx: dict) -> int:
    import torch

    from vggcifar.export.formats import export_checkpoint

    dry, dev = ctx["dry"], torch.device(ctx["device"])
    run = Path(ctx["work"]) / "runs" / "headline"
    res: dict = {"device": dev.type}
    ckpt = run / "best.pt" if (run / "best.pt").exists() else run / "last.pt"
    if not ckpt.exists():
        res["skipped"] = "the headline run left no checkpoint"
        _save_stage(ctx, "export", res)
        return 1
    res["checkpoint"] = ckpt.name + ("" if (run / "summary.json").exists() else
                                     " (headline did not finish: partial model)")
    formats = ["onnx", "fp16"]
    if dev.type == "cuda" and tensorrt_imports():
        formats.append("tensorrt")
    else:
        res["tensorrt"] = ("skipped: tensorrt does not import" if dev.type == "cuda" else
                           "skipped: no GPU (dry run)")
    out = Path(ctx["work"]) / "export"
    t = time.perf_counter()
    try:
        rep = export_checkpoint(ckpt, formats, out=out, data=ctx["data"],
                                parity_images=32 if dry else 1000, progress=False,
                                log=lambda m: print(m, flush=True))
        res["status"] = rep["status"]
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        res["status"] = f"error: {short_error(e)}"
    res["export_s"] = round(time.perf_counter() - t, 2)
    res["parity"] = read_json(out / "parity.json")
    _save_stage(ctx, "export", res)
    try:
        res["inference"] = inference_throughput(ckpt, dev, sorted(out.glob("*.onnx")), dry)
    except Exception as e:  # noqa: BLE001
        res["inference"] = [{"error": short_error(e)}]
    _save_stage(ctx, "export", res)
    print(json.dumps(res.get("inference"), indent=1), flush=True)
    return 0 if res["status"] == "PASS" else 1


STAGE_BODIES = {"smoke": stage_smoke, "export": stage_export}


# ====================================================================== the orchestrator
class Acceptance:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.out = Path(args.out).resolve()
        self.budget = float(args.budget_s)
        self.reserve = DRY_RESERVE_S if self.dry else RESERVE_S
        self.work = Path(args.work).resolve() if args.work else Path(
            tempfile.mkdtemp(prefix="vggcifar-gpu-acceptance-"))
        self.logs = self.work / "logs"
        self.summary: dict = {
            "script": "scripts/gpu_acceptance.py", "dry_run": self.dry, "cpu_only": self.dry,
            "budget_s": self.budget, "started": datetime.now(timezone.utc).isoformat(
                timespec="seconds"),
            "stages": [{"stage": s.num, "name": s.name,
                        "cap_s": None if s.cap_s == float("inf") else s.cap_s,
                        "what": s.what, "status": "pending"} for s in STAGES],
            "notes": []}
        self.caps = {s.name: s.cap_s for s in STAGES}
        for item in args.cap or []:
            name, _, secs = item.partition("=")
            if name not in self.caps:
                raise SystemExit(f"--cap: unknown stage {name!r}")
            self.caps[name] = float(secs)
            self.summary["stages"][[s.name for s in STAGES].index(name)]["cap_s"] = float(secs)
        self.ctx: dict = {}
        self.env = {}

    # ---------------------------------------------------------------- output
    def say(self, msg: str) -> None:
        line = f"[{elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        try:
            with open(self.logs / "acceptance.log", "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def bundle_members(self) -> list[tuple[str, Path]]:
        """(name in the tarball, file) in priority order."""
        w = self.work
        m: list[tuple[str, Path]] = [("summary.json", self.out / "summary.json")]
        m += [(f"logs/{p.name}", p) for p in sorted(self.logs.glob("*.log"))]
        m += [(f"stages/{p.name}", p) for p in sorted((w / "stages").glob("*.json"))]
        for key, run in (("headline", w / "runs" / "headline"),
                         ("smoke", w / "smoke-runs" / "smoke")):
            for f in ("summary.json", "config.json", "metrics.csv", "per_class.csv",
                      "curves.png", "confusion.png", "samples.png"):
                m.append((f"{key}/{f}", run / f))
        m += [("export/parity.json", w / "export" / "parity.json"),
              ("smoke/parity.json", w / "smoke-export" / "parity.json")]
        study = w / "study"
        for f in ("report.md", "report.json", "study.json"):
            m.append((f"study/{f}", study / f))
        for d in sorted(study.glob("split-*")):
            for f in ("summary.json", "metrics.csv", "config.json"):
                m.append((f"study/{d.name}/{f}", d / f))
        m += [(f"study/figures/{p.name}", p) for p in sorted((study / "figures").glob("*.png"))]
        return [(n, p) for n, p in m if p.is_file()]

    def write_outputs(self) -> None:
        """Atomically rewrite OUT/summary.json and OUT/results.tar.gz."""
        self.summary["elapsed_s"] = round(elapsed(), 1)
        atomic_text(self.out / "summary.json", json.dumps(self.summary, indent=2, default=str))
        tmp = self.out / ".results.tar.gz.tmp"
        used, skipped = 0, []
        try:
            with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
                for name, path in self.bundle_members():
                    data = path.read_bytes()
                    if name.startswith("logs/") and len(data) > LOG_TAIL_BYTES:
                        half = LOG_TAIL_BYTES // 2
                        data = (data[:half] + b"\n[... middle of the log left out ...]\n" +
                                data[-half:])
                    if used + len(data) > TAR_MEMBER_BUDGET:
                        skipped.append(name)
                        continue
                    used += len(data)
                    info = tarfile.TarInfo(f"results/{name}")
                    info.size, info.mtime = len(data), int(time.time())
                    tar.addfile(info, io.BytesIO(data))
                if skipped:
                    note = ("left out to stay under 15 MB:\n" + "\n".join(skipped) + "\n").encode()
                    info = tarfile.TarInfo("results/LEFT_OUT.txt")
                    info.size = len(note)
                    tar.addfile(info, io.BytesIO(note))
            if tmp.stat().st_size > MAX_TAR_BYTES:
                raise OSError(f"results.tar.gz would be {tmp.stat().st_size} bytes")
            os.replace(tmp, self.out / "results.tar.gz")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.summary["notes"].append(f"results.tar.gz not rewritten: {e}")

    # ---------------------------------------------------------------- stages
    def stage_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"]
                                                 if env.get("PYTHONPATH") else "")
        env["VGGCIFAR_CACHE"] = str(self.work / "cache")
        env["PYTHONUNBUFFERED"] = "1"
        if self.dry:  # the compile code paths without minutes of C++ compilation on a CPU
            env.setdefault("VGGCIFAR_COMPILE_BACKEND", "eager")
        return env

    def command(self, name: str) -> list[str]:
        py = sys.executable
        data, work = self.ctx["data"], self.work
        if name in STAGE_BODIES:
            return [py, str(Path(__file__).resolve()), "_stage", name, str(work / "context.json")]
        if name == "headline":
            args = list(DRY_HEADLINE if self.dry else GPU_HEADLINE)
            if self.args.epochs:
                args[args.index("--epochs") + 1] = str(self.args.epochs)
            args += ["--data", data, "--out", str(work / "runs" / "headline")]
            return [py, "-c", "from vggcifar.training.cli import main; main()", *args]
        if name == "study":
            args = list(DRY_STUDY if self.dry else GPU_STUDY)
            args += ["--data", data, "--out", str(work / "study")]
            return [py, "-c", "from vggcifar.study.cli import main; main()", *args]
        raise KeyError(name)

    def run_stages(self) -> None:
        deadline = self.budget - self.reserve
        for i, st in enumerate(STAGES):
            rec = self.summary["stages"][i]
            left = deadline - elapsed()
            give = min(self.caps[st.name], left)
            need = DRY_MIN_S if self.dry else st.min_s
            if give <= 0 or give < need:
                rec.update(status="skipped", reason=(
                    f"only {max(0, left):.0f}s left before the deadline (needs {need:.0f}s)"
                    if left > 0 else "no time left before the deadline"))
                self.summary[st.name] = {"skipped": rec["reason"]}
                self.say(f"stage {st.num} {st.name}: skipped ({rec['reason']})")
                self.write_outputs()
                continue
            cmd = self.command(st.name)
            log = self.logs / f"{st.num}-{st.name}.log"
            rec.update(status="running", given_s=round(give, 1), log=f"logs/{log.name}",
                       command=" ".join(
                           [{"headline": "vgg-train", "study": "vgg-study"}[st.name], *cmd[3:]]
                           if cmd[1] == "-c" else ["gpu_acceptance.py", *cmd[2:4]]))
            self.say(f"stage {st.num} {st.name}: start, {give:.0f}s")
            self.write_outputs()
            r = run_group(cmd, log, give, env=self.stage_env())
            rec.update(r)
            if r["status"] == "timeout":
                rec["reason"] = f"killed (process group) after {give:.0f}s"
            try:
                self.summary[st.name] = getattr(self, f"collect_{st.name}")(r)
            except Exception as e:  # noqa: BLE001 - reading results must not end the script
                self.summary[st.name] = {"error": f"collecting results: {short_error(e)}"}
            self.say(f"stage {st.num} {st.name}: {r['status']} in {r['wall_s']:.0f}s")
            self.write_outputs()

    # ---------------------------------------------------------------- collecting results
    def collect_smoke(self, r: dict) -> dict:
        return read_json(self.work / "stages" / "smoke.json") or {"error": "no result written"}

    def collect_headline(self, r: dict) -> dict:
        run = self.work / "runs" / "headline"
        res: dict = {"target": TARGET, "finished": (run / "summary.json").exists(),
                     "cpu_only": self.dry}
        s = read_json(run / "summary.json")
        if s:
            res.update({k: s.get(k) for k in (
                "test_accuracy", "test_accuracy_one_view", "per_class_accuracy", "epochs",
                "steps", "batch_size", "lr", "compile", "amp", "amp_reason", "total_time_s",
                "train_time_s", "mean_epoch_time_s", "mean_images_per_s", "peak_memory_mb",
                "peak_reserved_mb", "checkpoint")})
            res["process_wall_s"] = r["wall_s"]
            res["target_met_one_view"] = (s.get("test_accuracy_one_view") or 0) >= TARGET
            res["target_met_tta"] = (s.get("test_accuracy") or 0) >= TARGET
        rows = read_csv(run / "metrics.csv")
        if rows:
            last = rows[-1]
            res["epochs_done"] = int(last["epoch"])
            res["last_epoch"] = {k: last.get(k) for k in ("train_loss", "train_acc", "lr",
                                                          "epoch_time_s", "images_per_s")}
        cfg = read_json(run / "config.json")
        if cfg:
            res["config_resolved"] = cfg.get("resolved")
        if not res["finished"]:
            res["partial"] = (f"{r['status']}: {res.get('epochs_done', 0)} epochs done; "
                              f"last.pt {'exists' if (run / 'last.pt').exists() else 'missing'}")
        return res

    def collect_export(self, r: dict) -> dict:
        return read_json(self.work / "stages" / "export.json") or {"error": "no result written"}

    def collect_study(self, r: dict) -> dict:
        res: dict = {"splits": {}, "cpu_only": self.dry}
        for d in sorted((self.work / "study").glob("split-*")):
            s = read_json(d / "summary.json")
            rows = read_csv(d / "metrics.csv")
            res["splits"][d.name.removeprefix("split-")] = (
                {k: s.get(k) for k in ("test_accuracy", "test_accuracy_one_view", "epochs",
                                       "steps", "total_time_s", "mean_images_per_s")}
                if s else {"finished": False, "epochs_done": len(rows)})
        res["report"] = (self.work / "study" / "report.md").exists()
        return res

    # ---------------------------------------------------------------- pack and check
    def pack_model(self) -> None:
        run = self.work / "runs" / "headline"
        ckpt = run / "best.pt" if (run / "best.pt").exists() else run / "last.pt"
        if not ckpt.exists():
            self.summary["model_fp16"] = {"skipped": "the headline run left no checkpoint"}
            return
        try:
            from vggcifar.shipped import pack_shipped

            tmp = self.work / "model-fp16"
            shutil.rmtree(tmp, ignore_errors=True)
            manifest = pack_shipped(ckpt, tmp, name="vgg16-fp16")
            files = sorted(p for p in tmp.iterdir() if p.is_file())
            have = [p for p in self.out.rglob("*") if p.is_file()]
            if len(have) + len(files) > MAX_FILES:
                raise OSError(f"{len(files)} model files would make OUT hold more than "
                              f"{MAX_FILES} files")
            for p in files:
                shutil.copy2(p, self.out / p.name)
            self.summary["model_fp16"] = {
                "manifest": manifest.name, "files": [p.name for p in files],
                "from": ckpt.name + ("" if (run / "summary.json").exists() else " (partial run)"),
                "bytes": sum(p.stat().st_size for p in files)}
        except Exception as e:  # noqa: BLE001
            self.summary["model_fp16"] = {"error": short_error(e)}

    def check_out(self) -> dict:
        files = [p for p in self.out.rglob("*") if p.is_file() or p.is_symlink()]
        problems = []
        if len(files) > MAX_FILES:
            problems.append(f"{len(files)} files (at most {MAX_FILES})")
        total = 0
        for p in files:
            size = p.lstat().st_size
            total += size
            rel = p.relative_to(self.out)
            if size > MAX_FILE_BYTES:
                problems.append(f"{rel}: {size} bytes (at most 16 MiB)")
            if len(rel.parts) - 1 > 2:
                problems.append(f"{rel}: more than two folders deep")
            if p.is_symlink():
                problems.append(f"{rel}: a link")
        if total > MAX_TOTAL_BYTES:
            problems.append(f"{total} bytes in all (at most 64 MiB)")
        tar = self.out / "results.tar.gz"
        if tar.exists() and tar.stat().st_size > MAX_TAR_BYTES:
            problems.append(f"results.tar.gz: {tar.stat().st_size} bytes (at most 15 MB)")
        return {"files": sorted(str(p.relative_to(self.out)) for p in files), "bytes": total,
                "ok": not problems, "problems": problems}

    # ---------------------------------------------------------------- main
    def prepare(self) -> bool:
        import torch

        device = "cpu" if self.dry else "cuda"
        self.env = self.summary["environment"] = environment(device)
        self.summary["device"] = device
        if self.dry:
            self.summary["notes"].append("dry run: CPU only, tiny model and synthetic data; "
                                         "torch.compile uses the eager backend")
        elif not torch.cuda.is_available():
            self.summary["error"] = "no CUDA GPU visible to PyTorch (use --dry-run on a CPU)"
            return False
        t = time.perf_counter()
        try:
            archive = make_dry_archive(self.work) if self.dry else Path(self.args.archive).resolve()
            data = unpack(archive, self.work / "data")
        except (OSError, tarfile.TarError) as e:
            self.summary["error"] = f"cannot unpack the data archive: {short_error(e)}"
            return False
        self.summary["unpack_s"] = round(time.perf_counter() - t, 2)
        self.ctx = {"dry": self.dry, "device": device, "data": str(data), "work": str(self.work)}
        atomic_text(self.work / "context.json", json.dumps(self.ctx))
        return True

    def run(self) -> int:
        ok = False
        try:
            self.say(f"gpu_acceptance: out {self.out}, work {self.work}, budget {self.budget:.0f}s"
                     f"{' (dry run)' if self.dry else ''}")
            for st in STAGES:
                cap = self.caps[st.name]
                self.say(f"  stage {st.num} {st.name:<9} cap {'rest' if cap == float('inf') else f'{cap:.0f}s':>5}  {st.what}")
            if self.prepare():
                self.say(f"prepared: {self.env.get('gpu') or 'CPU'}, torch {self.env.get('torch')}"
                         f", CUDA {self.env.get('cuda')}, cuDNN {self.env.get('cudnn')}")
                self.write_outputs()
                self.run_stages()
                self.pack_model()
                ok = all(s["status"] in ("ok", "skipped") for s in self.summary["stages"])
            else:
                self.say(f"error: {self.summary['error']}")
        except KeyboardInterrupt:
            self.summary["notes"].append(f"interrupted after {elapsed():.0f}s")
            self.say("interrupted: writing what there is")
        finally:
            for rec in self.summary["stages"]:
                if rec["status"] == "running":
                    rec["status"] = "interrupted"
            self.write_outputs()
            check = self.check_out()
            self.summary["out_check"] = check
            self.summary["total_s"] = round(elapsed(), 1)
            self.write_outputs()
            self.summary["out_check"] = check = self.check_out()  # the final listing
            atomic_text(self.out / "summary.json", json.dumps(self.summary, indent=2, default=str))
            if not self.args.keep_work and not self.args.work:
                shutil.rmtree(self.work, ignore_errors=True)
            self.print_table()
        if "error" in self.summary and not self.ctx:
            return 2
        return 0 if ok and check["ok"] else 1

    def print_table(self) -> None:
        s = self.summary
        env = s.get("environment", {})
        lines = [("device", f"{env.get('gpu') or 'CPU only'} (torch {env.get('torch')}, CUDA "
                            f"{env.get('cuda')}, cuDNN {env.get('cudnn')})"),
                 ("onnxruntime providers", env.get("onnxruntime_providers")),
                 ("tensorrt", env.get("tensorrt"))]
        for rec in s["stages"]:
            lines.append((f"stage {rec['stage']} {rec['name']}",
                          f"{rec['status']}" + (f" in {rec['wall_s']:.0f}s of {rec['given_s']:.0f}s"
                                                if "wall_s" in rec else "")
                          + (f" ({rec['reason']})" if rec.get("reason") else "")))
        h = s.get("headline") or {}
        if h.get("test_accuracy") is not None:
            lines.append(("headline test accuracy", f"{h['test_accuracy_one_view']:.2%} one view, "
                          f"{h['test_accuracy']:.2%} TTA (target {TARGET:.1%}) in "
                          f"{h.get('process_wall_s', 0):.0f}s, {h.get('mean_images_per_s') or 0:,.0f} img/s"))
        elif h:
            lines.append(("headline", h.get("partial")))
        sm = s.get("smoke") or {}
        for row in (sm.get("throughput") or {}).get("rows", []):
            if "images_per_s" in row:
                lines.append((f"train img/s {'compiled' if row['compile'] else 'eager'}",
                              f"{row['images_per_s']:,.0f}"))
        for row in (s.get("export") or {}).get("inference", []):
            if "images_per_s" in row:
                lines.append((f"infer {row['engine']}", f"{row['images_per_s']:,.0f} img/s"
                              + (" (CPU only)" if row.get("cpu_only") else "")))
        for split, r in ((s.get("study") or {}).get("splits") or {}).items():
            lines.append((f"study split {split}", f"{r['test_accuracy']:.2%}"
                          if r.get("test_accuracy") is not None else "unfinished"))
        oc = s.get("out_check", {})
        lines.append(("OUT", f"{len(oc.get('files', []))} files, {oc.get('bytes', 0) / 2**20:.1f}"
                             f" MiB, {'ok' if oc.get('ok') else oc.get('problems')}"))
        lines.append(("total script time", f"{s.get('total_s', elapsed()):.0f}s of "
                                           f"{s['budget_s']:.0f}s budget"))
        w = max(len(k) for k, _ in lines)
        print("\n" + "=" * (w + 40))
        for k, v in lines:
            print(f"{k:<{w}}  {v}")
        print("=" * (w + 40), flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--archive", help="cifar10-jpg.tar.gz (train/ and test/ folders); not needed "
                    "with --dry-run")
    ap.add_argument("--out", required=True, help="output folder: at most 8 files end up here")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="global deadline in seconds from the start (default 540)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny model, synthetic data: the same code paths in about a minute")
    ap.add_argument("--epochs", type=int, default=None, help="override the headline's epochs")
    ap.add_argument("--cap", action="append", metavar="STAGE=SECONDS",
                    help="override a stage's cap (repeatable), e.g. --cap study=120")
    ap.add_argument("--work", default=None, help="work folder for data, cache and checkpoints "
                    "(default: a temporary folder, removed at the end); must be outside --out")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    args = ap.parse_args(argv)
    if not args.dry_run and not args.archive:
        ap.error("give --archive (or --dry-run)")
    out = Path(args.out).resolve()
    if args.work:
        work = Path(args.work).resolve()
        if work == out or out in work.parents or work in out.parents:
            ap.error("--work must be outside --out (and --out outside --work)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_stage"]:  # a stage's own process
        ctx = json.loads(Path(argv[2]).read_text())
        return STAGE_BODIES[argv[1]](ctx)
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    acc = Acceptance(args)
    acc.logs.mkdir(parents=True, exist_ok=True)
    (acc.work / "stages").mkdir(parents=True, exist_ok=True)

    def on_term(signum, frame):  # the machine's own timeout: keep what was measured
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    return acc.run()


if __name__ == "__main__":
    sys.exit(main())
