"""Example: assert the diagnosis of a whole run.

A producer that sends 20 small batches per second cannot keep a fast consumer
busy: the consumer starves and the diagnosis must say the data did not
arrive fast enough (`network`: the producer or the link).
"""

from simstream.testing import assert_accounted, assert_verdict


def test_slow_producer_starves_the_consumer(simstream_run):
    run = simstream_run(
        "steady", count=30,
        source={"shape": [1, 64, 64], "pool": None, "total_events": None},
        timeline={"phases": [{"name": "slow", "rate_hz": 20}]},
        stop={"duration_s": None},
    )
    assert_accounted(run)
    assert_verdict(run, "network", min_confidence=0.5)
