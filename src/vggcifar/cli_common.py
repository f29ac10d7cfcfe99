"""Shared command-line plumbing: the exit codes, and user errors as one line on stderr.

Exit codes of every ``vgg-*`` command:

    0    success (for vgg-predict: every input was predicted)
    1    some inputs failed while others were processed (vgg-predict)
    2    usage or input error: bad option, missing or invalid file, nothing to do
    3    internal error: a bug in vggcifar (a traceback and a request to report it on stderr)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import functools
import sys
import traceback

import click

from .errors import VggCifarError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES_HELP = ("Exit codes: 0 all done; 1 some inputs failed; 2 usage or input error; "
                   "3 internal error (a bug: please report it); 130 interrupted.")


def user_errors(fn):
    """Decorate a click command body: :class:`VggCifarError` -> ``error: ...`` and exit 2;
    Ctrl-C -> exit 130 without a traceback; any other exception (a bug) -> its traceback, a
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
        except Exception as e:
            click.echo(traceback.format_exc().rstrip(), err=True)
            what = " ".join(str(e).split())[:200]  # one line, whatever the exception says
            click.echo(f"internal error: {type(e).__name__}: {what} -- this is a bug in "
                       "vggcifar; please report it with the traceback above", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper
