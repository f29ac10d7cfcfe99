"""Serving benchmark: `vgg-predict` end-to-end throughput per backend, and the demo's request
latency under concurrent gradio_client clients.

    python benchmarks/bench_serving.py --model /work/cpu_runs/vgg16-cpu-e10/best.pt \\
        --data data/cifar10-jpg/test --per-class 100 --clients 8 --requests 25

1. `vgg-predict`: ``--per-class`` real test images per class are linked (not copied) into a
   temporary folder; ``vgg-predict FOLDER --json`` runs as a subprocess per backend, ``--repeats``
   times. Reported: wall time of the whole command (process start, imports, model load, ONNX
   export for ``onnx`` with a ``.pt``, decoding, inference, printing) and the prediction loop's
   own rate (from its summary line). Accuracy against the folder names is a sanity check.
2. Demo: `vgg-demo` runs as a separate process (so client threads do not share its GIL);
   ``--clients`` threads, each with its own gradio_client.Client, send ``--requests`` images
   each, back to back. Reported: per-request latency median and p99, and requests/s.

Prints a Markdown section (paste into docs/benchmarks.md) and writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def link_images(data: Path, per_class: int, dest: Path) -> list[tuple[Path, str]]:
    """Symlink the first ``per_class`` images of every class folder into ``dest/<class>/``."""
    items = []
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in (data / cls).iterdir() if f.is_file())[:per_class]
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = dest / cls / f.name
            link.symlink_to(f.resolve())
            items.append((link, cls))
    return items


def bench_cli(model: str, folder: Path, backend: str, repeats: int, batch_size: int,
              env: dict) -> dict:
    cmd = [str(BIN / "vgg-predict"), str(folder), "--model", model, "--backend", backend,
           "--device", "cpu", "--json", "--no-progress", "--batch-size", str(batch_size)]
    walls, loops, acc = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"vgg-predict failed ({r.returncode}):\n{r.stderr[-2000:]}")
        rows = [json.loads(ln) for ln in r.stdout.splitlines()]
        n = len(rows)
        m = re.search(r"(\d+) predicted, (\d+) failed in ([\d.]+) s", r.stderr)
        loops.append(int(m.group(1)) / float(m.group(3)))
        acc = sum(Path(x["file"]).parent.name == x["label"] for x in rows) / n
        backend_desc = rows[0]["backend"]
    wall = statistics.median(walls)
    return {"backend": backend_desc, "images": n, "wall_s": round(wall, 2),
            "first_wall_s": round(walls[0], 2),
            "end_to_end_img_s": round(n / wall, 1),
            "loop_img_s": round(statistics.median(loops), 1),
            "accuracy": round(acc, 4), "repeats": repeats}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_demo(model: str, images: list[Path], backend: str, clients: int, requests: int,
               concurrency: int, env: dict) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    cmd = [str(BIN / "vgg-demo"), "--model", model, "--backend", backend, "--device", "cpu",
           "--port", str(port), "--concurrency", str(concurrency)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        import httpx

        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"vgg-demo exited:\n{server.stderr.read()[-2000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("vgg-demo did not start within 120 s")
            time.sleep(0.5)
        conns = [Client(url, verbose=False) for _ in range(clients)]
        for c in conns:  # warm-up: first requests pay for lazy initialisation
            c.predict(handle_file(str(images[0])), api_name="/predict")
        latencies: list[float] = []
        lock = threading.Lock()
        errors = []

        def worker(i: int) -> None:
            for j in range(requests):
                img = images[(i * requests + j) % len(images)]
                t0 = time.perf_counter()
                try:
                    conns[i].predict(handle_file(str(img)), api_name="/predict")
                except Exception as e:  # recorded, reported, not fatal
                    errors.append(repr(e))
                    continue
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = time.perf_counter() - t0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    lat = np.array(latencies)
    return {"backend": backend, "clients": clients, "requests": len(lat), "errors": len(errors),
            "server_concurrency": concurrency,
            "median_ms": round(float(np.median(lat)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "req_s": round(len(lat) / total, 1)}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}")


def markdown(res: dict) -> str:
    lines = ["## Serving", "",
             f"Model: `{res['model']}` ({res['model_note']}). Machine: {res['machine']}; "
             f"{res['load']}. {res['note']}", "",
             f"Command: `{res['command']}`", ""]
    if res["cli"]:
        lines += [f"### `vgg-predict` on {res['cli'][0]['images']} real CIFAR-10 test images "
                  f"({res['per_class']} per class, JPEG), batch {res['batch_size']}", "",
                  "| backend | model file | wall time (whole command) | first run "
                  "| end-to-end images/s | prediction loop images/s | accuracy |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["cli"]:
            lines.append(f"| {r['backend']} | `{r['model_file']}` | {r['wall_s']} s | "
                         f"{r['first_wall_s']} s | {r['end_to_end_img_s']} | {r['loop_img_s']} | "
                         f"{r['accuracy']:.1%} |")
        lines += ["", f"Wall time: median of {res['cli'][0]['repeats']} runs of the whole command "
                  "(Python start-up, imports, model loading, decoding, inference, output); first "
                  "run: with an empty cache, so `onnx` with a `.pt` includes the one-off ONNX "
                  "export. The loop rate is `vgg-predict`'s own count (decode + inference + "
                  "output).", ""]
    if res["demo"]:
        lines += [f"### `vgg-demo` request latency (gradio_client, server concurrency limit "
                  f"{res['demo'][0]['server_concurrency']})", "",
                  "| backend | concurrent clients | requests | errors | median latency "
                  "| p99 latency | requests/s |", "|---|---|---|---|---|---|---|"]
        for d in res["demo"]:
            lines.append(f"| {d['backend']} | {d['clients']} | {d['requests']} | {d['errors']} | "
                         f"{d['median_ms']} ms | {d['p99_ms']} ms | {d['req_s']} |")
        lines.append("")
    lines.append("Latency is the client's wall time per request: upload, queue, decode, predict, "
                 "response. Clients and server share this machine's cores.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/work/cpu_runs/vgg16-cpu-e10/best.pt")
    ap.add_argument("--model-note", default="", help="how the checkpoint was made (for the report)")
    ap.add_argument("--data", default="data/cifar10-jpg/test")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--backends", default="torch,onnx,onnx-file",
                    help="torch, onnx (a .pt exported at start-up), onnx-file (exported once "
                         "beforehand, the .onnx file passed as --model)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--clients", default="1,8",
                    help="concurrent demo clients; a comma-separated list runs each")
    ap.add_argument("--requests", type=int, default=25, help="per client")
    ap.add_argument("--demo-backends", default="torch",
                    help="backends to serve in the demo benchmark (comma-separated)")
    ap.add_argument("--concurrency", type=int, default=2, help="vgg-demo --concurrency")
    ap.add_argument("--note", default="", help="free text for the report (e.g. machine load)")
    ap.add_argument("--json-out", default="", help="also write the raw numbers here (JSON)")
    args = ap.parse_args()

    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"{data} not found (expected <class>/*.jpg folders)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        items = link_images(data, args.per_class, tmp / "images")
        # A fresh cache: the first `--backend onnx` run with a .pt pays for the ONNX export.
        env = {**os.environ, "VGGCIFAR_CACHE": str(tmp / "cache")}
        load_before = os.getloadavg()[0]
        print(f"{len(items)} images linked under {tmp / 'images'}", file=sys.stderr)
        cli = []
        for b in filter(None, args.backends.split(",")):
            model, backend = args.model, b
            if b == "onnx-file":
                from vggcifar.serving.backends import onnx_from_checkpoint

                model, backend = str(onnx_from_checkpoint(args.model, tmp)), "onnx"
            print(f"vgg-predict --backend {backend} --model {model} ...", file=sys.stderr)
            cli.append(bench_cli(model, tmp / "images", backend, args.repeats, args.batch_size,
                                 env))
            cli[-1]["model_file"] = Path(model).suffix
            print(f"  {cli[-1]}", file=sys.stderr)
        demo = []
        for b in filter(None, args.demo_backends.split(",")):
            for n in [int(c) for c in args.clients.split(",")]:
                print(f"vgg-demo --backend {b} with {n} clients ...", file=sys.stderr)
                demo.append(bench_demo(args.model, [p for p, _ in items], b, n,
                                       args.requests, args.concurrency, env))
                print(f"  {demo[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        load_after = os.getloadavg()[0]
    res = {"model": args.model, "model_note": args.model_note, "machine": machine(),
           "load": f"1-minute load average {load_before:.1f} before, {load_after:.1f} after",
           "note": args.note, "per_class": args.per_class, "batch_size": args.batch_size,
           "command": shlex.join(["python", "benchmarks/bench_serving.py", *sys.argv[1:]]),
           "cli": cli, "demo": demo}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
