"""`vgg-demo`: a Gradio page around the :class:`~vggcifar.serving.Predictor`.

Upload, paste or drag an image and see the top classes, the model, its test accuracy, the
backend and the prediction latency. The same prediction is a named API endpoint (``/predict``)
for ``gradio_client``.

Safety limits: uploads larger than ``max_file_size`` are refused by Gradio before they reach the
model; decoding goes through :func:`vggcifar.images.open_image` (size checked from the header,
so decompression bombs are refused before decoding); the queue bounds concurrent predictions;
the only extra folder the server may serve is its own temporary folder (example pictures).

Gradio is imported inside functions so ``import vggcifar`` never pays for it.
"""

from __future__ import annotations

import atexit
import base64
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import click

from ..cli_common import user_errors
from ..errors import VggCifarError
from .backends import BACKENDS

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_MB = 10
DEFAULT_CONCURRENCY = 2  # predictions run at once; more only adds contention on a CPU
DEFAULT_QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full")


def _payload_source(payload) -> tuple[object, str]:
    """The uploaded file's ``(path or bytes, display name)`` from the Image component's raw
    value (a FileData dict; ``preprocess=False`` so Pillow never sees it before we do).

    Gradio has already checked that ``path`` lies in its upload cache."""
    if isinstance(payload, str):  # a plain path (e.g. when called from Python directly)
        return payload, Path(payload).name
    name = payload.get("orig_name") or Path(payload.get("path") or "image").name
    url = payload.get("url") or ""
    if not payload.get("path") and url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[1]), name
        except (IndexError, ValueError) as e:
            raise VggCifarError(f"{name}: not a readable image (bad data URL)") from e
    if not payload.get("path"):
        raise VggCifarError("no image received")
    return payload["path"], name


def _details(predictor, pred) -> str:
    """Markdown under the chart: the answer, latency, backend and any notes."""
    lines = [f"**{pred.label}** ({pred.probability:.1%}) in **{pred.ms:.1f} ms** "
             f"on {predictor.backend_name}"]
    lines += [f"- note: {n}" for n in pred.notes]
    return "\n".join(lines)


def make_predict_fn(predictor, top_k: int = 5):
    """The event handler: FileData payload -> (``{label: probability}``, details markdown).

    Bad images raise :class:`gradio.Error` with the one-line reason, shown in the page (and as
    ``AppError`` in ``gradio_client``); the server carries on.
    """
    import gradio as gr

    def predict(image):
        if image is None:  # the image was cleared
            return None, ""
        try:
            source, name = _payload_source(image)
            pred = predictor.predict(source, top_k=top_k, name=name)
        except VggCifarError as e:
            raise gr.Error(str(e), print_exception=False) from e
        except Exception as e:  # a bug, not the user's fault: keep the server alive, log it
            log.exception("prediction failed")
            raise gr.Error(f"could not classify this image ({type(e).__name__})") from e
        for note in pred.notes:
            gr.Warning(note)
        return {lab: p for lab, p in pred.top_k}, _details(predictor, pred)

    return predict


def build_demo(predictor, *, top_k: int = 5, examples: list | None = None,
               concurrency_limit: int = DEFAULT_CONCURRENCY,
               queue_size: int = DEFAULT_QUEUE_SIZE):
    """Build the page (not launched) around ``predictor``.

    Args:
        predictor: a :class:`~vggcifar.serving.Predictor`.
        top_k: classes shown in the chart.
        examples: image paths to offer as clickable examples (keep them in the folder passed
            to :func:`launch_demo`'s ``allowed_paths``).
        concurrency_limit: predictions running at once.
        queue_size: requests allowed to wait.
    Returns:
        ``gradio.Blocks`` with the queue configured; ``predict`` is the API endpoint.
    """
    import gradio as gr

    info = predictor.info
    acc = (f"{info.test_accuracy:.2%}" if info.test_accuracy is not None else "unknown")
    if info.accuracy_with_tta:
        acc += " with flip TTA"
    with gr.Blocks(title="vggcifar demo", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:  # uploads are deleted after an hour
        gr.Markdown(
            "# vggcifar: CIFAR-10 image classifier\n"
            f"Model **{info.name}** ({info.arch or 'unknown arch'}), test accuracy **{acc}**, "
            f"backend **{predictor.backend_name}**. Classes: {', '.join(info.class_names)}.\n\n"
            "Upload, paste or drag a picture: PNG, JPEG, WebP, BMP, GIF (first frame) or TIFF. "
            f"It is shrunk to {predictor.input_size}x{predictor.input_size} pixels, as in "
            "training, so small centred objects work best.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image (upload, paste or drag)", type="filepath",
                                 image_mode=None, sources=["upload", "clipboard"], height=320)
            with gr.Column():
                label = gr.Label(label="Top classes", num_top_classes=top_k)
                details = gr.Markdown(elem_id="prediction-details")
        if examples:
            gr.Examples(examples=[[str(p)] for p in examples], inputs=image,
                        label="Examples (drawn at start-up; click one)", cache_examples=False)
        image.change(make_predict_fn(predictor, top_k), inputs=image, outputs=[label, details],
                     api_name="predict", preprocess=False, concurrency_limit=concurrency_limit,
                     show_progress="minimal")
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency_limit)
    return demo


def launch_demo(demo, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
                max_file_size_mb: float = DEFAULT_MAX_FILE_MB,
                allowed_paths: list[str] | None = None, prevent_thread_lock: bool = False,
                quiet: bool = False):
    """Launch with the safety limits. Returns Gradio's ``(app, local_url, share_url)``."""
    return demo.launch(
        server_name=host, server_port=port, share=share,
        max_file_size=int(max_file_size_mb * 1024 * 1024),
        allowed_paths=list(allowed_paths or []), prevent_thread_lock=prevent_thread_lock,
        ssr_mode=False, quiet=quiet, show_error=False, inbrowser=False)


def make_workdir() -> Path:
    """A private temporary folder for this server (examples, uploads), removed at exit."""
    work = Path(tempfile.mkdtemp(prefix="vgg-demo-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", default=None,
              help="Checkpoint (.pt), shipped manifest (.json), ONNX or TensorRT engine. "
                   "Default: the newest runs/*/best.pt, else the shipped model.")
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
              show_default=True, help="Runtime; auto = the fastest that works for the model here.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 exposes the page to your whole network).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Also open a public gradio.live link (off by default).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes shown in the chart.")
@click.option("--max-file-size", "max_file_mb", type=click.FloatRange(min=0.001),
              default=DEFAULT_MAX_FILE_MB, show_default=True, help="Upload limit in MB.")
@click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY,
              show_default=True, help="Predictions running at once.")
@user_errors
def main(model_path, backend, device, host, port, share, top_k, max_file_mb, concurrency):
    """Serve a web page that classifies uploaded images."""
    from ..shipped import default_model
    from .examples import write_examples
    from .predictor import Predictor

    if model_path is None:
        model_path, reason = default_model()
        click.echo(f"model: {reason} (pass --model to choose)", err=True)
    predictor = Predictor(model_path, backend=backend, device=device)
    click.echo(f"model: {predictor.info.describe()}; backend: {predictor.backend_name}", err=True)
    work = make_workdir()
    # `kill` (SIGTERM) should clean up like Ctrl-C: exit normally so atexit removes `work`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Uploads land in our own folder too (Gradio reads GRADIO_TEMP_DIR when components are made).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "uploads"))
    examples = write_examples(work / "examples")
    demo = build_demo(predictor, top_k=top_k, examples=examples, concurrency_limit=concurrency)
    try:
        launch_demo(demo, host=host, port=port, share=share, max_file_size_mb=max_file_mb,
                    allowed_paths=[str(work)])
    except OSError as e:  # port in use, bad host
        raise VggCifarError(f"cannot start the server on {host}:{port} ({e})") from e
