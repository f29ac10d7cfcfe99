"""`vgg-demo`: a Gradio page around the :class:`~vggcifar.serving.Predictor`.

Upload, paste or drag an image, or click one of the ten shipped CIFAR-10 examples, and see the
top classes, the 32x32 input the model saw, the model, its test accuracy in the chosen mode (one
view or flip TTA), the backend and the prediction latency; non-square pictures are squashed or
centre-cropped, as chosen. The same prediction is a named API endpoint (``/predict``) for
``gradio_client``: inputs (image, fit, tta), outputs (label chart, model input, the
``vgg-predict --json`` fields as JSON, details).

Safety limits:

- the image is read only from a file Gradio received as an upload (its real path inside Gradio's
  upload folder, symlinks resolved) or one of the app's own examples, or from a ``data:`` URL;
  any other path or URL a client names is refused with one message (:data:`REFUSED`) that says
  nothing about the server's files;
- the upload limit (``max_file_size``) holds for every way an image arrives: Gradio refuses
  larger uploads, we refuse larger files and decoded data URLs, and the whole request body is
  bounded (FastAPI's ``max_body_size``), so a JSON body cannot smuggle a bigger image;
- the type is checked from the content (Pillow's identification, limited to the formats the
  page lists) before decoding, which goes through :func:`vggcifar.images.open_image` (size
  checked from the header, so decompression bombs are refused before decoding);
- uploads are deleted by Gradio a few minutes after they arrive (``delete_cache``);
- the queue bounds concurrent predictions; the only extra folder the server may serve is its
  own temporary folder (example pictures).

Gradio is imported inside functions so ``import vggcifar`` never pays for it.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import io
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import warnings
from pathlib import Path

import click

from ..cli_common import (command, model_option, quiet_option, resolve_model, top_k_option,
                          user_errors)
from ..errors import VggCifarError
from .names import BACKENDS, DEFAULT_TOP_K, FITS

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_MB = 10
DEFAULT_CONCURRENCY = 2  # predictions run at once; more only adds contention on a CPU
DEFAULT_QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full")
# Uploads are deleted this many seconds after they arrive (checked every DELETE_EVERY_S): long
# enough to predict and show them, short enough that the temp folder does not fill up.
UPLOAD_LIFETIME_S = 300
DELETE_EVERY_S = 60
# The one answer for anything that is not an upload or a data URL: the same text whether the
# path exists, is a folder, is empty or unreadable, so the server's files cannot be probed.
REFUSED = "no uploaded image received; upload the picture again"
# What Pillow may identify an upload as (its JPEG opener also covers phones' MPO files).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def _display_name(name) -> str:
    """A client-supplied file name made safe to show: its last part, printable, short."""
    name = Path(str(name)).name if name else ""
    name = "".join(c for c in name if c.isprintable())[:100]
    return name or "image"


def _decode_data_url(url: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URL, refused above ``max_bytes`` (the encoded length is
    checked first, so an oversized one is never decoded)."""
    head, sep, encoded = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise VggCifarError(REFUSED)
    if len(encoded) > 4 * (max_bytes // 3 + 1):
        raise VggCifarError(f"{name}: image is over the {max_bytes / 2**20:g} MB upload limit")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise VggCifarError(f"{name}: not a readable image (bad data URL)") from e
    if len(data) > max_bytes:
        raise VggCifarError(f"{name}: image is over the {max_bytes / 2**20:g} MB upload limit")
    return data


def _read_received(path: str, roots: tuple[str, ...], name: str, max_bytes: int) -> bytes:
    """The bytes of ``path`` if its real path (symlinks resolved) is a regular file inside one
    of ``roots``, at most ``max_bytes`` long. Anything else raises :data:`REFUSED`, the same
    whatever the reason."""
    try:
        real = os.path.realpath(path)
    except ValueError as e:  # an embedded NUL byte
        raise VggCifarError(REFUSED) from e
    if not any(real.startswith(root + os.sep) for root in roots):
        raise VggCifarError(REFUSED)
    try:
        # O_NOFOLLOW: the file opened is the one checked; O_NONBLOCK: never wait on a FIFO.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise VggCifarError(REFUSED)
            if st.st_size > max_bytes:
                raise VggCifarError(f"{name}: image is over the {max_bytes / 2**20:g} MB "
                                    "upload limit")
            return f.read(max_bytes + 1)[:max_bytes]
    except OSError as e:
        raise VggCifarError(REFUSED) from e


def check_image_type(data: bytes, name: str) -> None:
    """Refuse content that Pillow does not identify as one of :data:`ACCEPTED_FORMATS` (only
    the header is read), so no other image plugin ever parses what a client sent; damaged or
    oversized images of an accepted type are left to the decoder, which says what is wrong."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise VggCifarError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb warning: the decoder refuses it
            Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).close()
    except UnidentifiedImageError as e:
        raise VggCifarError(f"{name}: not a readable image (unknown or corrupt format)") from e
    except Exception:  # noqa: BLE001 - an accepted type, but damaged: open_image reports it
        pass


def received_image(payload, roots, max_bytes: int) -> tuple[bytes, str]:
    """The image a client sent, from the Image component's raw value (a FileData dict, or a
    plain path; ``preprocess=False`` so Pillow never sees it before we do).

    Args:
        payload: ``{"path", "url", "orig_name", ...}`` or a path string.
        roots: real paths of the folders holding what Gradio received (its upload folder) and
            the app's own examples; a path is read only if it lies inside one.
        max_bytes: the upload limit.
    Returns:
        ``(image bytes, display name)``: the bytes are at most ``max_bytes`` and of an
        accepted image type.
    Raises:
        VggCifarError: :data:`REFUSED` for any other path or URL; a one-line reason for an
            oversized, empty or non-image upload.
    """
    if isinstance(payload, str):
        payload = {"path": payload}
    if not isinstance(payload, dict):
        raise VggCifarError(REFUSED)
    path, url = payload.get("path"), payload.get("url")
    name = _display_name(payload.get("orig_name") or (path if isinstance(path, str) else None))
    if isinstance(path, str) and path:
        data = _read_received(path, tuple(roots), name, max_bytes)
    elif isinstance(url, str) and url.startswith("data:"):
        data = _decode_data_url(url, name, max_bytes)
    else:
        raise VggCifarError(REFUSED)
    check_image_type(data, name)
    return data, name


PREVIEW_PX = 224  # the 32x32 model input is shown this large (nearest neighbour: true pixels)
FIT_CHOICES = [("squash the whole picture (as training)", "squash"),
               ("crop the centre square", "crop")]
# What the percentages are, said once on the page: vggcifar trains with label smoothing, which
# caps a confident answer's probability well below 100%.
PROBABILITIES_NOTE = (
    "**What the percentages mean:** a ranking of the ten classes with a rough confidence, not "
    "calibrated odds: vggcifar models are trained with label smoothing (0.1 by default), so "
    "even a sure answer rarely shows more than about 90%.")


def preview_image(pixels):
    """``[3, S, S]`` uint8 model input -> ``[H, W, 3]`` uint8 enlarged by whole pixels (nearest
    neighbour, to about :data:`PREVIEW_PX`), so each of the model's pixels shows as a sharp
    square."""
    import numpy as np

    hwc = np.asarray(pixels).transpose(1, 2, 0)
    k = max(1, PREVIEW_PX // hwc.shape[0])
    return np.ascontiguousarray(hwc.repeat(k, axis=0).repeat(k, axis=1))


def model_card(info) -> tuple[str | None, str | None]:
    """``(model name, card Markdown without its YAML front matter)`` for a model that has a card
    next to it (the shipped model's ``README.md``), else ``(None, None)``."""
    if info.format != "shipped":
        return None, None
    try:
        text = (Path(info.path).parent / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None, None
    name = None
    if text.startswith("---\n"):
        front, sep, body = text[4:].partition("\n---\n")
        if sep:
            text = body
            name = next((ln.split(":", 1)[1].strip() for ln in front.splitlines()
                         if ln.startswith("model_name:")), None)
    return name, text.strip()


def _accuracy(info, tta: bool) -> str:
    acc = info.accuracy(tta)
    return f"{acc:.2%}" if acc is not None else "unknown"


def _details(predictor, pred, tta: bool, fit: str) -> str:
    """Markdown under the chart: the answer, the mode and its test accuracy, latency, backend,
    any notes."""
    mode = "flip TTA" if tta else "one view"
    lines = [f"**{pred.label}** ({pred.probability:.1%}) in **{pred.ms:.1f} ms** on "
             f"{predictor.backend_name}; {mode} (test accuracy {_accuracy(predictor.info, tta)}), "
             f"{'centre crop' if fit == 'crop' else 'squashed'}"]
    lines += [f"- note: {n}" for n in pred.notes]
    return "\n".join(lines)


def make_predict_fn(predictor, top_k: int = DEFAULT_TOP_K, *, roots=(),
                    max_bytes: int = int(DEFAULT_MAX_FILE_MB * 2**20)):
    """The event handlers: ``predict(FileData payload, fit, tta)`` -> (``{label: probability}``,
    :meth:`Prediction.to_dict` JSON, details markdown), and ``model_input(payload, fit)`` -> the
    enlarged 32x32 model input.

    The picture of the model input is a second event, chained after the prediction in the page:
    an image output costs each API call about 70 ms (PNG encoding, a file, a download), which
    clients of ``/predict`` that want only the answer should not pay.

    ``roots`` and ``max_bytes``: see :func:`received_image`. ``fit`` is ``squash`` or ``crop``
    and ``tta`` a bool (missing: the defaults). Bad images raise :class:`gradio.Error` with the
    one-line reason, shown in the page (and as ``AppError`` in ``gradio_client``); the server
    carries on.
    """
    import gradio as gr

    from .predictor import load_pixels

    roots = tuple(os.path.realpath(r) for r in roots)

    def guarded(fn, image, fit, tta):
        # preprocess=False: the raw values come straight from the client; check them here.
        if fit not in FITS or not isinstance(tta, bool):
            raise gr.Error(f"fit must be one of {', '.join(FITS)} and tta true or false",
                           print_exception=False)
        try:
            data, name = received_image(image, roots, max_bytes)
            return fn(data, name)
        except VggCifarError as e:
            raise gr.Error(str(e), print_exception=False) from e
        except Exception as e:  # a bug, not the user's fault: keep the server alive, log it
            log.exception("prediction failed")
            raise gr.Error(f"could not classify this image ({type(e).__name__})") from e

    def predict(image, fit="squash", tta=False):
        if image is None:  # the image was cleared
            return None, None, ""
        pred = guarded(lambda data, name: predictor.predict(data, top_k=top_k, name=name,
                                                            tta=tta, fit=fit), image, fit, tta)
        for note in pred.notes:
            gr.Warning(note)
        return ({lab: p for lab, p in pred.top_k}, pred.to_dict(),
                _details(predictor, pred, tta, fit))

    def model_input(image, fit="squash"):
        if image is None:
            return None
        return guarded(lambda data, name: preview_image(
            load_pixels(data, predictor.input_size, name=name, fit=fit)[0]), image, fit, False)

    return predict, model_input


def _header(predictor, name: str | None, has_card: bool) -> str:
    info = predictor.info
    size = predictor.input_size
    return (
        "# vggcifar: CIFAR-10 image classifier\n"
        f"Model **{name or info.name}** ({info.arch or 'unknown architecture'}"
        f"{', ' + info.precision if info.precision else ''}): test accuracy "
        f"**{_accuracy(info, False)}** one view, **{_accuracy(info, True)}** with flip TTA "
        f"(CIFAR-10 test set){'; see the model card below' if has_card else ''}. "
        f"Backend: {predictor.backend_name}.\n\n"
        f"{PROBABILITIES_NOTE}\n\n"
        "Upload, paste or drag a picture (PNG, JPEG, WebP, BMP, GIF: first frame, TIFF), or click "
        f"an example. It becomes {size}x{size} pixels, as in training, so small centred objects "
        "work best.")


def build_demo(predictor, *, top_k: int = DEFAULT_TOP_K, examples: list | None = None,
               concurrency_limit: int = DEFAULT_CONCURRENCY,
               queue_size: int = DEFAULT_QUEUE_SIZE,
               max_file_size_mb: float = DEFAULT_MAX_FILE_MB):
    """Build the page (not launched) around ``predictor``.

    Args:
        predictor: a :class:`~vggcifar.serving.Predictor`; its default ``fit`` and ``tta`` are
            ignored: the page chooses per request.
        top_k: classes shown in the chart.
        examples: image paths offered as clickable examples, each named ``<class>.<ext>`` (see
            :func:`vggcifar.serving.examples.write_examples`); keep them in the folder passed
            to :func:`launch_demo`'s ``allowed_paths``; their folders may be read.
        concurrency_limit: predictions running at once.
        queue_size: requests allowed to wait.
        max_file_size_mb: the largest image accepted, however it arrives (pass the same to
            :func:`launch_demo`).
    Returns:
        ``gradio.Blocks`` with the queue configured; API endpoints ``predict``: inputs (image,
        fit, tta), outputs (label chart, JSON, details); ``model_input``: inputs (image, fit),
        output the enlarged model input (the page calls it after each prediction).
    """
    import gradio as gr
    from gradio.utils import get_upload_folder

    from .examples import example_class

    info = predictor.info
    name, card = model_card(info)
    with gr.Blocks(title="vggcifar demo", analytics_enabled=False,
                   delete_cache=(DELETE_EVERY_S, UPLOAD_LIFETIME_S)) as demo:
        gr.Markdown(_header(predictor, name, card is not None), elem_id="header")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image (upload, paste or drag)", type="filepath",
                                 image_mode=None, sources=["upload", "clipboard"], height=320)
                fit = gr.Radio(FIT_CHOICES, value="squash", label="Non-square pictures",
                               elem_id="fit")
                tta = gr.Checkbox(
                    value=False, elem_id="tta",
                    label=f"Flip TTA: also classify the mirror image and average (test accuracy "
                          f"{_accuracy(info, True)}, vs {_accuracy(info, False)} one view; "
                          "twice the compute)")
                if examples:
                    # The true class beside each thumbnail; the hidden box only carries it.
                    truth = gr.Textbox(visible=False, label="Class")
                    gr.Examples(examples=[[str(p), example_class(p)] for p in examples],
                                inputs=[image, truth], examples_per_page=len(examples),
                                label="Examples: real CIFAR-10 test images, one per class "
                                      "(click one)", cache_examples=False, elem_id="examples")
            with gr.Column():
                label = gr.Label(label="Top classes", num_top_classes=top_k)
                details = gr.Markdown(elem_id="prediction-details")
                seen = gr.Image(label=f"What the model sees ({predictor.input_size}x"
                                      f"{predictor.input_size}, enlarged)", format="png",
                                interactive=False, height=PREVIEW_PX + 40, elem_id="model-input")
                with gr.Accordion("API output (JSON, as vgg-predict --json)", open=False):
                    as_json = gr.JSON(label="Prediction", elem_id="prediction-json")
        if card:
            with gr.Accordion("Model card", open=False, elem_id="model-card"):
                gr.Markdown(card)
        # Where Gradio puts what it receives (GRADIO_TEMP_DIR, else <tmp>/gradio), and examples.
        roots = {demo.GRADIO_CACHE, get_upload_folder()}
        roots |= {str(Path(p).parent) for p in examples or []}
        predict, model_input = make_predict_fn(predictor, top_k, roots=sorted(roots),
                                               max_bytes=int(max_file_size_mb * 2**20))
        gr.on([image.change, fit.change, tta.change], predict, inputs=[image, fit, tta],
              outputs=[label, as_json, details], api_name="predict", preprocess=False,
              concurrency_limit=concurrency_limit, show_progress="minimal").then(
            model_input, inputs=[image, fit], outputs=[seen], api_name="model_input",
            preprocess=False, concurrency_limit=concurrency_limit, show_progress="hidden")
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency_limit)
    return demo


def launch_demo(demo, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
                max_file_size_mb: float = DEFAULT_MAX_FILE_MB,
                allowed_paths: list[str] | None = None, prevent_thread_lock: bool = False,
                quiet: bool = False):
    """Launch with the safety limits. Returns Gradio's ``(app, local_url, share_url)``.

    Uploads above ``max_file_size_mb`` are refused by Gradio; every request body is bounded by
    FastAPI (``max_body_size``: the limit as base64, which a ``data:`` URL in a JSON body takes,
    plus room for the rest of the request), answering 413 beyond it.
    """
    max_bytes = int(max_file_size_mb * 1024 * 1024)
    return demo.launch(
        server_name=host, server_port=port, share=share, max_file_size=max_bytes,
        app_kwargs={"max_body_size": max_bytes * 4 // 3 + 2**16},
        allowed_paths=list(allowed_paths or []), prevent_thread_lock=prevent_thread_lock,
        ssr_mode=False, quiet=quiet, show_error=False, inbrowser=False)


def make_workdir() -> Path:
    """A private temporary folder for this server (examples, uploads), removed at exit."""
    work = Path(tempfile.mkdtemp(prefix="vgg-demo-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


@command("vgg-demo")
@model_option()
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
              show_default=True, help="Runtime; auto = the fastest that works for the model here.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 exposes the page to your whole network).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True,
              help="Port to listen on.")
@click.option("--share", is_flag=True, help="Also open a public gradio.live link (off by default).")
@top_k_option("Classes shown in the chart.")
@click.option("--max-file-size", "max_file_mb", type=click.FloatRange(min=0.001),
              default=DEFAULT_MAX_FILE_MB, show_default=True, help="Upload limit in MB.")
@click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY,
              show_default=True, help="Predictions running at once.")
@quiet_option("No model lines and no Gradio messages on stderr (the address line and errors "
              "still appear).")
@user_errors
def main(model_path, backend, device, host, port, share, top_k, max_file_mb, concurrency, quiet):
    """Serve a web page that classifies uploaded images. Ctrl-C or SIGTERM stops it."""
    import contextlib
    import time

    from ..cli_common import check_port
    from .examples import write_examples
    from .predictor import Predictor

    check_port(host, port)  # first: a port in use fails before the model is loaded
    model_path = resolve_model(model_path)
    predictor = Predictor(model_path, backend=backend, device=device)
    if not quiet:
        click.echo(f"model: {predictor.info.describe()}; backend: {predictor.backend_name}",
                   err=True)
    work = make_workdir()
    # `kill` (SIGTERM) should clean up like Ctrl-C: exit normally so atexit removes `work`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Uploads land in our own folder too (Gradio reads GRADIO_TEMP_DIR when components are made).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "uploads"))
    examples = write_examples(work / "examples")
    demo = build_demo(predictor, top_k=top_k, examples=examples, concurrency_limit=concurrency,
                      max_file_size_mb=max_file_mb)
    try:
        # Gradio prints its banner (which names launch()'s parameters, not our options) and
        # messages on stdout: keep stdout for results, and print our own address line.
        with contextlib.redirect_stdout(sys.stderr):
            _, local_url, share_url = launch_demo(
                demo, host=host, port=port, share=share, max_file_size_mb=max_file_mb,
                allowed_paths=[str(work)], prevent_thread_lock=True, quiet=True)
    except OSError as e:  # port taken since the check, or a host that is not ours
        raise VggCifarError(f"--port/--host: cannot start the server on {host}:{port} (port in "
                            f"use or host not available here); pass another --port or "
                            f"--host") from e
    public = (f" and {share_url}" if share_url else
              " (no public link: see the message above)" if share else
              " (--share adds a public link)")
    click.echo(f"vgg-demo: running on {local_url}{public}; Ctrl-C stops it", err=True)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        click.echo("vgg-demo: stopped", err=True)
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # Gradio's "Closing server ..."
            demo.close()
