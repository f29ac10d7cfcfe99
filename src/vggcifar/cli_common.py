"""Shared command-line plumbing of the seven ``vgg-*`` commands: one convention for their
options, the exit codes, and user errors as one line on stderr.

The convention (the README's table):

    --model PATH   the model file read (vgg-export, vgg-predict, vgg-eval, vgg-demo, vgg-serve);
                   default: the newest runs/*/best.pt, else the shipped model
    --out DIR      the folder written, itself (vgg-train: the run folder, vgg-study: the study
                   folder, vgg-export: the export folder)
    --quiet        no progress bars or log lines on stderr (results, warnings and errors still
                   appear; so does the note naming the default model when --model is omitted)
    --json         the result as JSON on stdout (vgg-train, vgg-study, vgg-export, vgg-predict,
                   vgg-eval)
    --top-k N      classes listed per image, default 3 (vgg-predict, vgg-demo, vgg-serve)
    --version      ``<command> (vggcifar <version>)``
    -h, --help     answers in well under a second: this module, and everything a command module
                   imports before its body runs, is free of torch (library modules are imported
                   inside the command functions)

Every log line, warning and progress bar goes to stderr; stdout carries only results.

Exit codes of every ``vgg-*`` command:

    0    success (for vgg-predict: every input was predicted)
    1    some inputs failed while others were processed (vgg-predict)
    2    usage or input error: bad option, missing or invalid file, nothing to do
    3    internal error: a bug in vggcifar (a traceback and a request to report it on stderr)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import functools
import math
import os
import sys
import traceback
from typing import Callable

import click

from . import __version__
from .errors import VggCifarError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# The convention's --top-k default: vgg-predict, the demo's chart and vgg-serve's ?top_k=.
DEFAULT_TOP_K = 3


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
MODEL_HELP = ("Model file: checkpoint (.pt), shipped manifest (.json), ONNX (.onnx) or TensorRT "
              "engine. Default: the newest runs/*/best.pt, else the shipped model.")
QUIET_HELP = "No progress bars or log lines on stderr (results and errors still appear)."
DEVICE_HELP = "auto, cpu or cuda[:N]."


class _UsageError(click.UsageError):
    """Click's usage errors (bad option value, unknown option, missing argument) as the one
    ``error: ...`` line on stderr that every other user error is, exit status 2."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message()}{hint}", file=file, err=file is None)


def _one_line(e: click.UsageError) -> click.UsageError:
    new = _UsageError(e.format_message(), e.ctx)
    new.exit_code = e.exit_code
    return new


class Command(click.Command):
    """The ``vgg-*`` command class: usage errors are one ``error:`` line naming the option."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _UsageError:
            raise
        except click.UsageError as e:
            raise _one_line(e) from e

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _UsageError:
            raise
        except click.UsageError as e:
            raise _one_line(e) from e


def command(name: str, **kwargs):
    """``@click.command`` with the shared settings, the :class:`Command` class and ``--version``
    (``vgg-predict (vggcifar 0.1.0)``)."""
    kwargs.setdefault("cls", Command)
    kwargs.setdefault("context_settings", CONTEXT_SETTINGS)

    def decorate(fn):
        fn = click.version_option(__version__, "--version", prog_name=name,
                                  message="%(prog)s (vggcifar %(version)s)",
                                  help="Show the vggcifar version and exit.")(fn)
        return click.command(name, **kwargs)(fn)

    return decorate


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which pass its bounds: nan
    compares false with everything, and ``inf`` has no upper bound to fail), so a limit given as
    ``inf`` is a usage error instead of an OverflowError deep inside the command."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


def model_option(help: str = MODEL_HELP):
    """``--model PATH`` (an existing file; default: see :func:`resolve_model`)."""
    return click.option("--model", "model_path", default=None, metavar="PATH", help=help,
                        type=click.Path(exists=True, dir_okay=False))


def quiet_option(help: str = QUIET_HELP):
    return click.option("--quiet", is_flag=True, help=help)


def json_option(help: str):
    return click.option("--json", "as_json", is_flag=True, help=help)


def top_k_option(help: str = "How many classes to list per image."):
    return click.option("--top-k", type=click.IntRange(min=1), default=DEFAULT_TOP_K,
                        show_default=True, help=help)


def stderr_logger(quiet: bool) -> Callable[[str], None]:
    """A ``log(msg)`` writing one line to stderr, silent with ``--quiet``."""
    def log(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)
    return log


def resolve_model(model_path) -> str:
    """``--model`` as given, else the default model (the newest ``runs/*/best.pt``, else the
    shipped model), announced on stderr as ``model: <which> (pass --model to choose)`` -- even
    with ``--quiet``: an implicit choice is a warning, not a log line."""
    if model_path is not None:
        return str(model_path)
    from .shipped import default_model

    try:
        path, reason = default_model()
    except VggCifarError as e:
        raise VggCifarError(f"--model: {e}") from e
    click.echo(f"model: {reason} (pass --model to choose)", err=True)
    return str(path)


def listen_socket(host: str, port: int):
    """A TCP socket bound to ``host:port`` (``port`` 0: any free port), inheritable, so a server
    can be handed it; a port that cannot be listened on is a one-line error naming ``--port``.

    TCP_NODELAY is set on it: accepted connections inherit it on Linux, and without it a response
    written in two parts waits for the client's delayed ACK (~40 ms)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise VggCifarError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass "
                            "another --port (or --host)") from e
    sock.set_inheritable(True)
    return sock


def check_port(host: str, port: int) -> None:
    """Fail early, naming ``--port``, when ``host:port`` cannot be listened on (vgg-demo, whose
    server binds its own socket later)."""
    listen_socket(host, port).close()


def user_errors(fn):
    """Decorate a click command body: :class:`VggCifarError` -> ``error: ...`` and exit 2;
    Ctrl-C -> exit 130 without a traceback; a closed stdout (``| head``) -> exit 1 quietly;
    any other exception (a bug) -> its traceback, a
    one-line ``internal error`` asking for a report, and exit 3, so scripts can tell a crash
    from failed inputs (1) and bad usage (2)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VggCifarError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own usage errors and exits keep their codes
        except BrokenPipeError:
            # The reader left (`vgg-predict DIR | head`): not a bug. Exit as click does (1),
            # with stdout pointed at /dev/null so the flush at exit cannot raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as e:
            click.echo(traceback.format_exc().rstrip(), err=True)
            what = " ".join(str(e).split())[:200]  # one line, whatever the exception says
            click.echo(f"internal error: {type(e).__name__}: {what} -- this is a bug in "
                       "vggcifar; please report it with the traceback above", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper
