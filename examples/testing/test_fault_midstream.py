"""Example: change conditions in the middle of a stream, then account for every message.

The emitter runs in the background; once the consumer has seen traffic, the
test slows the link and injects a connection reset through the emitter's
control API. The measured consumer must still account for every message the
emitter delivered, and the reset message must show up as cut.
"""

import time

from simstream.testing import assert_accounted


def test_reset_injected_midstream(simstream_emitter, simstream_consumer):
    consumer = simstream_consumer(background=True, count=None, idle_timeout=1.5,
                                  profile={"name": "small", "source": {"shape": [1, 64, 64]}})
    emitter = simstream_emitter(
        "steady", url=consumer.url, count=20,
        source={"shape": [1, 64, 64], "pool": None, "total_events": None},
        # 100 ms apart: the message before the reset has left the kernel's send
        # buffer when the reset (RST, as a crash) throws away what is still there
        timeline={"phases": [{"name": "steady", "rate_hz": 10}]},
        stop={"duration_s": None},
    )
    deadline = time.monotonic() + 30
    while emitter.status()["counters"]["delivered"] < 5:  # traffic is flowing
        assert time.monotonic() < deadline, emitter.stderr
        time.sleep(0.05)
    emitter.set_network(latency_ms=10)
    emitter.inject({"kind": "reset"})
    assert emitter.wait(timeout=60) == 0
    run = consumer.result(timeout=60)

    cut = [r for r in emitter.records if r.outcome == "cut"]
    assert [r.faults for r in cut] == [("reset",)]
    assert cut[0].seq >= 5
    counts = assert_accounted(run, emitter)
    assert counts["delivered"] == 19
