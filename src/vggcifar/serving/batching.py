"""Dynamic batching for the HTTP API: concurrent requests share model calls.

:class:`DynamicBatcher` lives in the server's asyncio event loop. Requests :meth:`submit` model
inputs (``[3, S, S]`` float32 RGB in [0, 1] each: ``/v1/predict``'s decoded images and
``/v2``'s tensors alike, so both share batches) and await one future per image. One background
task takes up to ``max_batch`` waiting images and runs the model once per batch in a single
worker thread, so the event loop keeps accepting requests meanwhile and the next batch fills up
while the current one runs.

When to run a batch that is not full: requests announce themselves while their bodies are read
and decoded (:meth:`arriving`). A batch runs at once when nothing more is on its way (a lone
client pays no waiting), else it waits for the announced images, at most ``max_wait_ms`` after
its oldest image arrived (like Triton's ``max_queue_delay_microseconds``). The queue is bounded: when an image does not fit,
:meth:`submit` raises :class:`QueueFull` (the API answers 503) instead of letting latency grow
without limit. :meth:`stop` processes every image already accepted before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting images plus the new ones would exceed the queue size."""


class QueueClosed(Exception):
    """The batcher is not running (not started yet, or shutting down)."""


class BatchError(Exception):
    """The model call for the batch holding this image failed."""


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float


class _Arrival:
    """A request on its way to :meth:`DynamicBatcher.submit` (counted in ``incoming``)."""

    def __init__(self, batcher: "DynamicBatcher"):
        self._batcher = batcher
        batcher.incoming += 1

    def done(self) -> None:
        b, self._batcher = self._batcher, None
        if b is not None:
            b.incoming -= 1
            if b._wake is not None:
                b._wake.set()


class DynamicBatcher:
    """Gather images from concurrent requests into model calls.

    Args:
        run_batch: ``[N, 3, S, S]`` float32 -> a tuple of arrays with ``N`` rows each (e.g.
            ``(logits, probabilities)``); called in a worker thread, one batch at a time.
        max_batch: most images per model call.
        max_wait_ms: how long a batch may wait for more images after its oldest one arrived.
        queue_size: most images waiting (not counting the batch being computed).
        on_batch: called in the event loop after each model call with ``(images, seconds)``.
    """

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, queue_size: int = 256,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or queue_size < 1 or not 0 <= max_wait_ms < float("inf"):  # nan too
            raise ValueError("max_batch and queue_size must be >= 1, max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self.in_flight = 0  # images in the model call now running
        self.incoming = 0  # requests reading or decoding images that will be submitted

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return len(self._items)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._closing

    def start(self) -> None:
        """Start the batching task in the running event loop."""
        if self._task is not None:
            return
        self._closing = False
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vgg-batch")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="vgg-batcher")

    async def run_in_worker(self, fn, *args):
        """Run ``fn(*args)`` in the model thread (e.g. a warm-up), between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @contextlib.contextmanager
    def arriving(self):
        """Around a request, from its start until it calls :meth:`submit` (pass it the yielded
        arrival) or fails: a batch that is not full waits (up to ``max_wait``) for the images of
        the requests announced so."""
        arrival = _Arrival(self)
        try:
            yield arrival
        finally:
            arrival.done()

    def submit(self, xs, arrival: "_Arrival | None" = None) -> list[asyncio.Future]:
        """Queue images (all or none): a list of ``[3, S, S]`` float32 arrays or one
        ``[K, 3, S, S]`` array. Each future resolves to ``(rows, seconds of model time per
        image)``, ``rows`` holding the image's row of each of ``run_batch``'s outputs, or raises
        :class:`BatchError`.

        Raises:
            QueueFull: not enough room for all of them.
            QueueClosed: the batcher is not running.
        """
        if arrival is not None:
            arrival.done()  # before raising too: a refused request is not on its way any more
        if not self.running:
            raise QueueClosed("the server is not accepting work (starting or shutting down)")
        if len(self._items) + len(xs) > self.queue_size:
            raise QueueFull(f"queue full ({len(self._items)} of {self.queue_size} images waiting)")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures = []
        for x in xs:
            fut = loop.create_future()
            self._items.append(_Item(x, fut, now))
            futures.append(fut)
        self._wake.set()
        return futures

    async def stop(self) -> None:
        """Refuse new images, finish every accepted one, then stop the task and the thread."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            self._executor.shutdown(wait=True)

    # ---- the loop ----------------------------------------------------------------------------

    async def _gather(self) -> None:
        """Wait until a full batch is waiting, nothing more is announced (:meth:`arriving`) or
        the oldest image has waited ``max_wait``."""
        deadline = self._items[0].enqueued + self.max_wait
        while len(self._items) < self.max_batch and self.incoming and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            n = min(self.max_batch, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            batch = [it for it in batch if not it.future.done()]  # the client went away
            if not batch:
                continue
            self.in_flight = len(batch)
            t0 = time.perf_counter()
            outs, error = (), None
            try:
                x = np.stack([it.x for it in batch])
                outs = tuple(np.asarray(o) for o in
                             await loop.run_in_executor(self._executor, self.run_batch, x))
                bad = [list(o.shape) for o in outs if o.ndim < 1 or len(o) != len(batch)]
                if bad or not outs:
                    raise RuntimeError(f"model returned shapes {bad} for {len(batch)} images")
            except Exception as e:  # noqa: BLE001 - reported to each waiting request
                log.exception("model call failed for a batch of %d images", len(batch))
                error = BatchError(f"inference failed ({type(e).__name__}: {e})"[:300])
            finally:
                self.in_flight = 0
            secs = time.perf_counter() - t0
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), secs)
                except Exception:  # noqa: BLE001 - metrics must never stop the batcher
                    log.exception("on_batch callback failed")
            for i, it in enumerate(batch):
                if it.future.done():
                    continue
                if error is not None:
                    it.future.set_exception(error)
                else:
                    it.future.set_result((tuple(o[i] for o in outs), secs / len(batch)))
