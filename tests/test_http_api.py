"""`vgg-serve`: the HTTP JSON API (/v1/predict, /healthz, /metrics), dynamic batching, the bounded
queue, size limits, the mounted demo, and SIGTERM draining of a real server process."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from vggcifar.serving import Predictor
from vggcifar.serving.http_api import create_app
from vggcifar.serving.serve_cli import main as serve_cli

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


# ---- helpers ---------------------------------------------------------------------------------


def png_bytes(seed: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def wait_ready(client, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = client.get("/healthz")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s: {r.status_code} {r.text}")


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (``labels`` as written, e.g.
    ``status="200"``)."""
    pat = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    m = re.search(r"^" + pat + r"$", text, re.M)
    assert m, f"{name}{{{labels}}} not in metrics:\n{text}"
    return float(m.group(1))


class StubInfo:
    name, path, format, arch, test_accuracy, test_accuracy_tta = ("stub",) * 4 + (None, None)
    class_names = CLASSES


class StubPredictor:
    """Just what the API uses of a Predictor; ``gate`` (a threading.Event) blocks model calls
    after the warm-up, ``entered`` is set when a call is waiting on it."""

    input_size = 32
    class_names = list(CLASSES)
    info = StubInfo()
    backend_name = "stub"

    def __init__(self, gate: threading.Event | None = None, nan_rows=(), fail_warmup=False,
                 warmup_gate: threading.Event | None = None):
        self.gate, self.nan_rows, self.fail_warmup = gate, set(nan_rows), fail_warmup
        self.warmup_gate = warmup_gate
        self.entered = threading.Event()
        self.batches: list[int] = []  # images per call; negative for warm-up calls

    def outputs(self, x):
        """The model contract: float32 RGB in [0, 1] -> (logits, probabilities)."""
        probs = self.probabilities(np.rint(x * 255).astype(np.uint8))
        return np.log(probs), probs

    # What the API assembles answers with: the Predictor's own public methods.
    top_k = Predictor.top_k
    prediction = Predictor.prediction

    def probabilities(self, pixels):
        n = len(pixels)
        if not pixels.any():  # the app's warm-up calls: blank images (batch 1, max_batch)
            if self.warmup_gate is not None:
                self.warmup_gate.wait(30)
            self.batches.append(-n)
            if self.fail_warmup:
                return np.full((n, 10), np.nan, np.float32)
            return np.full((n, 10), 0.1, np.float32)
        self.batches.append(n)
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30), "test gate never opened"
        # class = mean pixel value mod 10, so answers depend on the image
        out = np.full((n, 10), 0.01, np.float32)
        for i, x in enumerate(pixels):
            out[i, int(x.mean()) % 10] = 0.91
        for i in self.nan_rows:
            if i < n:
                out[i] = np.nan
        return out


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint, backend="torch", device="cpu", warmup=False)


@pytest.fixture(scope="module")
def client(predictor):
    app = create_app(predictor, max_batch=8, max_wait_ms=20, queue_size=64, max_file_mb=0.05,
                     max_files=8, demo=False)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


# ---- /v1/predict -----------------------------------------------------------------------------


def test_single_raw_image_matches_vgg_predict(client, predictor):
    data = png_bytes(1)
    r = client.post("/v1/predict?filename=cat.png", content=data,
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    want = predictor.predict(data, top_k=3, name="cat.png").to_dict()
    assert set(res) == set(want)
    assert res["file"] == "cat.png" and res["label"] == want["label"]
    assert res["probability"] == pytest.approx(want["probability"], abs=1e-5)
    assert [t["label"] for t in res["top_k"]] == [t["label"] for t in want["top_k"]]
    assert len(res["top_k"]) == 3 and res["backend"] == predictor.backend_name

    r = client.post("/v1/predict?top_k=5", content=data,
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and len(r.json()["results"][0]["top_k"]) == 5
    assert r.json()["results"][0]["file"] == "image"


def test_multipart_many_images_in_order(client, predictor):
    datas = [png_bytes(s, (32 + s, 32)) for s in range(5)]
    files = [("files", (f"img{i}.png", d, "image/png")) for i, d in enumerate(datas)]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["file"] for x in results] == [f"img{i}.png" for i in range(5)]
    for x, d in zip(results, datas):
        want = predictor.predict(d, name="x").to_dict()
        assert x["label"] == want["label"]
        assert x["probability"] == pytest.approx(want["probability"], abs=1e-5)


def test_mixed_good_and_bad_is_200_with_an_error_entry(client):
    files = [("files", ("good.png", png_bytes(2), "image/png")),
             ("files", ("bad.png", b"this is not an image", "image/png")),
             ("files", ("empty.jpg", b"", "image/jpeg"))]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    good, bad, empty = r.json()["results"]
    assert "label" in good and "error" not in good
    assert set(bad) == {"file", "error", "backend"} and bad["file"] == "bad.png"
    assert bad["error"].startswith("bad.png:")
    assert empty["file"] == "empty.jpg" and "error" in empty


def test_all_bad_is_4xx(client):
    r = client.post("/v1/predict", files=[("files", ("a.png", b"junk", "image/png")),
                                          ("files", ("b.gif", b"GIF89a", "image/gif"))])
    assert r.status_code == 422
    assert all("error" in x for x in r.json()["results"])
    r = client.post("/v1/predict", content=b"junk", headers={"Content-Type": "image/png"})
    assert r.status_code == 422


def test_bad_requests(client):
    r = client.post("/v1/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/v1/predict", files=[("other", ("a.png", png_bytes(), "image/png"))])
    assert r.status_code == 400 and "files" in r.json()["error"]
    r = client.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"})
    assert r.status_code == 400


def test_size_limits_are_413(client):
    big = os.urandom(80 * 1024)  # the client fixture allows 0.05 MB per file
    r = client.post("/v1/predict", content=big, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    # No Content-Length (chunked): the body is counted as it arrives.
    def chunks():
        for _ in range(20):
            yield b"\0" * 8192

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413
    # A lying Content-Length (smaller than the body) is not trusted either.
    r = client.post("/v1/predict", content=chunks(),
                    headers={"Content-Type": "image/png", "Content-Length": "10"})
    assert r.status_code in (400, 413)

    r = client.post("/v1/predict", files=[("files", ("ok.png", png_bytes(), "image/png")),
                                          ("files", ("big.png", big, "image/png"))])
    assert r.status_code == 413 and "big.png" in r.json()["error"]

    too_many = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(9)]
    r = client.post("/v1/predict", files=too_many)
    assert r.status_code == 413 and "too many files" in r.json()["error"]


def test_concurrent_requests_are_batched_and_answered_correctly(predictor):
    stub = StubPredictor()
    app = create_app(stub, max_batch=16, max_wait_ms=200, queue_size=64, demo=False)
    imgs = [png_bytes(s) for s in range(12)]

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                for _ in range(200):
                    if (await c.get("/healthz")).status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                rs = await asyncio.gather(*(
                    c.post("/v1/predict", content=d, headers={"Content-Type": "image/png"})
                    for d in imgs))
                return rs, (await c.get("/metrics")).text

    rs, text = asyncio.run(run())
    assert all(r.status_code == 200 for r in rs)
    calls = [n for n in stub.batches if n > 0]
    assert sum(calls) == 12 and len(calls) < 12 and max(calls) > 1  # shared model calls
    from vggcifar.serving import load_pixels

    for r, d in zip(rs, imgs):  # each request got its own image's answer
        px, _ = load_pixels(d, 32)
        assert r.json()["results"][0]["label"] == CLASSES[int(px.numpy().mean()) % 10]
    assert metric(text, "vggcifar_batch_size_count") == len(calls)
    assert metric(text, "vggcifar_batch_size_sum") == 12


def test_a_lone_request_does_not_wait_for_company():
    """The batch waits for more images only while other requests are on their way."""
    app = create_app(StubPredictor(), max_batch=16, max_wait_ms=3000, demo=False)
    with TestClient(app) as c:
        wait_ready(c)
        t0 = time.perf_counter()
        r = c.post("/v1/predict", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and time.perf_counter() - t0 < 1.5


def test_non_finite_probabilities_are_an_image_error():
    stub = StubPredictor(nan_rows=[1])
    app = create_app(stub, max_batch=8, max_wait_ms=50, demo=False)
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", png_bytes(i), "image/png"))
                                         for i in range(3)])
        assert r.status_code == 200
        a, b, d = r.json()["results"]
        assert "label" in a and "label" in d
        assert "non-finite" in b["error"] and b["file"] == "1.png"
        text = c.get("/metrics").text
        assert metric(text, "vggcifar_image_errors_total", 'reason="nonfinite"') == 1


# ---- /healthz, /metrics ----------------------------------------------------------------------


def test_healthz_only_after_a_warm_up_inference():
    gate = threading.Event()
    stub = StubPredictor(warmup_gate=gate)
    app = create_app(stub, demo=False)
    with TestClient(app) as c:
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        assert "Retry-After" in r.headers
        r = c.post("/v1/predict", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 503
        gate.set()
        info = wait_ready(c)
        assert info["status"] == "ready" and info["classes"] == list(CLASSES)
        assert info["model"] == "stub" and info["max_batch"] == 32
        assert stub.batches[:2] == [-1, -32]  # warm-up: one image, then a full batch
    # Not started at all (no lifespan): not ready either.
    async def bare():
        transport = httpx.ASGITransport(app=create_app(StubPredictor(), demo=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await ac.get("/healthz")

    assert asyncio.run(bare()).status_code == 503


def test_failed_warm_up_stays_unready():
    app = create_app(StubPredictor(fail_warmup=True), demo=False)
    with TestClient(app) as c:
        for _ in range(100):
            r = c.get("/healthz")
            if r.json()["status"] != "starting":
                break
            time.sleep(0.02)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "non-finite" in r.json()["error"]


def test_metrics(predictor):
    app = create_app(predictor, max_batch=4, max_wait_ms=1, demo=False)
    with TestClient(app) as c:
        wait_ready(c)
        before = c.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        c.post("/v1/predict", content=png_bytes(), headers={"Content-Type": "image/png"})
        c.post("/v1/predict", files=[("files", ("a.png", png_bytes(), "image/png")),
                                     ("files", ("b.png", b"junk", "image/png"))])
        c.post("/v1/predict", content=b"junk", headers={"Content-Type": "image/png"})
        text = c.get("/metrics").text
    for name in ("vggcifar_requests_total", "vggcifar_image_errors_total",
                 "vggcifar_request_latency_seconds_bucket", "vggcifar_batch_size_bucket",
                 "vggcifar_queue_depth", "vggcifar_inference_seconds_bucket", "vggcifar_ready"):
        assert name in text
    assert metric(text, "vggcifar_requests_total", 'status="200"') == 2
    assert metric(text, "vggcifar_requests_total", 'status="422"') == 1
    assert metric(text, "vggcifar_images_total", 'outcome="ok"') == 2
    assert metric(text, "vggcifar_image_errors_total", 'reason="decode"') == 2
    assert metric(text, "vggcifar_request_latency_seconds_count") == 3
    assert metric(text, "vggcifar_batch_size_sum") == 2
    assert metric(text, "vggcifar_queue_depth") == 0
    assert metric(text, "vggcifar_ready") == 1
    # Each app has its own registry: a second app starts from zero.
    other = create_app(predictor, demo=False)
    with TestClient(other) as c2:
        assert "vggcifar_requests_total{" not in c2.get("/metrics").text


# ---- the bounded queue -----------------------------------------------------------------------


def test_full_queue_answers_503_and_recovers():
    gate = threading.Event()
    stub = StubPredictor(gate=gate)
    app = create_app(stub, max_batch=1, max_wait_ms=0, queue_size=1, demo=False)
    post = dict(headers={"Content-Type": "image/png"})
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        wait_ready(c)
        state = app.state.vgg
        first = pool.submit(c.post, "/v1/predict", content=png_bytes(1), **post)
        assert stub.entered.wait(10)  # the first image is in the (blocked) model call
        second = pool.submit(c.post, "/v1/predict", content=png_bytes(2), **post)
        deadline = time.time() + 10
        while state.batcher.depth < 1 and time.time() < deadline:  # the second one waits
            time.sleep(0.01)
        assert state.batcher.depth == 1
        r = c.post("/v1/predict", content=png_bytes(3), **post)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1" and "busy" in r.json()["error"]
        text = c.get("/metrics").text
        assert metric(text, "vggcifar_queue_depth") == 1
        assert metric(text, "vggcifar_requests_total", 'status="503"') == 1
        gate.set()
        assert first.result(10).status_code == 200
        assert second.result(10).status_code == 200
        r = c.post("/v1/predict", content=png_bytes(3), **post)
        assert r.status_code == 200


# ---- the demo page ---------------------------------------------------------------------------


def test_demo_is_mounted_beside_the_api(predictor):
    app = create_app(predictor, demo=True)
    with TestClient(app) as c:
        wait_ready(c)
        r = c.get("/")
        assert r.status_code == 200 and "<html" in r.text.lower()
        assert c.get("/gradio_api/info").status_code == 200
        r = c.post("/v1/predict", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and "label" in r.json()["results"][0]
        assert c.get("/metrics").status_code == 200


# ---- the command -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_help_and_port_in_use():
    r = CliRunner().invoke(serve_cli, ["--help"])
    assert r.exit_code == 0 and "--max-batch" in r.output and "--no-demo" in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(serve_cli, ["--port", str(port), "--no-demo"])
    assert r.exit_code == 2 and "cannot listen" in r.output


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_then_exits_0(tiny_checkpoint, tmp_path):
    port = free_port()
    exe = Path(sys.executable).parent / "vgg-serve"
    # A batch waits up to 5 s for company while a request is on its way (here one whose body
    # trickles in): requests are still in flight when SIGTERM arrives. The generous times keep
    # the order (trickle announced to the batcher, then the four queued) on a loaded machine.
    cmd = [str(exe), "--model", str(tiny_checkpoint), "--backend", "torch", "--device", "cpu",
           "--port", str(port), "--no-demo", "--max-batch", "64", "--max-wait-ms", "5000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "vgg-serve did not become ready"
            time.sleep(0.2)

        def send(i):
            return httpx.post(url + "/v1/predict", content=png_bytes(i), timeout=30,
                              headers={"Content-Type": "image/png"})

        def trickle():
            data = png_bytes(9)
            yield data[:20]
            time.sleep(3.0)
            yield data[20:]

        with ThreadPoolExecutor(5) as pool:
            slow = pool.submit(httpx.post, url + "/v1/predict", content=trickle(), timeout=30,
                               headers={"Content-Type": "image/png"})
            time.sleep(1.0)  # the trickling request is announced to the batcher by now
            futures = [pool.submit(send, i) for i in range(4)] + [slow]
            time.sleep(0.6)  # all four are waiting in the batcher
            assert not any(f.done() for f in futures)
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            answers = [f.result(30) for f in futures]
        assert [a.status_code for a in answers] == [200] * 5
        assert all("label" in a.json()["results"][0] for a in answers)
        rc = proc.wait(30)
        out = proc.stdout.read()
        assert rc == 0, out
        assert time.time() - t0 < 30
        assert "Shutting down" in out
        with pytest.raises(httpx.ConnectError):  # and it is gone
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
