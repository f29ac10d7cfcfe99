"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys

import click

from .errors import VggCifarError


def user_errors(fn):
    """Decorate a click command body: :class:`VggCifarError` -> ``error: ...`` and exit 2;
    Ctrl-C -> exit 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VggCifarError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
