"""The Open Inference Protocol (KServe v2 REST, as Triton, KServe and MLServer speak it) on
`vgg-serve`, beside ``/v1/predict``, so that ``tritonclient.http`` (and any v2 client) works
against the server unchanged:

- ``GET /v2``: server metadata; ``GET /v2/health/live``, ``/v2/health/ready``: 200 with
  ``{"live": true}``/``{"ready": true}`` (KServe's client reads the body) or 503 (live: the model
  failed to load; ready: not warmed up yet); ``HEAD`` too.
- ``GET /v2/models/{name}[/versions/1]``: model metadata; ``.../config``: Triton's model
  configuration (perf_analyzer reads it first); ``.../ready``: 200 once warmed up.
- Any other path under ``/v2``: 404, or 405 with ``Allow`` for a wrong method, as
  ``{"error": ...}`` (not the page's or FastAPI's ``{"detail": ...}``).
- Bodies may be gzip or deflate compressed (``Content-Encoding``), bounded once inflated.
- The classification extension: an output asked with ``parameters.classification = k`` comes
  back as ``[N, k]`` BYTES ``"value:index:label"``, highest first, as Triton answers.
- ``POST /v2/models/{name}[/versions/1]/infer``: input ``image`` FP32 ``[N, 3, S, S]`` RGB in
  [0, 1] (the ONNX contract: normalisation is the model's business; other values are a 400);
  outputs ``logits`` and ``probabilities`` FP32 ``[N, num_classes]``, those named in the
  request's ``outputs`` (all when it names none).

``name`` is the one ``vgg-export --triton`` gives the same model
(:func:`vggcifar.export.triton.triton_model_name`: ``vggcifar-default`` for the shipped model),
so one client serves both servers. Tensors travel as JSON ``data`` or with Triton's binary tensor
data extension: the body starts with ``Inference-Header-Content-Length`` bytes of JSON and the
raw little-endian tensors follow, in order. An output is returned binary when its
``parameters.binary_data`` is true, or, when it does not say, when the request's
``parameters.binary_data_output`` is (tritonclient's default).

Images go through the server's :class:`~vggcifar.serving.batching.DynamicBatcher`, one queue item
per image: ``/v1`` and ``/v2`` images share batches. A bad request is a 400 (404 for an unknown
model or version, 413 for too many images or bytes, 503 while not ready or when the queue or
the decode budget is full) with ``{"error": "..."}``, never a 500; a 500 means the model failed.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in the
# signatures of the routes, which are defined inside register (imports stay lazy).

import asyncio
import json
import math

import numpy as np

from ..runtime.contract import INPUT_NAME, OUTPUT_NAMES

MODEL_VERSION = "1"  # as the Triton repository vgg-export writes
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration")
# Request bodies may come compressed (tritonclient's request_compression_algorithm).
ENCODINGS = {"gzip": 16 + 15, "deflate": 15}  # zlib wbits: gzip wrapper, zlib wrapper
DATATYPE = "FP32"
# Bodies larger than this are parsed in a worker thread, not on the event loop.
INLINE_PARSE_BYTES = 32 * 1024
# A JSON tensor spends this many bytes per value at most (for the body limit).
JSON_BYTES_PER_VALUE = 32
# Input values may stray this far outside [0, 1] (rounding in the client's scaling).
RANGE_TOLERANCE = 1e-3
# Peak bytes of parsing one byte of a JSON body (Python floats and lists, then the array): a
# 24 MB body took 270 MB. Large parses hold this from vggcifar.images.DECODES, the budget image
# decodes hold, so concurrent requests cannot multiply it.
JSON_PARSE_BYTES_PER_BYTE = 12


class ProtocolError(Exception):
    """A request the protocol refuses: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def dumps(obj) -> bytes:
    """JSON bytes (orjson when installed: several times faster on long float lists)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is optional
        return json.dumps(obj, separators=(",", ":")).encode()
    return orjson.dumps(obj)


# ------------------------------------------------------------------------------ metadata

def model_metadata(state) -> dict:
    """The v2 model metadata: input ``image`` and both outputs, batch axis ``-1``."""
    p = state.predictor
    s, c = p.input_size, len(p.class_names)
    return {"name": state.model_name, "versions": [MODEL_VERSION],
            "platform": platform(p),
            "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, 3, s, s]}],
            "outputs": [{"name": o, "datatype": DATATYPE, "shape": [-1, c]}
                        for o in OUTPUT_NAMES]}


# Per runtime: the platform name in the protocol's "<project>_<format>" form (Triton's where
# Triton has one), and Triton's backend name.
PLATFORMS = {"onnx": "onnxruntime_onnx", "openvino": "openvino_onnx", "torch": "pytorch_libtorch",
             "tensorrt": "tensorrt_plan"}
BACKENDS = {"onnx": "onnxruntime", "openvino": "openvino", "torch": "pytorch",
            "tensorrt": "tensorrt"}


def platform(predictor) -> str:
    """The served runtime as a platform name; the full description (device, precision) stays
    in ``/healthz``."""
    return PLATFORMS.get(predictor.backend.name, predictor.backend.name)


def model_config(state) -> dict:
    """The model configuration (Triton's model configuration extension, which perf_analyzer and
    model_analyzer read before anything else): ``max_batch_size`` is the most images one
    request may carry, and the dims leave the batch axis out, as Triton's do."""
    p = state.predictor
    s, c = p.input_size, len(p.class_names)
    return {"name": state.model_name, "platform": platform(p),
            "backend": BACKENDS.get(p.backend.name, p.backend.name),
            "max_batch_size": state.batcher.queue_size,
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [3, s, s]}],
            "output": [{"name": o, "data_type": "TYPE_FP32", "dims": [c]} for o in OUTPUT_NAMES],
            "dynamic_batching": {"max_queue_delay_microseconds":
                                 int(state.batcher.max_wait * 1e6)},
            "version_policy": {"specific": {"versions": [int(MODEL_VERSION)]}}}


def server_metadata() -> dict:
    from .. import __version__

    return {"name": "vggcifar", "version": __version__, "extensions": list(EXTENSIONS)}


def check_model(state, name: str, version: str | None) -> None:
    """404 unless ``name`` (and ``version``, when given) is the served model."""
    if name != state.model_name:
        raise ProtocolError(404, f"unknown model {name!r}; this server serves "
                                 f"{state.model_name!r}")
    if version not in (None, "", MODEL_VERSION):
        raise ProtocolError(404, f"unknown version {version!r} of model {name!r}; it has "
                                 f"version {MODEL_VERSION}")


# ------------------------------------------------------------------------------ requests

def _split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """``(the JSON request, the binary tail)`` of an infer body."""
    if header_length is None:
        head, tail = body, b""
    else:
        if not (header_length.isascii() and header_length.strip().isdigit()):
            raise ProtocolError(400, f"{HEADER_LENGTH} must be a byte count, got "
                                     f"{header_length[:40]!r}")
        n = int(header_length)
        if n > len(body):
            raise ProtocolError(400, f"{HEADER_LENGTH} is {n}, but the body has only "
                                     f"{len(body)} bytes")
        head, tail = body[:n], body[n:]
    try:
        request = json.loads(head)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError too
        raise ProtocolError(400, f"malformed JSON request ({str(e)[:120]})") from None
    if not isinstance(request, dict):
        raise ProtocolError(400, "the request must be a JSON object")
    return request, tail


def _shape(tensor: dict, size: int, max_images: int) -> list[int]:
    shape = tensor.get("shape")
    want = f"[N, 3, {size}, {size}]"
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise ProtocolError(400, f"input {INPUT_NAME!r}: shape {str(shape)[:60]} is not {want}")
    if shape[1:] != [3, size, size] or shape[0] < 1:
        raise ProtocolError(400, f"input {INPUT_NAME!r}: shape {shape} is not {want} with N >= 1")
    if shape[0] > max_images:
        raise ProtocolError(413, f"too many images: {shape[0]} in one request, at most "
                                 f"{max_images}")
    return shape


def _tensor(tensor: dict, tail: bytes, shape: list[int]) -> np.ndarray:
    """The input's values as float32 ``shape``, from ``data`` or the binary tail."""
    count = math.prod(shape)
    params = tensor.get("parameters")
    params = params if isinstance(params, dict) else {}
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size != count * 4:
            raise ProtocolError(400, f"input {INPUT_NAME!r}: binary_data_size {str(size)[:30]} "
                                     f"is not {count * 4} ({shape} FP32)")
        if len(tail) != size:
            raise ProtocolError(400, f"input {INPUT_NAME!r}: {len(tail)} bytes of binary data "
                                     f"follow the JSON header, expected {size}")
        return np.frombuffer(tail, dtype="<f4").reshape(shape).astype(np.float32)
    if tail:
        raise ProtocolError(400, f"{len(tail)} bytes follow the JSON header, but no input "
                                 "declares binary_data_size")
    if "data" not in tensor:
        raise ProtocolError(400, f"input {INPUT_NAME!r} has neither data nor binary_data_size")
    try:
        # Without a dtype first: numpy would turn "0.5" and true into numbers, which FP32 data
        # must already be (Triton refuses them too).
        x = np.asarray(tensor["data"])
        if x.dtype.kind not in "iuf":
            raise TypeError
        x = x.astype(np.float32)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise ProtocolError(400, f"input {INPUT_NAME!r}: data must be numbers (a flat or "
                                 "nested list)") from None
    if x.size != count:
        raise ProtocolError(400, f"input {INPUT_NAME!r}: {x.size} values for shape {shape}, "
                                 f"expected {count}")
    return x.reshape(shape)


def _wanted_outputs(request: dict) -> list[tuple[str, bool, int]]:
    """``[(output name, binary, classes)]`` in the order the response lists them; ``classes``
    > 0: the classification extension's top-``classes`` strings instead of the tensor."""
    params = request.get("parameters")
    params = params if isinstance(params, dict) else {}
    default_binary = params.get("binary_data_output") is True
    asked = request.get("outputs")
    if asked is None or asked == []:  # not specified: every output (the protocol's words)
        return [(name, default_binary, 0) for name in OUTPUT_NAMES]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError(400, "outputs must be a list of objects")
    out = []
    for o in asked:
        name = o.get("name")
        if name not in OUTPUT_NAMES:
            raise ProtocolError(400, f"unknown output {str(name)[:40]!r}; the model has "
                                     f"{', '.join(OUTPUT_NAMES)}")
        p = o.get("parameters")
        p = p if isinstance(p, dict) else {}
        k = p.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ProtocolError(400, f"output {name!r}: classification must be a class count "
                                     f">= 0, got {str(k)[:30]}")
        binary = p.get("binary_data")
        out.append((name, binary if isinstance(binary, bool) else default_binary, k))
    return out


def parse_infer(body: bytes, header_length: str | None, size: int,
                max_images: int) -> tuple[np.ndarray, dict, list[tuple[str, bool]]]:
    """``(x [N, 3, size, size] float32, the JSON request, wanted outputs)`` of an infer body.

    Raises:
        ProtocolError: anything the protocol or the model's input contract refuses.
    """
    request, tail = _split_body(body, header_length)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"inputs must list exactly one tensor, {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise ProtocolError(400, f"unknown input {str(tensor.get('name'))[:40]!r}; the model's "
                                 f"input is {INPUT_NAME!r}")
    if tensor.get("datatype") != DATATYPE:
        raise ProtocolError(400, f"input {INPUT_NAME!r}: datatype "
                                 f"{str(tensor.get('datatype'))[:20]!r} is not {DATATYPE}")
    shape = _shape(tensor, size, max_images)
    wanted = _wanted_outputs(request)
    x = _tensor(tensor, tail, shape)
    if not np.isfinite(x).all():
        raise ProtocolError(400, f"input {INPUT_NAME!r} holds NaN or infinite values")
    # Outside [0, 1] the answer is garbage (0-255 floats are misclassified) or, for huge finite
    # values, the model's own NaN: the client's mistake, so a 400 naming the range, not a 500.
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ProtocolError(400, f"input {INPUT_NAME!r}: values must be RGB in [0, 1] (divide "
                                 f"8-bit pixels by 255); got values from {lo:.6g} to {hi:.6g}")
    return x, request, wanted


def parse_cost(body: bytes, header_length: str | None) -> int:
    """Estimated peak bytes of :func:`parse_infer` on ``body``: its JSON part at
    :data:`JSON_PARSE_BYTES_PER_BYTE`, a binary tensor twice (the array and its float32 copy)."""
    n = len(body)
    if header_length is not None and header_length.isascii() and header_length.isdigit():
        n = min(n, int(header_length))
    return n * JSON_PARSE_BYTES_PER_BYTE + (len(body) - n) * 2


def parse_within_budget(body: bytes, header_length: str | None, size: int, max_images: int):
    """:func:`parse_infer` holding :func:`parse_cost` bytes of the process-wide decode budget
    (:data:`vggcifar.images.DECODES`) while it runs; call it in a worker thread, as it may wait
    for the budget.

    Raises:
        ProtocolError: as :func:`parse_infer`; 503 when the budget stayed in use too long.
    """
    from ..errors import VggCifarError
    from ..images import DECODES

    try:  # parse_infer raises ProtocolError only: a VggCifarError is the budget's refusal
        with DECODES.reserve(parse_cost(body, header_length), "request"):
            return parse_infer(body, header_length, size, max_images)
    except VggCifarError:
        raise ProtocolError(503, "server busy with other requests; retry later") from None


def encode_response(state, request: dict, wanted, outputs: dict) -> tuple[bytes, dict]:
    """``(body, headers)`` of an infer response; ``outputs``: name -> ``[N, C]`` float32."""
    head = {"model_name": state.model_name, "model_version": MODEL_VERSION, "outputs": []}
    if isinstance(request.get("id"), str):
        head["id"] = request["id"]
    blobs = []
    for name, binary, classes in wanted:
        y = np.ascontiguousarray(outputs[name], dtype="<f4")
        if classes:
            t, blob = _classification(name, y, classes, state.predictor.class_names, binary)
        else:
            t = {"name": name, "datatype": DATATYPE, "shape": list(y.shape)}
            blob = y.tobytes() if binary else None
            if blob is None:
                t["data"] = y.ravel().tolist()
        if blob is not None:
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        head["outputs"].append(t)
    header = dumps(head)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {"Content-Type": "application/octet-stream",
                                         HEADER_LENGTH: str(len(header))}


def _classification(name: str, y: np.ndarray, k: int, labels, binary: bool):
    """The classification extension (as Triton): ``[N, k]`` BYTES, each ``"value:index:label"``
    for the ``k`` highest values of a row, highest first (``k`` capped at the class count).
    Returns ``(the output's JSON, its binary blob or None)``; BYTES travel in binary as a 4-byte
    little-endian length before each string."""
    k = min(k, y.shape[1])
    top = np.argsort(-y, axis=1, kind="stable")[:, :k]
    rows = [[f"{y[i, j]:f}:{j}:{labels[j]}" for j in top[i]] for i in range(len(y))]
    t = {"name": name, "datatype": "BYTES", "shape": [len(y), k]}
    if not binary:
        t["data"] = [s for row in rows for s in row]
        return t, None
    parts = []
    for s in (s.encode() for row in rows for s in row):
        parts += [len(s).to_bytes(4, "little"), s]
    return t, b"".join(parts)


# ------------------------------------------------------------------------------ infer

async def _read_body(request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > cap:
        raise ProtocolError(413, f"request body of {int(declared):,} bytes over the limit of "
                                 f"{cap:,} bytes")
    from starlette.requests import ClientDisconnect

    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:
                raise ProtocolError(413, f"request body over the limit of {cap:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client hung up mid-body: its event, not a server error
        raise ProtocolError(499, "client closed the connection before the body was "
                                 "read") from None
    return b"".join(chunks)


def inflate(body: bytes, encoding: str, cap: int) -> bytes:
    """A gzip- or deflate-compressed body, decompressed to at most ``cap`` bytes (a small body
    that inflates past the limit is a 413, as an uncompressed one would be).

    Raises:
        ProtocolError: 415 for another encoding, 400 for a damaged stream, 413 past ``cap``.
    """
    import zlib

    if encoding not in ENCODINGS:
        raise ProtocolError(415, f"Content-Encoding {encoding[:30]!r} is not supported; send "
                                 f"{', '.join(ENCODINGS)} or an uncompressed body")
    tries = (ENCODINGS[encoding],) + ((-15,) if encoding == "deflate" else ())  # raw deflate too
    for i, wbits in enumerate(tries):
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, cap + 1)
        except zlib.error as e:
            if i + 1 < len(tries):
                continue
            raise ProtocolError(400, f"the {encoding} body cannot be decompressed ({e})") from None
        if len(out) > cap or d.unconsumed_tail:
            raise ProtocolError(413, f"request body over the limit of {cap:,} bytes once "
                                     "decompressed")
        if not d.eof:
            raise ProtocolError(400, f"the {encoding} body is truncated")
        return out
    raise AssertionError("unreachable")


def inflate_and_parse_within_budget(encoding: str, cap: int, body: bytes,
                                    header_length: str | None, size: int, max_images: int):
    """:func:`inflate` then :func:`parse_infer`, holding the decode budget for the inflated
    bytes (``cap``, as their size is unknown before) and then for the parse as well: a 25 kB
    gzip body can stand for 24 MB. Call it in a worker thread.

    Raises:
        ProtocolError: as :func:`inflate` and :func:`parse_infer`; 503 when the budget stayed in
            use too long.
    """
    from ..errors import VggCifarError
    from ..images import DECODES

    try:
        with DECODES.reserve(cap, "request"):
            raw = inflate(body, encoding, cap)
            with DECODES.reserve(parse_cost(raw, header_length), "request"):
                return parse_infer(raw, header_length, size, max_images)
    except VggCifarError:
        raise ProtocolError(503, "server busy with other requests; retry later") from None


async def infer(request, state, name: str, version: str | None, arrival) -> tuple[bytes, dict]:
    """One infer call -> ``(body, headers)``; :class:`ProtocolError` for refused requests."""
    from .batching import BatchError, QueueClosed, QueueFull
    from .predictor import NON_FINITE

    check_model(state, name, version)
    if not state.ready:
        raise ProtocolError(503, f"not ready ({state.status})")
    size = state.predictor.input_size
    max_images = state.batcher.queue_size  # a request must fit in an empty queue
    cap = 4096 + max_images * 3 * size * size * JSON_BYTES_PER_VALUE
    body = await _read_body(request, cap)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    args = (body, request.headers.get(HEADER_LENGTH), size, max_images)
    if encoding not in ("", "identity"):
        from .limits import in_decode_thread

        # inflated, a body obeys --max-request-size too, and holds the decode budget
        x, req, wanted = await in_decode_thread(
            inflate_and_parse_within_budget, encoding, min(cap, state.max_request_bytes), *args)
    elif len(body) <= INLINE_PARSE_BYTES:
        x, req, wanted = parse_infer(*args)
    else:
        from .limits import in_decode_thread

        x, req, wanted = await in_decode_thread(parse_within_budget, *args)
    try:
        futures = state.batcher.submit(x, arrival)
    except (QueueFull, QueueClosed) as e:
        raise ProtocolError(503, f"server busy: {e}; retry later") from None
    rows = await asyncio.gather(*futures, return_exceptions=True)
    failed = next((r for r in rows if isinstance(r, BaseException)), None)
    if failed is not None:
        msg = str(failed) if isinstance(failed, BatchError) else \
            f"inference failed ({type(failed).__name__})"
        raise ProtocolError(500, msg)
    outputs = {o: np.stack([r[0][i] for r in rows]) for i, o in enumerate(OUTPUT_NAMES)}
    if not all(np.isfinite(outputs[o]).all() for o in OUTPUT_NAMES):
        raise ProtocolError(500, NON_FINITE)
    return encode_response(state, req, wanted, outputs)


# ------------------------------------------------------------------------------ routes

def register(app, state) -> None:
    """Add the ``/v2`` routes to the FastAPI ``app`` serving ``state``
    (:class:`~vggcifar.serving.server_state.ServerState`)."""
    from fastapi import Request
    from fastapi.responses import Response

    def error(e: ProtocolError) -> Response:
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return Response(dumps({"error": str(e)}), status_code=e.status, headers=headers,
                        media_type="application/json")

    def ok(body: dict) -> Response:
        return Response(dumps(body), media_type="application/json")

    async def server():
        return ok(server_metadata())

    async def live():
        # A failed warm-up never recovers: say so, so a liveness probe restarts the server.
        # The bodies are what KServe's client reads ({"live": true}); tritonclient reads codes.
        if state.status == "failed":
            return error(ProtocolError(503, f"the model failed to load: {state.error}"))
        return ok({"live": True})

    async def ready():
        return ok({"ready": True}) if state.ready else \
            error(ProtocolError(503, f"not ready ({state.status})"))

    def about_the_model(describe):
        """A GET route answering ``describe(state)`` for the served model (404 for another)."""
        async def route(name: str, version: str | None = None):
            try:
                check_model(state, name, version)
            except ProtocolError as e:
                return error(e)
            return ok(describe(state))
        return route

    metadata, config = about_the_model(model_metadata), about_the_model(model_config)

    async def model_ready(name: str, version: str | None = None):
        try:
            check_model(state, name, version)
            return await ready()
        except ProtocolError as e:
            return error(e)

    async def infer_route(request: Request, name: str, version: str | None = None):
        status = 500
        try:
            with state.batcher.arriving() as arrival:
                body, headers = await infer(request, state, name, version, arrival)
            status = 200
            return Response(body, headers=headers)
        except ProtocolError as e:
            status = e.status
            return error(e)
        finally:
            state.metrics.infer_requests.labels(str(status)).inc()

    routes = []

    def add(path, fn, methods, summary):
        app.add_api_route(path, fn, methods=methods, summary=summary)
        routes.append(app.router.routes[-1])

    get = ["GET", "HEAD"]  # HEAD: load balancers' health checks
    add("/v2", server, methods=get, summary="Open Inference Protocol: server metadata")
    add("/v2/", server, methods=get, summary="v2: server metadata (the OpenAPI spelling)")
    add("/v2/health/live", live, methods=get, summary="v2: the process is up")
    add("/v2/health/ready", ready, methods=get, summary="v2: 200 once warmed up")
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        add(base, metadata, methods=get, summary="v2: model metadata")
        add(base + "/config", config, methods=get, summary="v2: model configuration")
        add(base + "/ready", model_ready, methods=get, summary="v2: model readiness")
        add(base + "/infer", infer_route, methods=["POST"], summary="v2: inference")

    async def unrouted(request: Request, rest: str = ""):
        # Anything else under /v2 answers in the protocol's error format ({"error": ...}),
        # not the page's or FastAPI's {"detail": ...}, which clients cannot read.
        path = request.url.path
        bare = path.rstrip("/") or path
        if bare != path and any(r.path_regex.match(bare) and request.method in r.methods
                                for r in routes):
            from fastapi.responses import RedirectResponse  # as redirect_slashes did

            return RedirectResponse(str(request.url.replace(path=bare)), status_code=307)
        allowed = sorted({m for r in routes if r.path_regex.match(path) for m in r.methods})
        if allowed:
            return Response(dumps({"error": f"{request.method} is not allowed on {path[:80]}; "
                                            f"use {', '.join(allowed)}"}), status_code=405,
                            headers={"Allow": ", ".join(allowed)}, media_type="application/json")
        return error(ProtocolError(404, f"no such endpoint {path[:80]!r} under /v2"))

    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app.add_api_route("/v2", unrouted, include_in_schema=False, methods=every)
    app.add_api_route("/v2/{rest:path}", unrouted, include_in_schema=False, methods=every)
