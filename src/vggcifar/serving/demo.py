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
  any other path or URL a client names is refused with one message
  (:data:`.received.REFUSED`) that says nothing about the server's files, and before Gradio copies anything into its cache
  (:func:`upload_only_image`): one rule whether the page is launched or mounted in `vgg-serve`;
- the upload limit (``max_file_size``) holds for every way an image arrives: Gradio refuses
  larger uploads, we refuse larger files and decoded data URLs, and the whole request body is
  bounded (:class:`~vggcifar.serving.limits.BodyLimit`, 413), so a JSON body cannot smuggle a
  bigger image; files served back are attachments (:class:`~vggcifar.serving.limits.SafeHeaders`);
- the type is checked from the content (Pillow's identification, limited to
  :data:`vggcifar.images.ACCEPTED_FORMATS`) before decoding, which goes through
  :func:`vggcifar.images.decoding` (size checked from the header, first frame only, under the
  process-wide decode budget);
- uploads are deleted by Gradio a few minutes after they arrive (``delete_cache``);
- the queue bounds concurrent predictions; the only extra folder the server may serve is its
  own temporary folder (example pictures).

Gradio is imported inside functions so ``import vggcifar`` never pays for it.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..checks import is_finite_number
from ..cli_common import DEFAULT_TOP_K
from ..errors import VggCifarError
from ..io import read_plain_file
from .names import FITS, TTA_MODES, tta_label
from .received import received_image, upload_only_image

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_MB = 10
DEFAULT_CONCURRENCY = 2  # predictions run at once; more only adds contention on a CPU
DEFAULT_QUEUE_SIZE = 64  # waiting requests beyond this are refused ("queue full")
# Uploads are deleted this many seconds after they arrive (checked every DELETE_EVERY_S): long
# enough to predict and show them, short enough that the temp folder does not fill up.
UPLOAD_LIFETIME_S = 300
DELETE_EVERY_S = 60


PREVIEW_PX = 224  # the 32x32 model input is shown this large (nearest neighbour: true pixels)
FIT_CHOICES = [("squash the whole picture (as training)", "squash"),
               ("crop the centre square", "crop")]
# What the percentages are, said once on the page, with the shipped model's measured calibration
# (vgg-eval on the 10,000 test images; docs/recipe.md, "Calibration").
PROBABILITIES_NOTE = (
    "**What the percentages mean:** softmax(logits / T), with the model's temperature T fitted "
    "on held-out images (vgg-train fits it on its validation split). For the shipped model "
    "(T = 1.45), on the 10,000 CIFAR-10 test images its top percentage is "
    "91.9% on average while 91.0% of its answers are "
    "right, an expected calibration error of 0.010: a percentage shown is on average "
    "within 1.0 points of how often such answers are right. That holds for "
    "CIFAR-like photos of the ten classes, not for pictures of anything else.")


def preview_image(pixels):
    """``[3, S, S]`` uint8 model input -> ``[H, W, 3]`` uint8 enlarged by whole pixels (nearest
    neighbour, to about :data:`PREVIEW_PX`), so each of the model's pixels shows as a sharp
    square."""
    import numpy as np

    hwc = np.asarray(pixels).transpose(1, 2, 0)
    k = max(1, PREVIEW_PX // hwc.shape[0])
    return np.ascontiguousarray(hwc.repeat(k, axis=0).repeat(k, axis=1))


MAX_CARD_BYTES = 256 * 1024  # the shipped card is a few kB


def model_card(info) -> tuple[str | None, str | None]:
    """``(model name, card Markdown without its YAML front matter)`` for a model that has a card
    next to it (the shipped model's ``README.md``), else ``(None, None)``."""
    if info.format != "shipped":
        return None, None
    try:  # not a link (one to ~/.ssh/id_rsa would be published), a FIFO, or a huge file
        raw = read_plain_file(Path(info.path).parent / "README.md", MAX_CARD_BYTES)
        text = raw.decode("utf-8") if len(raw) <= MAX_CARD_BYTES else None
    except (OSError, UnicodeDecodeError):
        return None, None
    if text is None:
        return None, None
    name = None
    if text.startswith("---\n"):
        front, sep, body = text[4:].partition("\n---\n")
        if sep:
            text = body
            name = next((ln.split(":", 1)[1].strip() for ln in front.splitlines()
                         if ln.startswith("model_name:")), None)
    return name, text.strip()


def _accuracy(info, tta) -> str:
    acc = info.accuracy(tta)
    return f"{acc:.2%}" if acc is not None else "not recorded in the model file"


def md_text(s: str) -> str:
    """``s`` as literal text in Markdown: what a model file supplies (its file name, class
    names) must not become a link (``http://...`` autolinks and ``a@b`` mail links included), an
    image from elsewhere or markup on the page."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~:@])", r"\\\1", s)  # ':' and '@': autolinks


def _details(predictor, pred, mode: str, fit: str) -> str:
    """Markdown under the chart: the answer, the TTA mode and its test accuracy, latency,
    backend, any notes."""
    lines = [f"**{md_text(pred.label)}** ({pred.probability:.1%}) in **{pred.ms:.1f} ms** on "
             f"{predictor.backend_name}; {tta_label(mode)} (test accuracy "
             f"{_accuracy(predictor.info, mode)}), "
             f"{'centre crop' if fit == 'crop' else 'squashed'}"]
    lines += [f"- note: {n}" for n in pred.notes]
    return "\n".join(lines)


def mb_to_bytes(mb: float, name: str = "max_file_size_mb") -> int:
    """A size limit in MB as bytes; a limit that is not a positive finite number is refused
    (``int(inf)`` would raise OverflowError deep in the launch)."""
    if not (is_finite_number(mb) and mb > 0):
        raise VggCifarError(f"{name} must be a finite number of MB above 0, got {mb!r}")
    return int(mb * 2**20)


def make_predict_fn(predictor, top_k: int = DEFAULT_TOP_K, *, roots=(),
                    max_bytes: int = int(DEFAULT_MAX_FILE_MB * 2**20)):
    """The event handlers: ``predict(FileData payload, fit, tta)`` -> (``{label: probability}``,
    :meth:`Prediction.to_dict` JSON, details markdown), and ``model_input(payload, fit)`` -> the
    enlarged 32x32 model input.

    The picture of the model input is a second event, chained after the prediction in the page:
    an image output costs each API call about 70 ms (PNG encoding, a file, a download), which
    clients of ``/predict`` that want only the answer should not pay.

    ``roots`` and ``max_bytes``: see :func:`received_image`. ``fit`` is ``squash`` or ``crop``
    ``tta`` a TTA mode (``none``, ``flip``, ``flip-shift``) or a bool (``true``: ``flip``, as the
    API has always taken it); missing: the defaults. Bad images raise :class:`gradio.Error` with the
    one-line reason, shown in the page (and as ``AppError`` in ``gradio_client``); the server
    carries on.
    """
    import gradio as gr

    from .predictor import load_pixels

    roots = tuple(os.path.realpath(r) for r in roots)

    def guarded(fn, image, fit, tta):
        # preprocess=False: the raw values come straight from the client; check them here.
        if fit not in FITS or not (isinstance(tta, bool) or tta in TTA_MODES):
            raise gr.Error(f"fit must be one of {', '.join(FITS)}, and tta one of "
                           f"{', '.join(TTA_MODES)} (or true or false)", print_exception=False)
        try:
            data, name = received_image(image, roots, max_bytes)
            return fn(data, name)
        except VggCifarError as e:
            raise gr.Error(str(e), print_exception=False) from e
        except Exception as e:  # a bug, not the user's fault: keep the server alive, log it
            log.exception("prediction failed")
            raise gr.Error(f"could not classify this image ({type(e).__name__})") from e

    def predict(image, fit="squash", tta="none"):
        if image is None:  # the image was cleared
            return None, None, ""
        pred = guarded(lambda data, name: predictor.predict(data, top_k=top_k, name=name,
                                                            tta=tta, fit=fit), image, fit, tta)
        for note in pred.notes:
            gr.Warning(note)
        return ({lab: p for lab, p in pred.top_k}, pred.to_dict(),
                _details(predictor, pred, pred.tta, fit))

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
        f"Model **{md_text(name or info.name)}** ({md_text(info.arch or 'unknown architecture')}"
        f"{', ' + md_text(info.precision) if info.precision else ''}): test accuracy "
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
    roots: list[str] = []  # where Gradio puts what it receives, and the examples: set below
    with gr.Blocks(title="vggcifar demo", analytics_enabled=False,
                   delete_cache=(DELETE_EVERY_S, UPLOAD_LIFETIME_S)) as demo:
        gr.Markdown(_header(predictor, name, card is not None), elem_id="header")
        with gr.Row():
            with gr.Column():
                image = upload_only_image(roots, label="Image (upload, paste or drag)",
                                          type="filepath", image_mode=None,
                                          sources=["upload", "clipboard"], height=320)
                fit = gr.Radio(FIT_CHOICES, value="squash", label="Non-square pictures",
                               elem_id="fit")
                tta = gr.Radio(
                    [(f"one view ({_accuracy(info, 'none')})", "none"),
                     (f"flip: the image and its mirror image ({_accuracy(info, 'flip')}; twice "
                      "the compute)", "flip"),
                     ("flip + 1-pixel shifts: 6 views (6 times the compute)", "flip-shift")],
                    value="none", elem_id="tta",
                    label="Test-time augmentation: average the views' probabilities "
                          "(test accuracy of each mode in brackets)")
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
        found = {demo.GRADIO_CACHE, get_upload_folder()}
        found |= {str(Path(p).parent) for p in examples or []}
        roots[:] = sorted(os.path.realpath(r) for r in found)
        predict, model_input = make_predict_fn(predictor, top_k, roots=roots,
                                               max_bytes=mb_to_bytes(max_file_size_mb))
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
    from starlette.middleware import Middleware

    from .limits import BodyLimit, SafeHeaders

    max_bytes = mb_to_bytes(max_file_size_mb)
    body_bytes = max_bytes * 4 // 3 + 2**16
    # The same guards as vgg-serve puts around every route (served files as attachments too).
    guards = [Middleware(BodyLimit, max_bytes=body_bytes), Middleware(SafeHeaders)]
    return demo.launch(
        server_name=host, server_port=port, share=share, max_file_size=max_bytes,
        app_kwargs={"max_body_size": body_bytes, "middleware": guards},
        allowed_paths=list(allowed_paths or []), prevent_thread_lock=prevent_thread_lock,
        ssr_mode=False, quiet=quiet, show_error=False, inbrowser=False)


def make_workdir() -> Path:
    """A private temporary folder for this server (examples, uploads), removed at exit."""
    work = Path(tempfile.mkdtemp(prefix="vgg-demo-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work
