"""Errors the command line turns into a one-line message and exit status 2, and
the one it lets pass quietly."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


class UsageError(Exception):
    """Bad input from the user (a flag, a file, an address); exit status 2."""

    exit_code = 2


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Output into a pipe whose reader has left (``simstream run ... | head -1``) is
    the reader's choice, not an error: the rest of the output goes to devnull and
    the command goes on to its own exit status (no traceback, no exit 1)."""
    try:
        yield
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def echo_to_pipe(line: str) -> None:
    """``click.echo`` of one line under ``reader_may_leave``."""
    import click

    with reader_may_leave():
        click.echo(line)
