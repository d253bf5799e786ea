"""Example: a property of *your* consumer over generated network conditions.

`my_consumer` stands for the code under test: here a few lines of pyzmq that
count what arrives. Hypothesis draws the network conditions; simstream sends
through them; the property is that the consumer got every message the
emitter delivered.
"""

import zmq
from hypothesis import HealthCheck, given, settings

from simstream.strategies import network_conditions
from simstream.testing import free_url


def my_consumer(url: str, expected: int, timeout_s: float) -> int:
    """Bind a PULL socket and count messages until `expected` or a quiet `timeout_s`."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    got = 0
    try:
        while got < expected and sock.poll(int(timeout_s * 1000)):
            sock.recv(copy=False)
            got += 1
    finally:
        sock.close()
    return got


# a factory fixture hands out a new emitter per example; all stop at teardown
@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(net=network_conditions(max_latency_ms=20, max_jitter_ms=5, min_bandwidth_mbps=50))
def test_every_delivered_message_arrives(simstream_emitter, net):
    url = free_url()
    emitter = simstream_emitter(
        "steady", url=url, count=6,
        network=net,
        source={"shape": [1, 64, 64], "pool": None, "total_events": None},
        timeline={"phases": [{"name": "steady", "rate_hz": 50}]},
        stop={"duration_s": None},
    )
    got = my_consumer(url, expected=6, timeout_s=10)
    assert emitter.wait(timeout=30) == 0
    assert got == len(emitter.delivered) == 6
