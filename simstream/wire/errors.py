"""Protocol errors of the sans-IO wire layer.

One abstract base and two concrete kinds, as in h11:

- ``LocalProtocolError``: our own code misused a connection object (sent a message
  before the handshake, fed data after end of stream, asked a PULL socket to send).
  A bug on our side; never caused by what the peer sends.
- ``RemoteProtocolError``: the peer sent bytes that break the protocol (bad
  signature, unsupported mechanism, incompatible socket type, an oversize message,
  garbage). Raised only from ``next_event()``, the one place peer bytes are parsed.

After a ``RemoteProtocolError`` the connection object is dead: every later
``next_event()`` raises the same error again.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Abstract base: catch this to handle both kinds; never raised itself."""

    def __init__(self, msg: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError")
        super().__init__(msg)


class LocalProtocolError(ProtocolError):
    """The connection object was used in a way the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection must be closed."""
