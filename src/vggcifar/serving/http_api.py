"""`vgg-serve`: an HTTP JSON API with dynamic batching, health and metrics, beside the demo page.

One FastAPI application shares one :class:`~vggcifar.serving.Predictor`:

- ``POST /v1/predict``: one or many images, as multipart parts named ``files`` (repeatable) or as
  the raw bytes of one image (``Content-Type: image/*`` or ``application/octet-stream``;
  ``?filename=`` names it in the answer). The answer is ``{"results": [...]}``, one object per
  image in order with the fields of ``vgg-predict --json``; an image that failed is
  ``{file, error, backend}``. HTTP 200 when at least one image was classified, 422 when none
  could be read, 413 for a file, body or file count over the limits, 415 for another content
  type, 503 (with ``Retry-After``) while warming up or when the queue is full. ``?top_k=`` sets
  the classes listed (default 3).
- ``GET /healthz``: 200 ``{"status": "ready", ...}`` with the model's description, only once a
  warm-up inference has passed; 503 before (``starting``) or if it failed (``failed``).
- ``GET /metrics``: Prometheus text format (``prometheus_client``, one registry per app).
- ``/``: the Gradio page of :mod:`.demo` (``--no-demo`` leaves it out).

Images are decoded in a thread pool (:func:`vggcifar.serving.load_pixels`: the same limits and
one-line errors as ``vgg-predict`` and the demo), then batched across requests by
:class:`~vggcifar.serving.batching.DynamicBatcher` (up to ``max_batch`` images or ``max_wait_ms``,
one model call at a time in a worker thread, a bounded queue). Request bodies are read in chunks
and cut off at the limit; ``Content-Length`` is only used to refuse early.

SIGTERM: uvicorn stops accepting connections, lets the requests in flight finish (their images are
still batched), then the batcher drains and the process exits 0.

FastAPI, uvicorn, Gradio and torch are imported inside functions, so ``vgg-serve --help`` is fast.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in the
# signatures of the endpoints, which are defined inside create_app (imports stay lazy).

import asyncio
import logging
import math
import os
import signal
import socket
import sys
import time

import click

from ..cli_common import (command, model_option, quiet_option, resolve_model, top_k_option,
                          user_errors)
from ..errors import VggCifarError
from .names import BACKENDS, DEFAULT_TOP_K
from .demo import DEFAULT_MAX_FILE_MB

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_QUEUE_SIZE = 256   # images waiting for a batch; beyond this: 503
DEFAULT_MAX_FILES = 64     # images per request
RETRY_AFTER_S = 1
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RAW_TYPES = ("application/octet-stream",)


class _TooLarge(Exception):
    """The request body or one of its files is over the limit (HTTP 413)."""


class Metrics:
    """The app's Prometheus metrics, in their own registry (several apps can coexist)."""

    def __init__(self, depth_fn):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vggcifar_requests", "Requests to /v1/predict by HTTP status",
                                ["status"], registry=r)
        self.images = Counter("vggcifar_images", "Images received by /v1/predict, by outcome "
                              "(ok, error)", ["outcome"], registry=r)
        self.image_errors = Counter("vggcifar_image_errors", "Images that could not be "
                                    "classified, by reason (decode, inference, nonfinite)",
                                    ["reason"], registry=r)
        self.latency = Histogram("vggcifar_request_latency_seconds", "Time to answer "
                                 "/v1/predict (body read, decode, queue, model, response)",
                                 registry=r, buckets=LATENCY_BUCKETS)
        self.batch_size = Histogram("vggcifar_batch_size", "Images per model call",
                                    registry=r, buckets=BATCH_BUCKETS)
        self.inference = Histogram("vggcifar_inference_seconds", "Duration of one model call "
                                   "(one batch)", registry=r, buckets=LATENCY_BUCKETS)
        self.queue_depth = Gauge("vggcifar_queue_depth", "Images waiting for a batch",
                                 registry=r)
        self.queue_depth.set_function(depth_fn)
        self.ready = Gauge("vggcifar_ready", "1 once the model is warmed up and serving",
                           registry=r)

    def on_batch(self, n: int, secs: float) -> None:
        self.batch_size.observe(n)
        self.inference.observe(secs)


class ServerState:
    """What the endpoints share: the predictor, the batcher, limits, readiness, metrics."""

    def __init__(self, predictor, *, max_batch, max_wait_ms, queue_size, max_file_mb,
                 max_request_mb, max_files):
        from .batching import DynamicBatcher

        self.predictor = predictor
        self.max_file_bytes = int(max_file_mb * 1024 * 1024)
        self.max_request_bytes = int(max_request_mb * 1024 * 1024)
        # A request must fit in an empty queue, so it can never be refused forever.
        self.max_files = max(1, min(max_files, queue_size))
        self.status = "starting"
        self.error: str | None = None
        self.batcher = DynamicBatcher(self._run_batch, max_batch=max_batch,
                                      max_wait_ms=max_wait_ms, queue_size=queue_size)
        self.metrics = Metrics(lambda: self.batcher.depth)
        self.batcher.on_batch = self.metrics.on_batch

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def _run_batch(self, pixels):
        return self.predictor.probabilities(pixels)

    def warm_up(self) -> None:
        """A blank image alone and a full batch through the model (the runtime initialises
        lazily, and a new batch shape may cost extra the first time); both must give finite
        probabilities that sum to 1."""
        import numpy as np

        s = self.predictor.input_size
        for n in sorted({1, self.batcher.max_batch}):
            probs = np.asarray(self.predictor.probabilities(np.zeros((n, 3, s, s), np.uint8)))
            if probs.shape != (n, len(self.predictor.class_names)):
                raise VggCifarError(f"warm-up: the model returned shape {list(probs.shape)} "
                                    f"for {n} images")
            if not np.isfinite(probs).all() or not np.allclose(probs.sum(1), 1, atol=1e-3):
                raise VggCifarError("warm-up: the model returned non-finite or unnormalised "
                                    "probabilities")

    def model_info(self) -> dict:
        p = self.predictor
        info = p.info
        return {"model": info.name, "arch": info.arch, "format": info.format,
                "test_accuracy": info.test_accuracy,
                "test_accuracy_tta": info.test_accuracy_tta,
                "backend": p.backend_name,
                "input_size": p.input_size, "classes": list(p.class_names),
                "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait * 1000,
                "queue_size": self.batcher.queue_size, "max_files": self.max_files,
                "max_file_bytes": self.max_file_bytes}


# ------------------------------------------------------------------------------------- bodies

async def _capped_stream(request, cap: int):
    """The request body in chunks; :class:`_TooLarge` as soon as it passes ``cap`` bytes."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise _TooLarge(f"request body over the limit of {_mb(cap)}")
        yield chunk


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


async def _read_images(request, state: ServerState) -> list[tuple[str, bytes | None, str | None]]:
    """``[(name, bytes or None, error or None)]`` from a multipart or raw-bytes body.

    Raises:
        _TooLarge: body, a file or the number of files over the limits (413).
        ValueError: a malformed or empty request (400); TypeError: wrong content type (415).
    """
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.datastructures import UploadFile

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = ctype == "multipart/form-data"
    raw = ctype.startswith("image/") or ctype in RAW_TYPES
    if not (multipart or raw):
        raise TypeError(f"unsupported content type {ctype or '(none)'}: send multipart/form-data "
                        "with parts named 'files', or the raw bytes of one image as image/* or "
                        "application/octet-stream")
    cap = state.max_request_bytes if multipart else state.max_file_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:  # refuse early; not relied upon
        raise _TooLarge(f"request body of {_mb(int(declared))} over the limit of {_mb(cap)}")
    if raw:
        body = b"".join([c async for c in _capped_stream(request, cap)])
        if not body:
            raise ValueError("empty body: send the image's bytes")
        return [(request.query_params.get("filename") or "image", body, None)]

    parser = MultiPartParser(request.headers, _capped_stream(request, cap),
                             max_files=state.max_files, max_fields=16, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "too many files" in e.message.lower():
            raise _TooLarge(f"too many files: at most {state.max_files} per request") from e
        raise ValueError(f"malformed multipart body ({e.message})") from e
    try:
        out = []
        for i, (key, value) in enumerate(form.multi_items()):
            if key != "files":
                continue
            if not isinstance(value, UploadFile):
                out.append((f"files[{i}]", None, f"files[{i}]: a form field, not a file; send "
                            "the image as a file part (with a filename)"))
                continue
            name = value.filename or f"files[{i}]"
            if value.size is not None and value.size > state.max_file_bytes:
                raise _TooLarge(f"{name}: {_mb(value.size)} is over the limit of "
                                f"{_mb(state.max_file_bytes)} per file")
            await value.seek(0)
            data = await value.read(state.max_file_bytes + 1)
            if len(data) > state.max_file_bytes:
                raise _TooLarge(f"{name}: over the limit of {_mb(state.max_file_bytes)} per file")
            out.append((name, data, None))
    finally:
        await form.close()
    if not out:
        raise ValueError("no files: send multipart parts named 'files' (repeatable), or the raw "
                         "bytes of one image")
    return out


# ---------------------------------------------------------------------------------- predict

def _decode(predictor, name: str, data: bytes):
    """``(pixels [3,S,S] uint8 ndarray or None, notes, error or None, seconds)``."""
    from .predictor import load_pixels

    t0 = time.perf_counter()
    try:
        pixels, notes = load_pixels(data, predictor.input_size, name=name)
        return pixels.numpy(), notes, None, time.perf_counter() - t0
    except VggCifarError as e:
        return None, [], str(e), time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - a decoder bug must not take the request down
        log.exception("decoding %s failed", name)
        return None, [], f"{name}: could not be decoded ({type(e).__name__})", \
            time.perf_counter() - t0


async def _predict(request, state: ServerState, top_k: int):
    """-> ``(status, body dict, extra headers)``."""
    from starlette.concurrency import run_in_threadpool

    from .batching import BatchError, QueueClosed, QueueFull
    from .predictor import Prediction

    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if not state.ready:
        return 503, {"error": f"not ready ({state.status})"}, retry
    try:
        items = await _read_images(request, state)
    except _TooLarge as e:
        return 413, {"error": str(e)}, {}
    except TypeError as e:
        return 415, {"error": str(e)}, {}
    except ValueError as e:
        return 400, {"error": str(e)}, {}

    p = state.predictor
    backend = p.backend_name
    decoded = await asyncio.gather(*(
        run_in_threadpool(_decode, p, name, data) if data is not None
        else asyncio.sleep(0, (None, [], err, 0.0))
        for name, data, err in items))
    good = [i for i, d in enumerate(decoded) if d[0] is not None]
    futures = []
    if good:
        try:
            futures = state.batcher.submit([decoded[i][0] for i in good])
        except QueueFull as e:
            return 503, {"error": f"server busy: {e}; retry later"}, retry
        except QueueClosed as e:
            return 503, {"error": str(e)}, retry
    answers = await asyncio.gather(*futures, return_exceptions=True)
    by_index = dict(zip(good, answers))

    results, server_fault = [], False
    m = state.metrics
    for i, ((name, _, _), (_, notes, err, secs)) in enumerate(zip(items, decoded)):
        pred = None
        if err is not None:
            reason = "decode"
        else:
            ans = by_index[i]
            if isinstance(ans, BaseException):
                err, reason, server_fault = (str(ans) if isinstance(ans, BatchError)
                                             else f"inference failed ({type(ans).__name__})"), \
                    "inference", True
            else:
                row, share = ans
                if not all(math.isfinite(float(v)) for v in row):
                    err, reason = (f"{name}: the model returned non-finite probabilities"), \
                        "nonfinite"
                    server_fault = True
                else:
                    top = p._top(row, top_k)
                    pred = Prediction(source=name, label=top[0][0], probability=top[0][1],
                                      top_k=top, backend=backend, ms=(secs + share) * 1000,
                                      notes=notes)
        if pred is None:
            m.image_errors.labels(reason).inc()
            m.images.labels("error").inc()
            pred = Prediction(source=name, error=err, backend=backend, ms=secs * 1000)
        else:
            m.images.labels("ok").inc()
        results.append(pred.to_dict())
    if any("error" not in r for r in results):
        status = 200
    else:
        status = 500 if server_fault else 422
    return status, {"results": results}, {}


# ---------------------------------------------------------------------------------- the app

def create_app(predictor, *, max_batch: int = DEFAULT_MAX_BATCH,
               max_wait_ms: float = DEFAULT_MAX_WAIT_MS, queue_size: int = DEFAULT_QUEUE_SIZE,
               max_file_mb: float = DEFAULT_MAX_FILE_MB, max_request_mb: float | None = None,
               max_files: int = DEFAULT_MAX_FILES, demo: bool = True,
               demo_examples: list | None = None, allowed_paths: list[str] | None = None,
               demo_concurrency: int | None = None, host: str = "127.0.0.1", port: int = 7860,
               top_k: int = DEFAULT_TOP_K):
    """The FastAPI application around ``predictor`` (see the module docstring).

    Args:
        predictor: a loaded :class:`~vggcifar.serving.Predictor` (its own warm-up may be off:
            the app warms up at start-up and reports ready afterwards).
        max_batch, max_wait_ms, queue_size: the dynamic batching (see
            :class:`~vggcifar.serving.batching.DynamicBatcher`).
        max_file_mb: limit per image (the demo's upload limit by default).
        max_request_mb: limit of a whole multipart body (default: 4 files at the limit).
        max_files: images per request (at most ``queue_size``).
        demo: mount the Gradio page at ``/``; ``demo_examples``, ``allowed_paths`` and
            ``demo_concurrency`` are passed on to it.
        top_k: classes listed per image when a request has no ``?top_k=``, and in the page's
            chart.
    The batcher and the warm-up start with the app's lifespan (uvicorn, or ``TestClient`` used
    as a context manager); until the warm-up has passed, ``/healthz`` and ``/v1/predict``
    answer 503.
    """
    import contextlib

    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse, Response

    if max_request_mb is None:
        max_request_mb = 4 * max_file_mb
    max_request_mb = max(max_request_mb, max_file_mb)
    state = ServerState(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                        queue_size=queue_size, max_file_mb=max_file_mb,
                        max_request_mb=max_request_mb, max_files=max_files)

    async def _warm_up():
        try:
            await state.batcher.run_in_worker(state.warm_up)
        except Exception as e:  # noqa: BLE001 - reported by /healthz, logged
            state.status, state.error = "failed", str(e)[:300] or type(e).__name__
            log.error("warm-up failed: %s", state.error)
            return
        state.status = "ready"
        state.metrics.ready.set(1)
        log.info("model warmed up; ready")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        # In the background: the server answers /healthz (503) while the model warms up.
        warm = asyncio.get_running_loop().create_task(_warm_up())
        try:
            yield
        finally:
            state.metrics.ready.set(0)
            if not warm.done():
                warm.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warm
            state.status = "stopping"
            await state.batcher.stop()  # finishes every image already accepted

    app = FastAPI(title="vggcifar", lifespan=lifespan, docs_url="/v1/docs",
                  redoc_url=None, openapi_url="/v1/openapi.json")
    app.state.vgg = state

    @app.post("/v1/predict", summary="Classify one or many images")
    async def predict(request: Request,
                      top_k: int = Query(top_k, ge=1, le=1000,
                                         description="classes listed per image")):
        t0 = time.perf_counter()
        status = 500
        try:
            status, body, headers = await _predict(request, state, top_k)
            return JSONResponse(body, status_code=status, headers=headers)
        finally:
            state.metrics.requests.labels(str(status)).inc()
            state.metrics.latency.observe(time.perf_counter() - t0)

    @app.get("/healthz", summary="Readiness: 200 once the model answered a warm-up inference")
    async def healthz():
        if state.ready:
            return {"status": "ready", **state.model_info()}
        body = {"status": state.status}
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if demo:
        import gradio as gr

        from .demo import DEFAULT_CONCURRENCY, build_demo

        blocks = build_demo(predictor, top_k=top_k, examples=demo_examples,
                            concurrency_limit=demo_concurrency or DEFAULT_CONCURRENCY,
                            max_file_size_mb=max_file_mb)
        # The same limits as launch_demo (vgg-demo).
        app = gr.mount_gradio_app(
            app, blocks, path="/", server_name=host, server_port=port,
            max_file_size=int(max_file_mb * 1024 * 1024),
            allowed_paths=list(allowed_paths or []), ssr_mode=False, show_error=False)
    return app


# ---------------------------------------------------------------------------------- the CLI

def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a port in use is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise VggCifarError(f"cannot listen on {host}:{port} ({e.strerror or e})") from e
    sock.set_inheritable(True)
    return sock


@command("vgg-serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 exposes the server to your whole network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: any free port, printed at start-up).")
@model_option()
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
              show_default=True, help="Runtime; auto = the fastest that works for the model here.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@top_k_option("Classes listed per image when a request has no ?top_k= (and in the demo page's "
              "chart).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=DEFAULT_MAX_BATCH,
              show_default=True, help="Most images per model call.")
@click.option("--max-wait-ms", type=click.FloatRange(0, 10000), default=DEFAULT_MAX_WAIT_MS,
              show_default=True, help="How long a batch waits for more images after its first.")
@click.option("--queue-size", type=click.IntRange(1), default=DEFAULT_QUEUE_SIZE,
              show_default=True, help="Images allowed to wait; beyond that requests get 503.")
@click.option("--max-file-size", "max_file_mb", type=click.FloatRange(min=0.001),
              default=DEFAULT_MAX_FILE_MB, show_default=True, help="Limit per image in MB "
              "(as vgg-demo's upload limit).")
@click.option("--max-request-size", "max_request_mb", type=click.FloatRange(min=0.001),
              default=None, help="Limit of a multipart body in MB [default: 4x --max-file-size].")
@click.option("--max-files", type=click.IntRange(1), default=DEFAULT_MAX_FILES,
              show_default=True, help="Images per request (at most --queue-size).")
@click.option("--demo-concurrency", type=click.IntRange(min=1), default=None,
              help="Predictions the demo page runs at once [default: as vgg-demo].")
@click.option("--no-demo", is_flag=True, help="Do not mount the Gradio page at /.")
@quiet_option("No access log or model lines: warnings, errors and the address line only.")
@user_errors
def main(host, port, model_path, backend, device, top_k, max_batch, max_wait_ms, queue_size,
         max_file_mb, max_request_mb, max_files, demo_concurrency, no_demo, quiet):
    """Serve the model over HTTP: POST /v1/predict (JSON, dynamic batching), GET /healthz,
    GET /metrics (Prometheus), and the demo page at /.

    SIGTERM or Ctrl-C: the requests in flight are answered, then the server exits.
    """
    import uvicorn

    from .predictor import Predictor

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s: %(name)s: %(message)s")
    try:
        sock = _bind(host, port)  # first: a port in use fails before the model is loaded
    except VggCifarError as e:
        raise VggCifarError(f"{e}; pass another --port (or --host)") from e
    port = sock.getsockname()[1]
    model_path = resolve_model(model_path)
    predictor = Predictor(model_path, backend=backend, device=device, warmup=False)
    if not quiet:
        click.echo(f"model: {predictor.info.describe()}; backend: {predictor.backend_name}",
                   err=True)
    examples, allowed = None, []
    if not no_demo:
        from .demo import make_workdir
        from .examples import write_examples

        work = make_workdir()
        # Uploads land in our own folder (Gradio reads GRADIO_TEMP_DIR when components are made).
        os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "uploads"))
        examples = write_examples(work / "examples")
        allowed = [str(work)]
    app = create_app(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     queue_size=queue_size, max_file_mb=max_file_mb,
                     max_request_mb=max_request_mb, max_files=max_files, demo=not no_demo,
                     demo_examples=examples, allowed_paths=allowed,
                     demo_concurrency=demo_concurrency, host=host, port=port, top_k=top_k)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving on http://{shown}:{port}: POST /v1/predict, GET /healthz, GET /metrics"
               + ("" if no_demo else ", demo page at /"), err=True)
    config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet,
                            lifespan="on", timeout_graceful_shutdown=30, log_config=None)
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM gracefully (in-flight requests finish, then the lifespan shutdown
    # drains the batcher) and re-raises it afterwards: exit 0 then, so atexit cleanup runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run(sockets=[sock])
    if not server.started:
        raise VggCifarError(f"the server on {host}:{port} did not start (see the log above)")


if __name__ == "__main__":
    main()
