"""Errors the command line turns into a one-line message and exit status 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (a flag, a file, an address); exit status 2."""

    exit_code = 2
