"""simstream.strategies: only valid objects, bounds kept, shrinking to the calm case."""

from __future__ import annotations

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from simstream import codec
from simstream.profile import NetworkConditions, Profile, Timeline, parse_profile
from simstream.schedule import iter_schedule
from simstream.strategies import (
    fault_schedules,
    faults,
    network_conditions,
    payloads,
    profiles,
    timelines,
)

FEW = settings(max_examples=15, deadline=None)


@FEW
@given(network_conditions(max_latency_ms=50, min_bandwidth_mbps=10))
def test_network_conditions_keep_their_bounds(net: NetworkConditions) -> None:
    assert 0 <= net.latency_ms <= 50
    assert net.bandwidth_mbps is None or net.bandwidth_mbps >= 10
    NetworkConditions.model_validate(net.model_dump())


@FEW
@given(network_conditions(max_bandwidth_mbps=100))
def test_a_maximum_bandwidth_means_always_capped(net: NetworkConditions) -> None:
    assert net.bandwidth_mbps is not None and 0 < net.bandwidth_mbps <= 100


@FEW
@given(profiles(max_messages=5, max_ranks=2))
def test_profiles_are_valid_and_stop_by_themselves(p: Profile) -> None:
    again = parse_profile(p.model_dump(mode="json"))
    assert again == p
    for rank in range(p.transport.ranks):
        planned = list(iter_schedule(p, rank, limit=50))
        assert len({x.seq for x in planned}) <= p.stop.messages  # type: ignore[operator]


@FEW
@given(timelines(max_phases=4), fault_schedules(max_faults=3, ranks=2))
def test_timelines_and_fault_schedules_validate_in_a_profile(tl: Timeline, fs: list) -> None:
    parse_profile({"name": "t", "timeline": tl.model_dump(), "transport": {"ranks": 2},
                   "faults": [f.model_dump(exclude_none=True) for f in fs]})
    assert any(ph.rate_hz != 0 for ph in tl.phases)


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_payloads_are_messages_the_consumer_can_decode(data: st.DataObject) -> None:
    buf = data.draw(payloads(max_rank=3, max_seq=20))
    arrays = codec.decode(buf)
    keys = {k.strip("/").replace("/", "_"): v for k, v in arrays.items()}
    assert 0 <= int(keys["simstream_rank"].reshape(-1)[0]) <= 3
    assert 0 <= int(keys["simstream_sequence"].reshape(-1)[0]) <= 20


def test_everything_shrinks_to_the_calm_case() -> None:
    assert find(network_conditions(), lambda n: True) == NetworkConditions()
    tl = find(timelines(), lambda t: True)
    assert len(tl.phases) == 1 and tl.phases[0].network is None
    assert find(fault_schedules(), lambda f: True) == []
    f = find(faults(), lambda f: True)
    assert (f.kind, f.at_message, f.rank) == ("reset", 0, None)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="kinds"):
        faults(kinds=["meltdown"]).example()
    with pytest.raises(ValueError, match="min_bandwidth_mbps"):
        network_conditions(min_bandwidth_mbps=0).example()
