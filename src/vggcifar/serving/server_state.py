"""What `vgg-serve`'s routes share: :class:`ServerState` (the predictor, the dynamic batcher,
limits, readiness) and its Prometheus :class:`Metrics`."""

import asyncio
import contextlib
import functools
import logging

from ..errors import VggCifarError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.infer_requests = Counter("vggcifar_infer_requests", "Requests to "
                                      "/v2/models/{name}/infer by HTTP status", ["status"],
                                      registry=r)
        # Bound once: a label lookup per image is measurable on the request path.
        self.images_ok = self.images.labels("ok")
        self.images_error = self.images.labels("error")

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

    @functools.cached_property
    def model_name(self) -> str:
        """The model's name on ``/v2``: the one ``vgg-export --triton`` gives it."""
        from ..export.triton import triton_model_name

        return triton_model_name(self.predictor.info.path)

    def _run_batch(self, x):
        """``[N, 3, S, S]`` float32 in [0, 1] -> ``(logits, probabilities)``."""
        return self.predictor.outputs(x)

    def warm_up(self) -> None:
        """A blank image alone and a full batch through the model (the runtime initialises
        lazily, and a new batch shape may cost extra the first time); both must give finite
        probabilities that sum to 1."""
        import numpy as np

        s = self.predictor.input_size
        for n in sorted({1, self.batcher.max_batch}):
            _, probs = self.predictor.outputs(np.zeros((n, 3, s, s), np.float32))
            probs = np.asarray(probs)
            if probs.shape != (n, len(self.predictor.class_names)):
                raise VggCifarError(f"warm-up: the model returned shape {list(probs.shape)} "
                                    f"for {n} images")
            if not np.isfinite(probs).all() or not np.allclose(probs.sum(1), 1, atol=1e-3):
                raise VggCifarError("warm-up: the model returned non-finite or unnormalised "
                                    "probabilities")

    async def _warm_up_in_worker(self) -> None:
        try:
            await self.batcher.run_in_worker(self.warm_up)
        except Exception as e:  # noqa: BLE001 - reported by /healthz, logged
            self.status, self.error = "failed", str(e)[:300] or type(e).__name__
            log.error("warm-up failed: %s", self.error)
            return
        self.status = "ready"
        self.metrics.ready.set(1)
        log.info("model warmed up; ready")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """The app's lifespan: the batcher runs, the model warms up in the background (the
        server answers /healthz with 503 meanwhile); at shutdown every accepted image is
        answered."""
        self.batcher.start()
        warm = asyncio.get_running_loop().create_task(self._warm_up_in_worker())
        try:
            yield
        finally:
            self.metrics.ready.set(0)
            if not warm.done():
                warm.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await warm
            self.status = "stopping"
            await self.batcher.stop()  # finishes every image already accepted

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
                "max_file_bytes": self.max_file_bytes, "v2_model": self.model_name}
