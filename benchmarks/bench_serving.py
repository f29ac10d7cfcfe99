"""Serving benchmark: `vgg-predict` end-to-end throughput per backend, the demo's request
latency under concurrent gradio_client clients, and `vgg-serve`'s JSON API against the Gradio
API of the same server.

    python benchmarks/bench_serving.py --model /work/cpu_runs/vgg16-cpu-e10/best.pt \\
        --data data/cifar10-jpg/test --per-class 100 --clients 8 --requests 25
    python benchmarks/bench_serving.py --sections serve --per-class 20   # shipped model

1. `vgg-predict`: ``--per-class`` real test images per class are linked (not copied) into a
   temporary folder; ``vgg-predict FOLDER --json`` runs as a subprocess per backend, ``--repeats``
   times. Reported: wall time of the whole command (process start, imports, model load, ONNX
   export for ``onnx`` with a ``.pt``, decoding, inference, printing) and the prediction loop's
   own rate (from its summary line). Accuracy against the folder names is a sanity check.
2. Demo: `vgg-demo` runs as a separate process (so client threads do not share its GIL);
   ``--clients`` threads, each with its own gradio_client.Client, send ``--requests`` images
   each, back to back. Reported: per-request latency median and p99, and requests/s.
3. `vgg-serve` (``--sections serve``): one `vgg-serve` process with the demo mounted (its own
   process: client and server do not share a GIL); for each of ``--serve-clients`` (1, 8, 32)
   concurrent clients and each of ``--serve-fronts``: ``v1`` (``POST /v1/predict``, one raw
   JPEG per request), ``v2`` (``POST /v2/models/<name>/infer``, one image's float32 tensor per
   request with Triton's binary tensor extension), both from asyncio clients with one HTTP/1.1
   keep-alive connection each and TCP_NODELAY, as curl and browsers use; ``gradio`` (the
   page's API ``/predict``, gradio_client, one Client per thread). Each client sends
   ``--serve-requests`` images back to back, and each run stops issuing after
   ``--serve-max-seconds``. Reported per front end: p50 and p99 latency, images/s, and for the
   API the mean batch size (from ``/metrics``). Loopback only.

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
import signal
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
        latencies, errors, total = gradio_load(conns, images, requests)
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


def gradio_load(conns, images: list[Path], requests: int,
                max_seconds: float = float("inf")) -> tuple[list[float], list[str], float]:
    """One thread per gradio_client ``Client`` in ``conns``, each calling ``/predict`` up to
    ``requests`` times back to back (none started after ``max_seconds``).

    Returns ``(latencies in ms, errors, wall seconds)``."""
    from gradio_client import handle_file

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + max_seconds

    def worker(i: int) -> None:
        for j in range(requests):
            if time.perf_counter() > stop_at:
                return
            img = images[(i * requests + j) % len(images)]
            t0 = time.perf_counter()
            try:
                conns[i].predict(handle_file(str(img)), api_name="/predict")
            except Exception as e:  # recorded, reported, not fatal
                errors.append(repr(e))
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(conns))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def wait_healthy(server: subprocess.Popen, url: str, timeout: float = 180) -> dict:
    import httpx

    deadline = time.time() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"vgg-serve exited:\n{server.stderr.read()[-2000:]}")
        try:
            r = httpx.get(url + "healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"vgg-serve was not ready within {timeout:.0f} s")
        time.sleep(0.5)


def _summary(front: str, clients: int, latencies: list[float], errors: list[str],
             total: float, n_images: int) -> dict:
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"front_end": front, "clients": clients, "requests": len(latencies),
            "errors": len(errors), "first_error": errors[0][:200] if errors else None,
            "p50_ms": round(float(np.median(lat)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "img_s": round(n_images / total, 1), "seconds": round(total, 1)}


def _batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    import httpx

    text = httpx.get(url + "metrics", timeout=10).text
    get = lambda n: float(re.search(rf"^{n} (\S+)$", text, re.M).group(1))  # noqa: E731
    return get("vggcifar_batch_size_sum"), get("vggcifar_batch_size_count")


class KeepAliveClient:
    """One HTTP/1.1 keep-alive connection with TCP_NODELAY, as curl and browsers use: a request
    is one write, the answer is read by its Content-Length. Lean on purpose (no httpx): the
    clients share the machine's cores with the server."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def connect(self) -> None:
        import asyncio

        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict | None = None) -> tuple[int, dict, bytes]:
        """-> ``(status, headers with lower-case names, body)``; reconnects when the server
        closed the connection."""
        if self.writer is None or self.writer.is_closing():
            await self.connect()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *rest = head.decode("latin-1").split("\r\n")
        hdrs = dict(ln.split(": ", 1) for ln in rest if ": " in ln)
        hdrs = {k.lower(): v for k, v in hdrs.items()}
        data = await self.reader.readexactly(int(hdrs.get("content-length", 0)))
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), hdrs, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def v2_payload(path: Path) -> tuple[bytes, bytes]:
    """``(JSON header, whole body)`` of a binary-tensor v2 infer request for one image: its
    ``[1, 3, 32, 32]`` float32 pixels (decoded here, as a v2 client does)."""
    from vggcifar.serving import load_pixels

    x = load_pixels(path.read_bytes(), 32)[0].numpy().astype(np.float32)[None] / 255
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "probabilities",
                                    "parameters": {"binary_data": True}}]}).encode()
    return head, head + x.astype("<f4").tobytes()


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux; 0 elsewhere):
    the server's cost per image, which other load on the machine does not inflate as much as
    wall-clock figures."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def bench_api(url: str, payloads: list[tuple[str, bytes]], clients: int, requests: int,
              max_seconds: float, front: str = "/v1/predict", model_name: str = "",
              server_pid: int | None = None) -> dict:
    """``clients`` asyncio tasks, each with its own keep-alive connection, send one image per
    request, back to back: a raw JPEG to /v1/predict, or (``front`` "/v2 infer") its float32
    tensor to ``/v2/models/<model_name>/infer`` with binary tensors."""
    import asyncio
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port

    def request_for(name, data):
        if front == "/v1/predict":
            return (f"/v1/predict?filename={name}", data, {"Content-Type": "image/jpeg"})
        head, body = data
        return (f"/v2/models/{model_name}/infer", body,
                {"Inference-Header-Content-Length": str(len(head))})

    reqs = [request_for(n, d) for n, d in payloads]

    async def one(c: KeepAliveClient, req) -> None:
        status, hdrs, body = await c.request("POST", *req)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        if front == "/v1/predict":
            assert "label" in json.loads(body)["results"][0]

    async def run():
        latencies, errors = [], []
        conns = [KeepAliveClient(host, port) for _ in range(clients)]
        for c in conns:
            await c.connect()
        for c in conns[:2]:  # warm-up (first requests)
            await one(c, reqs[0])
        stop_at = time.perf_counter() + max_seconds

        async def worker(i: int) -> None:
            c = conns[i]
            for j in range(requests):
                if time.perf_counter() > stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    await one(c, reqs[(i * requests + j) % len(reqs)])
                except Exception as e:  # recorded, reported, not fatal
                    errors.append(repr(e))
                    c.close()
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        total = time.perf_counter() - t0
        for c in conns:
            c.close()
        return latencies, errors, total

    before, cpu0 = _batch_stats(url), process_cpu_s(server_pid)
    latencies, errors, total = asyncio.run(run())
    after, cpu1 = _batch_stats(url), process_cpu_s(server_pid)
    res = _summary(front, clients, latencies, errors, total, len(latencies))
    batches = after[1] - before[1]
    res["mean_batch"] = round((after[0] - before[0]) / batches, 1) if batches else None
    # The warm-up requests are in the CPU figure too: two more images.
    res["server_cpu_ms_per_image"] = round(1000 * (cpu1 - cpu0) / (len(latencies) + 2), 2) \
        if cpu1 > cpu0 else None
    return res


def bench_gradio_api(url: str, images: list[Path], clients: int, requests: int,
                     max_seconds: float) -> dict:
    """``clients`` threads, each with its own gradio_client.Client, call the page's /predict."""
    from gradio_client import Client, handle_file

    conns = [Client(url, verbose=False) for _ in range(clients)]
    for c in conns[:2]:  # warm-up
        c.predict(handle_file(str(images[0])), api_name="/predict")
    latencies, errors, total = gradio_load(conns, images, requests, max_seconds)
    for c in conns:
        try:
            c.close()
        except Exception:
            pass
    return _summary("Gradio API", clients, latencies, errors, total, len(latencies))


def bench_serve(model: str, images: list[Path], clients_list: list[int], requests: int,
                max_seconds: float, max_batch: int, max_wait_ms: float, env: dict,
                fronts: tuple[str, ...] = ("v1", "gradio"), backend: str = "auto") -> dict:
    """Start `vgg-serve` (demo mounted) and compare its front ends at each concurrency:
    ``v1`` (/v1/predict, JPEG), ``v2`` (/v2 infer, binary float32 tensors), ``gradio``."""
    from vggcifar.export.triton import triton_model_name

    port = free_port()
    cmd = [str(BIN / "vgg-serve"), "--model", model, "--backend", backend, "--device", "cpu",
           "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms",
           str(max_wait_ms), "--quiet"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env)
    url = f"http://127.0.0.1:{port}/"
    jpegs = [(p.name, p.read_bytes()) for p in images]
    tensors = [(p.name, v2_payload(p)) for p in images] if "v2" in fronts else []
    rows = []
    try:
        health = wait_healthy(server, url)
        for n in clients_list:
            for front in fronts:
                print(f"vgg-serve: {n} clients on {front} ...", file=sys.stderr)
                if front == "gradio":
                    rows.append(bench_gradio_api(url, images, n, requests, max_seconds))
                elif front == "v2":
                    rows.append(bench_api(url, tensors, n, requests, max_seconds, "/v2 infer",
                                          triton_model_name(model), server.pid))
                else:
                    rows.append(bench_api(url, jpegs, n, requests, max_seconds,
                                          server_pid=server.pid))
                print(f"  {rows[-1]}", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            rc = "killed"
    return {"backend": health["backend"], "model": health["model"], "arch": health["arch"],
            "max_batch": max_batch, "max_wait_ms": max_wait_ms, "requests": requests,
            "max_seconds": max_seconds, "exit_code": rc, "rows": rows,
            "command": shlex.join(["vgg-serve", *cmd[1:]])}


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
    if res.get("serve"):
        sv = res["serve"]
        lines += ["### `vgg-serve`: its front ends, one server", "",
                  f"Server: `{sv['command']}` ({sv['model']}, {sv['arch']}, {sv['backend']}); "
                  f"up to {sv['requests']} single-image requests per client, at most "
                  f"{sv['max_seconds']:g} s per run; exit code after SIGTERM: {sv['exit_code']}.",
                  "", "| clients | front end | requests | errors | p50 latency | p99 latency "
                  "| images/s | mean batch | server CPU per image | /v1/predict vs Gradio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        by = {(r["clients"], r["front_end"]): r for r in sv["rows"]}
        for r in sv["rows"]:
            ratio = ""
            cpu = f"{r['server_cpu_ms_per_image']} ms" if r.get("server_cpu_ms_per_image") else "-"
            g = by.get((r["clients"], "Gradio API"))
            if r["front_end"] == "/v1/predict" and g and g["img_s"]:
                ratio = f"{r['img_s'] / g['img_s']:.1f}x"
            lines.append(f"| {r['clients']} | {r['front_end']} | {r['requests']} | "
                         f"{r['errors']} | {r['p50_ms']} ms | {r['p99_ms']} ms | {r['img_s']} | "
                         f"{r.get('mean_batch') or '-'} | {cpu} | {ratio} |")
        lines.append("")
    lines.append("Latency is the client's wall time per request: upload, queue, decode, predict, "
                 "response. Clients and server share this machine's cores.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None,
                    help="model file [default: the shipped model]")
    ap.add_argument("--sections", default="cli,demo",
                    help="what to run: cli (vgg-predict), demo (vgg-demo), serve (vgg-serve)")
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
    ap.add_argument("--serve-clients", default="1,8,32",
                    help="concurrent clients for the vgg-serve comparison")
    ap.add_argument("--serve-requests", type=int, default=40, help="per client and front end")
    ap.add_argument("--serve-max-seconds", type=float, default=45,
                    help="a run stops issuing requests after this long")
    ap.add_argument("--serve-max-batch", type=int, default=32, help="vgg-serve --max-batch")
    ap.add_argument("--serve-max-wait-ms", type=float, default=5, help="vgg-serve --max-wait-ms")
    ap.add_argument("--serve-fronts", default="v1,gradio",
                    help="front ends to load: v1 (/v1/predict, JPEG), v2 (/v2 infer, binary "
                         "tensors), gradio (the page's API)")
    ap.add_argument("--serve-backend", default="auto", help="vgg-serve --backend")
    ap.add_argument("--note", default="", help="free text for the report (e.g. machine load)")
    ap.add_argument("--json-out", default="", help="also write the raw numbers here (JSON)")
    args = ap.parse_args()
    sections = set(filter(None, args.sections.split(",")))
    if args.model is None:
        from vggcifar.shipped import MANIFEST_NAME, models_dir

        args.model = str(models_dir() / MANIFEST_NAME)

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
        for b in filter(None, args.backends.split(",") if "cli" in sections else []):
            model, backend = args.model, b
            if b == "onnx-file":
                from vggcifar.export.cache import onnx_from_checkpoint

                model, backend = str(onnx_from_checkpoint(args.model, tmp)), "onnx"
            print(f"vgg-predict --backend {backend} --model {model} ...", file=sys.stderr)
            cli.append(bench_cli(model, tmp / "images", backend, args.repeats, args.batch_size,
                                 env))
            cli[-1]["model_file"] = Path(model).suffix
            print(f"  {cli[-1]}", file=sys.stderr)
        demo = []
        for b in filter(None, args.demo_backends.split(",") if "demo" in sections else []):
            for n in [int(c) for c in args.clients.split(",")]:
                print(f"vgg-demo --backend {b} with {n} clients ...", file=sys.stderr)
                demo.append(bench_demo(args.model, [p for p, _ in items], b, n,
                                       args.requests, args.concurrency, env))
                print(f"  {demo[-1]}", file=sys.stderr)
        serve = None
        if "serve" in sections:
            serve = bench_serve(args.model, [p for p, _ in items],
                                [int(c) for c in args.serve_clients.split(",")],
                                args.serve_requests, args.serve_max_seconds,
                                args.serve_max_batch, args.serve_max_wait_ms, env,
                                tuple(filter(None, args.serve_fronts.split(","))),
                                args.serve_backend)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        load_after = os.getloadavg()[0]
    res = {"model": args.model, "model_note": args.model_note, "machine": machine(),
           "load": f"1-minute load average {load_before:.1f} before, {load_after:.1f} after",
           "note": args.note, "per_class": args.per_class, "batch_size": args.batch_size,
           "command": shlex.join(["python", "benchmarks/bench_serving.py", *sys.argv[1:]]),
           "cli": cli, "demo": demo, "serve": serve}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
