"""`vgg-serve`: the command line of :mod:`.http_api` (options, the listening socket, uvicorn).

Imports only torch-free modules before the command runs (``vgg-serve --help`` is fast).
"""

import logging
import os
import signal
import sys

import click
from click.core import ParameterSource

from ..cli_common import (DEVICE_HELP, FiniteFloatRange, command, listen_socket, model_option,
                          quiet_option, resolve_model, top_k_option, user_errors)
from ..errors import VggCifarError
from .demo import DEFAULT_MAX_FILE_MB
from .http_api import (DEFAULT_MAX_BATCH, DEFAULT_MAX_FILES, DEFAULT_MAX_WAIT_MS,
                       DEFAULT_QUEUE_SIZE)
from .names import BACKENDS


def _refuse_contradictions(max_file_mb, max_request_mb, max_files, queue_size, demo_concurrency,
                           no_demo) -> float:
    """Explicit limits that could not all hold, and an option for the page that is not there:
    refused, so the limits in force are the ones asked for (defaults still adapt quietly: a
    ``--max-request-size`` below the default file limit lowers it). Returns the file limit."""
    ctx = click.get_current_context()

    def given(name):
        return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                                  ParameterSource.ENVIRONMENT)

    if max_request_mb is not None and max_request_mb < max_file_mb and not given("max_file_mb"):
        max_file_mb = max_request_mb  # the default file limit gives way to the explicit one
    if max_request_mb is not None and max_request_mb < max_file_mb:
        raise click.UsageError(f"--max-request-size {max_request_mb:g} is below --max-file-size "
                               f"{max_file_mb:g}: a request must be able to carry one image at "
                               "the limit")
    if given("max_files") and max_files > queue_size:
        raise click.UsageError(f"--max-files {max_files} is above --queue-size {queue_size}: a "
                               "request must fit in an empty queue; raise --queue-size or lower "
                               "--max-files")
    if no_demo and demo_concurrency is not None:
        raise click.UsageError("--demo-concurrency sets the demo page, which --no-demo leaves "
                               "out; drop one of them")
    return max_file_mb


@command("vgg-serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 exposes the server to your whole network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: any free port, printed at start-up).")
@model_option()
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
              show_default=True, help="Runtime; auto = the fastest that works for the model here.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@top_k_option("Classes listed per image when a request has no ?top_k= (and in the demo page's "
              "chart).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=DEFAULT_MAX_BATCH,
              show_default=True, help="Most images per model call.")
@click.option("--max-wait-ms", type=FiniteFloatRange(0, 10000), default=DEFAULT_MAX_WAIT_MS,
              show_default=True, help="How long a batch waits for more images after its first, "
              "while other requests are on their way (a lone request never waits).")
@click.option("--queue-size", type=click.IntRange(1), default=DEFAULT_QUEUE_SIZE,
              show_default=True, help="Images allowed to wait; beyond that requests get 503.")
@click.option("--max-file-size", "max_file_mb", type=FiniteFloatRange(min=0.001),
              default=DEFAULT_MAX_FILE_MB, show_default=True, help="Limit per image in MB "
              "(as vgg-demo's upload limit).")
@click.option("--max-request-size", "max_request_mb", type=FiniteFloatRange(min=0.001),
              default=None, help="Limit of any request body in MB, on every route (the demo "
              "and /v2 too) [default: 4x --max-file-size].")
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
    GET /metrics (Prometheus), the Open Inference Protocol under /v2 (tritonclient), and the
    demo page at /.

    Limits (README, "Security"): at most 256 connections (then 503), idle keep-alive 5 s, a
    body that stalls 30 s gets 408; decoding holds a process-wide budget of 512 MB.

    SIGTERM or Ctrl-C: the requests in flight are answered, then the server exits.
    """
    max_file_mb = _refuse_contradictions(max_file_mb, max_request_mb, max_files, queue_size,
                                         demo_concurrency, no_demo)
    import uvicorn

    from .http_api import create_app
    from .predictor import Predictor

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s: %(name)s: %(message)s")
    sock = listen_socket(host, port)  # first: a port in use fails before the model is loaded
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
        os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")  # never a shared one
        examples = write_examples(work / "examples")
        allowed = [str(work)]
    app = create_app(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     queue_size=queue_size, max_file_mb=max_file_mb,
                     max_request_mb=max_request_mb, max_files=max_files, demo=not no_demo,
                     demo_examples=examples, allowed_paths=allowed,
                     demo_concurrency=demo_concurrency, host=host, port=port, top_k=top_k)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving on http://{shown}:{port}: POST /v1/predict, GET /healthz, GET /metrics, "
               f"/v2 (model {app.state.vgg.model_name})"
               + ("" if no_demo else ", demo page at /"), err=True)
    from .limits import (KEEP_ALIVE_S, MAX_CONNECTIONS, MAX_HEADER_BYTES, answer_overload_in_json,
                         return_freed_memory)

    return_freed_memory()  # decoded images leave with their request (see limits.py)
    answer_overload_in_json()  # beyond the limit below: {"error": ...}, not text/plain
    config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet,
                            lifespan="on", timeout_graceful_shutdown=30, log_config=None,
                            # connections and tasks at once (beyond: 503), idle keep-alive
                            # seconds, and the largest request head buffered (see README)
                            limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=KEEP_ALIVE_S,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                            # httptools and uvloop (uvicorn[standard]) where installed: a quarter
                            # less event-loop CPU per request than h11 and asyncio (measured,
                            # docs/benchmarks.md)
                            http="auto", loop="auto")
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM gracefully (in-flight requests finish, then the lifespan shutdown
    # drains the batcher) and re-raises it afterwards: exit 0 then, so atexit cleanup runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run(sockets=[sock])
    if not server.started:
        raise VggCifarError(f"the server on {host}:{port} did not start (see the log above)")


if __name__ == "__main__":
    main()
