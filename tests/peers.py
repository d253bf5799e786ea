"""Reference peers the tests drive the consumer with (libzmq through pyzmq)."""

from __future__ import annotations


def push_zmq(url: str, msgs: list[bytes]) -> None:
    """Connect a pyzmq PUSH socket to ``url``, send ``msgs`` and close once they are out
    (LINGER 5 s)."""
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 5000)
    s.connect(url)
    for m in msgs:
        s.send(m)
    s.close()
    ctx.term()
