"""`vgg-demo`: the command line of :mod:`.demo` (options, the Gradio server, Ctrl-C and SIGTERM).

Imports only torch-free modules before the command runs (``vgg-demo --help`` is fast).
"""

from __future__ import annotations

import os
import signal
import sys

import click

from ..cli_common import (DEVICE_HELP, FiniteFloatRange, command, model_option, quiet_option,
                          resolve_model, top_k_option, user_errors)
from ..errors import VggCifarError
from .demo import (DEFAULT_CONCURRENCY, DEFAULT_MAX_FILE_MB, build_demo, launch_demo,
                   make_workdir)
from .names import BACKENDS


@command("vgg-demo")
@model_option()
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
              show_default=True, help="Runtime; auto = the fastest that works for the model here.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 exposes the page to your whole network).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True,
              help="Port to listen on.")
@click.option("--share", is_flag=True, help="Also open a public gradio.live link (off by default).")
@top_k_option("Classes shown in the chart.")
@click.option("--max-file-size", "max_file_mb", type=FiniteFloatRange(min=0.001),
              default=DEFAULT_MAX_FILE_MB, show_default=True, help="Upload limit in MB.")
@click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY,
              show_default=True, help="Predictions running at once.")
@quiet_option("No model line on stderr (the address line, errors and, with --share, "
              "Gradio's messages about the public link still appear).")
@user_errors
def main(model_path, backend, device, host, port, share, top_k, max_file_mb, concurrency, quiet):
    """Serve a web page that classifies uploaded images. Ctrl-C or SIGTERM stops it."""
    import contextlib
    import time

    from ..cli_common import check_port
    from .examples import write_examples
    from .limits import return_freed_memory
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
    return_freed_memory()  # decoded images leave with their request (see limits.py)
    # Uploads land in our own folder too (Gradio reads GRADIO_TEMP_DIR when components are made).
    os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")  # never a shared one
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


if __name__ == "__main__":
    main()
