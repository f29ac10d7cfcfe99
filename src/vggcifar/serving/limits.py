"""The HTTP guards every route of `vgg-serve` shares, and the server's connection limits.

:class:`BodyLimit` and :class:`SafeHeaders` are pure ASGI middleware wrapping the whole
application: the API routes, the Open Inference Protocol routes and the mounted Gradio app.
The decode budget that bounds memory per process is :data:`vggcifar.images.DECODES`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import sys
import weakref

# A request body that sends nothing for this long is refused (HTTP 408): slow bodies must not
# hold a connection and its buffers indefinitely.
BODY_READ_TIMEOUT_S = 30.0
# Connections uvicorn keeps at once (beyond: 503) and how long an idle keep-alive one stays.
MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 5
# Largest request head (request line and headers) h11 buffers before answering 431/400.
MAX_HEADER_BYTES = 64 * 1024
# Request bodies may exceed the API's own limit by this much (multipart framing), so that
# /v1/predict's more precise 413 message is the one its clients see.
BODY_SLACK_BYTES = 64 * 1024


# glibc's M_MMAP_THRESHOLD, and the size from which allocations are always mapped.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 2**20


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the system at once (a fixed mmap threshold).

    Decodes run in many worker threads, each with its own malloc arena; by default glibc raises
    its mmap threshold after the first large free, and later decoded images (Pillow allocates
    them in 16 MB blocks) stay in those arenas: 8 palette bombs decoded one after another held
    2.7x the memory of one. Called by the servers at start; True if it applied (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False


# ------------------------------------------------------------------------------ overload

OVERLOAD_MESSAGE = (f"server busy: more than {MAX_CONNECTIONS} connections or requests at once; "
                    "retry later")


async def overload_answer(scope, receive, send) -> None:
    """What uvicorn answers beyond ``limit_concurrency``, as every other error here: JSON
    ``{"error": ...}`` with Retry-After (uvicorn's own is text/plain "Service Unavailable",
    which v2 clients cannot read)."""
    await _send_json(send, 503, {"error": OVERLOAD_MESSAGE}, [(b"retry-after", b"1")])


def answer_overload_in_json() -> int:
    """Make uvicorn's HTTP protocols answer :func:`overload_answer` beyond their limit. They
    import ``service_unavailable`` by name; returns how many protocol modules now use ours (0
    where a uvicorn version names it otherwise: its text answer stays, nothing breaks)."""
    import importlib

    done = 0
    for name in ("httptools_impl", "h11_impl", "zttp_impl", "zttp_h2_impl"):
        try:
            mod = importlib.import_module(f"uvicorn.protocols.http.{name}")
        except Exception:  # not installed in this uvicorn (optional parsers)
            continue
        if hasattr(mod, "service_unavailable"):
            mod.service_unavailable = overload_answer
            done += 1
    return done


# ------------------------------------------------------------------------------ ASGI guards

async def _send_json(send, status: int, body: dict, headers=()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, and bodies that stall for
    ``read_timeout_s`` with 408, on every route of the wrapped app.

    ``Content-Length`` refuses early; a body without one is counted as it arrives and cut off
    at the limit: the app then sees the client as gone, and what it answers is dropped.
    """

    def __init__(self, app, max_bytes: int, read_timeout_s: float = BODY_READ_TIMEOUT_S):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, {
                "error": f"request body of {int(declared):,} bytes over the limit of "
                         f"{self.max_bytes:,} bytes"})
        guard = _GuardedBody(self, receive, send)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if guard.refused is None:
                raise
            # The app saw the body end early (ClientDisconnect and the like): answered already.


class _GuardedBody:
    """One request's body under :class:`BodyLimit`."""

    def __init__(self, limit: BodyLimit, receive, send):
        self.limit, self._receive, self._send = limit, receive, send
        self.seen = 0
        self.refused: tuple[int, str] | None = None
        self.started = False  # a response has begun (ours or the app's)
        self.answered = False  # we sent the refusal
        self.body_done = False  # the last body chunk arrived

    async def receive(self):
        if self.refused is not None:
            return {"type": "http.disconnect"}
        if self.body_done:  # a streaming response waiting for the client to leave: no timeout
            return await self._receive()
        timeout = self.limit.read_timeout_s
        try:
            msg = await asyncio.wait_for(self._receive(), timeout)
        except asyncio.TimeoutError:
            msg, self.refused = None, (408, f"request body stalled for {timeout:g} s")
        if msg is not None and msg["type"] == "http.request":
            self.body_done = not msg.get("more_body", False)
            self.seen += len(msg.get("body", b""))
            if self.seen > self.limit.max_bytes:
                self.refused = (413, f"request body over the limit of "
                                     f"{self.limit.max_bytes:,} bytes")
        if self.refused is None:
            return msg
        if not self.started:
            self.started = self.answered = True
            await _send_json(self._send, self.refused[0], {"error": self.refused[1]})
        return {"type": "http.disconnect"}

    async def send(self, msg):
        if self.answered:
            return  # we refused the body: whatever the app says now is dropped
        if msg["type"] == "http.response.start":
            self.started = True
        await self._send(msg)


# Uploads served back by Gradio: never rendered by the browser on our origin (stored XSS).
_FILE_ROUTE_MARKERS = (b"/file=", b"/gradio_api/file")


class SafeHeaders:
    """``X-Content-Type-Options: nosniff`` on every response; files served back (Gradio's
    ``/gradio_api/file=...``) also get ``Content-Disposition: attachment`` and a CSP that
    forbids scripts, so an uploaded SVG or HTML file is never run on this origin (``<img>``
    tags still show images)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("raw_path") or scope.get("path", "").encode()
        served_file = any(m in path for m in _FILE_ROUTE_MARKERS)

        async def with_headers(msg):
            if msg["type"] == "http.response.start":
                drop = {b"x-content-type-options"}
                if served_file:
                    drop |= {b"content-disposition", b"content-security-policy"}
                headers = [(k, v) for k, v in msg.get("headers", []) if k.lower() not in drop]
                headers.append((b"x-content-type-options", b"nosniff"))
                if served_file:
                    headers += [(b"content-disposition", b"attachment"),
                                (b"content-security-policy", b"default-src 'none'; sandbox")]
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, with_headers)


_DECODE_THREADS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


async def in_decode_thread(fn, *args):
    """``fn(*args)`` in a worker thread, at most ``MAX_DECODES`` at once per event loop: image
    decodes and large ``/v2`` parses wait here, holding no thread, for the process-wide decode
    budget (:data:`vggcifar.images.DECODES`) that bounds their memory."""
    import anyio

    from ..images import MAX_DECODES

    loop = asyncio.get_running_loop()
    limiter = _DECODE_THREADS.get(loop)
    if limiter is None:
        limiter = _DECODE_THREADS[loop] = anyio.CapacityLimiter(MAX_DECODES)
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
