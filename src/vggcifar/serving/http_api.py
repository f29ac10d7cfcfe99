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
- ``/v2/...``: the Open Inference Protocol (KServe v2 REST, ``tritonclient``), see
  :mod:`.inference_protocol`; its images share ``/v1/predict``'s batches.
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
import time

from ..checks import is_finite_number
from ..cli_common import DEFAULT_TOP_K
from ..errors import VggCifarError
from .demo import DEFAULT_MAX_FILE_MB
from .limits import in_decode_thread
from .server_state import ServerState

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_QUEUE_SIZE = 256   # images waiting for a batch; beyond this: 503
DEFAULT_MAX_FILES = 64     # images per request
RETRY_AFTER_S = 1
RAW_TYPES = ("application/octet-stream",)


class _TooLarge(Exception):
    """The request body or one of its files is over the limit (HTTP 413)."""


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


async def _predict(request, state: ServerState, top_k: int, arrival=None, tta: str = "none"):
    """-> ``(status, body dict, extra headers)``; ``arrival``: from the batcher's
    :meth:`~vggcifar.serving.batching.DynamicBatcher.arriving`, ended at submission; ``tta``: a
    TTA mode (each image's views are batched as images of their own, then averaged)."""
    from starlette.requests import ClientDisconnect

    import numpy as np

    from ..preprocessing import uint8_to_unit
    from .batching import QueueClosed, QueueFull
    from .views import VIEW_COUNT, tta_views

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
    except ClientDisconnect:  # the client hung up mid-body: its event, not a server error
        return 499, {"error": "client closed the connection before the body was read"}, {}

    # Queue first, then decode: a request that cannot be queued costs no decoding.
    n_views = VIEW_COUNT[tta]
    waiting = n_views * sum(data is not None for _, data, _ in items)
    if waiting > state.batcher.queue_size:
        return 413, {"error": f"too many images for tta={tta}: {waiting // n_views} images of "
                              f"{n_views} views each; at most "
                              f"{state.batcher.queue_size // n_views} per request"}, {}
    if waiting and state.batcher.depth + waiting > state.batcher.queue_size:
        return 503, {"error": f"server busy: queue full ({state.batcher.depth} of "
                              f"{state.batcher.queue_size} images waiting); retry later"}, retry
    p = state.predictor
    decoded = await asyncio.gather(*(
        in_decode_thread(_decode, p, name, data) if data is not None
        else asyncio.sleep(0, (None, [], err, 0.0))
        for name, data, err in items))
    good = [i for i, d in enumerate(decoded) if d[0] is not None]
    futures = []
    if good:
        x = uint8_to_unit(np.stack([decoded[i][0] for i in good]))
        try:
            futures = state.batcher.submit(np.concatenate(tta_views(x, tta)), arrival)
        except QueueFull as e:
            return 503, {"error": f"server busy: {e}; retry later"}, retry
        except QueueClosed as e:
            return 503, {"error": str(e)}, retry
    answers = await asyncio.gather(*futures, return_exceptions=True)
    by_index = dict(zip(good, _mean_over_views(answers, len(good))))
    return _results(state, items, decoded, by_index, top_k, tta)


def _mean_over_views(answers: list, n: int) -> list:
    """The batcher's answers for ``n`` images' views (view-major: ``answers[v * n + j]``) as one
    answer per image: the mean ``(logits, probabilities)`` and the summed model time, or the
    first exception among its views."""
    out = []
    for j in range(n):
        views = answers[j::n]
        failed = next((a for a in views if isinstance(a, BaseException)), None)
        if failed is not None or len(views) == 1:
            out.append(failed or views[0])
            continue
        k = 1.0 / len(views)
        rows = tuple(sum(v[0][i] for v in views) * k for i in range(len(views[0][0])))
        out.append((rows, sum(v[1] for v in views)))
    return out


def _results(state: ServerState, items, decoded, by_index: dict, top_k: int,
             tta: str = "none"):
    """``(status, {"results": [...]})`` of a ``/v1/predict`` request from its ``items``
    ``[(name, bytes, error)]``, their ``decoded`` ``(pixels, notes, error, seconds)`` and the
    batcher's answers by item index: a :class:`BatchError`, or ``((logits, probabilities),
    seconds)`` rows."""
    from .batching import BatchError

    p, m = state.predictor, state.metrics
    results, server_fault = [], False
    for i, ((name, _, _), (_, notes, err, secs)) in enumerate(zip(items, decoded)):
        ans = by_index.get(i)
        if err is not None:
            reason = "decode"
            pred = p.prediction(name, None, ms=secs * 1000, error=err)
        elif isinstance(ans, BaseException):
            reason, server_fault = "inference", True
            err = str(ans) if isinstance(ans, BatchError) else \
                f"inference failed ({type(ans).__name__})"
            pred = p.prediction(name, None, ms=secs * 1000, error=err)
        else:
            (_, probs), share = ans
            pred = p.prediction(name, probs, top_k, ms=(secs + share) * 1000, notes=notes,
                                tta=tta)
            reason = "nonfinite" if pred.error else None
            server_fault |= bool(pred.error)
        if reason is None:
            m.images_ok.inc()
        else:
            m.image_errors.labels(reason).inc()
            m.images_error.inc()
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
    from fastapi import FastAPI

    from .inference_protocol import register as register_inference_protocol

    for name, v in (("max_file_mb", max_file_mb), ("max_request_mb", max_request_mb),
                    ("max_wait_ms", max_wait_ms)):
        if v is not None and not (is_finite_number(v) and v >= 0):
            raise VggCifarError(f"{name} must be a finite number >= 0, got {v!r}")
    if max_request_mb is None:
        max_request_mb = 4 * max_file_mb
    max_request_mb = max(max_request_mb, max_file_mb)
    state = ServerState(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                        queue_size=queue_size, max_file_mb=max_file_mb,
                        max_request_mb=max_request_mb, max_files=max_files)

    app = FastAPI(title="vggcifar", lifespan=state.lifespan, docs_url="/v1/docs",
                  redoc_url=None, openapi_url="/v1/openapi.json")
    app.state.vgg = state
    register_inference_protocol(app, state)

    _add_v1_routes(app, state, top_k)

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
    # Around the whole router, so every route has them: the API, /v2 and the mounted page.
    from .limits import BODY_SLACK_BYTES, BodyLimit, SafeHeaders

    app.add_middleware(BodyLimit, max_bytes=state.max_request_bytes + BODY_SLACK_BYTES)
    app.add_middleware(SafeHeaders)
    return app


def _add_v1_routes(app, state: ServerState, top_k: int) -> None:
    """``POST /v1/predict`` (``top_k``: its default ``?top_k=``), ``GET /healthz`` and
    ``GET /metrics``."""
    from typing import Literal

    from fastapi import Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    from .names import TTA_MODES

    from .inference_protocol import dumps

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request, exc):
        # FastAPI answers {"detail": [...]} (?top_k=0, ?tta=bogus); this API's errors are
        # {"error": "..."}. The value sent is not echoed back.
        text = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'request'}: {e['msg']}"
                         for e in exc.errors())
        return JSONResponse({"error": text[:500]}, status_code=422)

    @app.post("/v1/predict", summary="Classify one or many images")
    async def predict(request: Request,
                      top_k: int = Query(top_k, ge=1, le=1000,
                                         description="classes listed per image"),
                      tta: Literal[TTA_MODES] = Query(
                          "none", description="test-time augmentation: none (one view), flip "
                          "(2 views) or flip-shift (6 views)")):
        t0 = time.perf_counter()
        status = 500
        try:
            with state.batcher.arriving() as arrival:
                status, body, headers = await _predict(request, state, top_k, arrival, tta)
            return Response(dumps(body), status_code=status, headers=headers,
                            media_type="application/json")
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
