"""The one exception a receiver has to catch for a bad message."""

from __future__ import annotations


class CodecError(ValueError):
    """A message cannot be decoded: truncated, wrong magic, missing field, corrupt,
    inconsistent shapes, or a declared size beyond the guard. ``str()`` is the reason,
    one line, fit for a quarantine record."""
