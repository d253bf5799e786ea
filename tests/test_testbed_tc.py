"""tc command lines from profiles: pure functions, every option, both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.profile import NetworkConditions, NetworkOverride, parse_profile
from simstream.testbed import tc
from simstream.testbed.cli import phase_boundaries
from simstream.testbed.netns import PhaseShaping, timeline_shapings

ALL = {"netem", "tbf", "htb", "pfifo"}
NO_NETEM = {"tbf", "htb", "pfifo"}


def test_fmt_time_and_rate() -> None:
    assert tc.fmt_time(20) == "20ms"
    assert tc.fmt_time(0) == "0ms"
    assert tc.fmt_time(1.5) == "1500us"
    assert tc.fmt_rate(400) == "400mbit"
    assert tc.fmt_rate(0.5) == "500kbit"
    with pytest.raises(ValueError, match="not > 0"):
        tc.fmt_rate(0)
    with pytest.raises(ValueError, match="not >= 0"):
        tc.fmt_time(-1)


@pytest.mark.parametrize(
    ("netem", "args"),
    [
        (tc.Netem(), ["netem"]),
        (tc.Netem(delay_ms=20), ["netem", "delay", "20ms"]),
        (tc.Netem(delay_ms=20, jitter_ms=10), ["netem", "delay", "20ms", "10ms"]),
        (tc.Netem(delay_ms=20, jitter_ms=10, distribution="paretonormal"),
         ["netem", "delay", "20ms", "10ms", "distribution", "paretonormal"]),
        (tc.Netem(delay_ms=20, jitter_ms=10, delay_correlation_pct=25, distribution="normal"),
         ["netem", "delay", "20ms", "10ms", "25%", "distribution", "normal"]),
        # a distribution without jitter means nothing: netem would reject it
        (tc.Netem(delay_ms=5, distribution="pareto"), ["netem", "delay", "5ms"]),
        (tc.Netem(loss_pct=1.5), ["netem", "loss", "random", "1.5%"]),
        (tc.Netem(loss_pct=1, loss_correlation_pct=30), ["netem", "loss", "random", "1%", "30%"]),
        (tc.Netem(duplicate_pct=2), ["netem", "duplicate", "2%"]),
        (tc.Netem(duplicate_pct=2, duplicate_correlation_pct=5),
         ["netem", "duplicate", "2%", "5%"]),
        (tc.Netem(delay_ms=10, reorder_pct=25, reorder_correlation_pct=50, reorder_gap=5),
         ["netem", "delay", "10ms", "reorder", "25%", "50%", "gap", "5"]),
        (tc.Netem(corrupt_pct=0.1), ["netem", "corrupt", "0.1%"]),
        (tc.Netem(corrupt_pct=0.1, corrupt_correlation_pct=10),
         ["netem", "corrupt", "0.1%", "10%"]),
        (tc.Netem(rate_mbps=100), ["netem", "rate", "100mbit"]),
        (tc.Netem(limit_packets=5000, delay_ms=1), ["netem", "limit", "5000", "delay", "1ms"]),
    ],
)
def test_netem_args(netem: tc.Netem, args: list[str]) -> None:
    assert tc.netem_args(netem) == args


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "cauchy"}, "distribution 'cauchy' is not one of"),
        ({"loss_pct": 101}, "loss_pct 101 is not in 0..100"),
        ({"delay_ms": -1}, "delay_ms -1 is not >= 0"),
        ({"reorder_pct": 5}, "reorder_pct needs delay_ms > 0"),
        ({"rate_mbps": 0}, "rate_mbps 0 is not > 0"),
        ({"delay_ms": 1, "reorder_pct": 5, "reorder_gap": 0}, "reorder_gap 0 is not >= 1"),
    ],
)
def test_netem_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tc.Netem(**kwargs)  # type: ignore[arg-type]


def test_tbf_args() -> None:
    assert tc.tbf_args(8) == ["tbf", "rate", "8mbit", "burst", "73728", "latency", "50ms"]
    # 4 ms of traffic at 1 Gbit/s = 500 kB
    assert tc.tbf_args(1000)[4] == "500000"
    assert tc.tbf_args(50, burst_bytes=1600, latency_ms=10) == [
        "tbf", "rate", "50mbit", "burst", "1600", "latency", "10ms"]
    with pytest.raises(ValueError, match="burst_bytes 0"):
        tc.tbf_args(50, burst_bytes=0)


def test_htb_commands_add_and_change() -> None:
    add = tc.htb_commands("eth9", 400)
    assert add[0] == ["tc", "qdisc", "add", "dev", "eth9", "root", "handle", "1:", "htb",
                      "default", "1"]
    assert add[1][:9] == ["tc", "class", "add", "dev", "eth9", "parent", "1:", "classid", "1:1"]
    assert add[1][9:13] == ["htb", "rate", "400mbit", "ceil"]
    change = tc.htb_commands("eth9", 10, verb="change")
    assert len(change) == 1 and change[0][2] == "change" and "10mbit" in change[0]


def test_shaping_from_network_merges_overrides_and_scales_per_rank() -> None:
    net = NetworkConditions(latency_ms=20, jitter_ms=5, jitter_distribution="pareto",
                            bandwidth_mbps=100)
    s = tc.shaping_from_network(net)
    assert s.rate_mbps == 100
    assert s.netem == tc.Netem(delay_ms=20, jitter_ms=5, distribution="pareto")
    o = tc.shaping_from_network(net, NetworkOverride(bandwidth_mbps=10, latency_ms=0))
    assert o.rate_mbps == 10 and o.netem.delay_ms == 0 and o.netem.jitter_ms == 5
    assert tc.shaping_from_network(net, ranks=4).rate_mbps == 400
    agg = NetworkConditions(bandwidth_mbps=100, bandwidth_scope="aggregate")
    assert tc.shaping_from_network(agg, ranks=4).rate_mbps == 100


@pytest.mark.parametrize(
    ("shapings", "kinds", "layout", "missing"),
    [
        ([tc.Shaping()], ALL, "none", []),
        ([tc.Shaping(rate_mbps=8)], ALL, "tbf", []),
        ([tc.Shaping(rate_mbps=8)], {"htb"}, "htb", []),
        ([tc.Shaping(rate_mbps=8)], {"netem"}, "netem-rate", []),
        ([tc.Shaping(netem=tc.Netem(delay_ms=5))], ALL, "netem", []),
        ([tc.Shaping(rate_mbps=8, netem=tc.Netem(delay_ms=5))], ALL, "htb+netem", []),
        ([tc.Shaping(rate_mbps=8, netem=tc.Netem(delay_ms=5))], {"tbf", "netem"}, "tbf+netem",
         []),
        # one phase needs the cap, another the delay: one layout covers both
        ([tc.Shaping(rate_mbps=8), tc.Shaping(netem=tc.Netem(jitter_ms=3))], ALL, "htb+netem",
         []),
    ],
)
def test_choose_layout(shapings: list[tc.Shaping], kinds: set[str], layout: str,
                       missing: list[str]) -> None:
    assert tc.choose_layout(shapings, kinds) == (layout, missing)


def test_without_netem_rate_still_applies_and_the_rest_is_named() -> None:
    s = tc.Shaping(rate_mbps=50, netem=tc.Netem(delay_ms=20, jitter_ms=10, loss_pct=1))
    p = tc.plan("ssb-prod", [s], NO_NETEM)
    assert p.layout == "tbf"
    assert p.commands == [["tc", "qdisc", "replace", "dev", "ssb-prod", "root", "handle", "1:",
                           "tbf", "rate", "50mbit", "burst", "73728", "latency", "50ms"]]
    assert p.applied == ["rate cap 50 Mbit/s (tbf)"]
    assert p.not_applied == ["netem qdisc not available in this kernel: load sch_netem; "
                             "jitter and latency and loss not applied"]


def test_no_shaper_at_all_is_said_plainly() -> None:
    p = tc.plan("x", [tc.Shaping(rate_mbps=5)], {"pfifo"})
    assert p.layout == "none" and p.commands == []
    assert "rate cap not applied" in p.not_applied[0]


def test_plan_htb_netem_commands_and_changes() -> None:
    first = tc.Shaping(rate_mbps=100, netem=tc.Netem(delay_ms=20))
    second = tc.Shaping(rate_mbps=None, netem=tc.Netem(delay_ms=5, loss_pct=2))
    p = tc.plan("d", [first, second], ALL)
    assert p.layout == "htb+netem"
    assert [c[:3] for c in p.commands] == [["tc", "qdisc", "add"], ["tc", "class", "add"],
                                           ["tc", "qdisc", "add"]]
    assert p.commands[2][5:] == ["parent", "1:1", "handle", "10:", "netem", "delay", "20ms"]
    assert p.applied == ["rate cap 100 Mbit/s (htb)", "latency 20 ms (netem)"]
    ch = tc.change_commands("d", second, p.layout)
    assert ch[0][:3] == ["tc", "class", "change"] and "100000mbit" in ch[0]
    assert ch[1] == ["tc", "qdisc", "change", "dev", "d", "parent", "1:1", "handle", "10:",
                     "netem", "delay", "5ms", "loss", "random", "2%"]


def test_plan_tbf_netem_and_netem_rate_changes() -> None:
    s = tc.Shaping(rate_mbps=10, netem=tc.Netem(delay_ms=1))
    cmds = tc.apply_commands("d", s, "tbf+netem")
    assert cmds[0][5:8] == ["root", "handle", "1:"] and cmds[0][8] == "tbf"
    assert cmds[1][5:9] == ["parent", "1:1", "handle", "10:"]
    assert tc.change_commands("d", s, "netem-rate")[0][-2:] == ["rate", "10mbit"]
    assert tc.change_commands("d", tc.Shaping(), "tbf")[0][-6:-4] == ["rate", "100000mbit"]
    assert tc.change_commands("d", s, "none") == []
    with pytest.raises(ValueError, match="unknown layout"):
        tc.apply_commands("d", s, "cake")
    assert tc.teardown_commands("d") == [["tc", "qdisc", "del", "dev", "d", "root"]]


@given(st.floats(min_value=0.001, max_value=100_000, allow_nan=False))
def test_rate_round_trips_to_kbit(mbps: float) -> None:
    text = tc.fmt_rate(mbps)
    value = float(text[:-4]) * (1 if text.endswith("mbit") else 1e-3)
    assert abs(value - mbps) <= 0.0005


def test_timeline_of_bundled_bursty_profile() -> None:
    from simstream.profile import find_profile, load_profile

    prof = load_profile(find_profile("bursty"))
    phases = timeline_shapings(prof)
    assert [p.name for p in phases] == ["burst", "stall"]
    assert phases[0].shaping.rate_mbps is None and phases[1].shaping.rate_mbps == 10
    p = tc.plan("d", [ph.shaping for ph in phases], NO_NETEM)
    assert p.layout == "tbf"
    assert p.applied[0].startswith("rate: uncapped")


def test_phase_boundaries_repeat_and_open_end() -> None:
    phases = [PhaseShaping("a", 2.0, tc.Shaping()), PhaseShaping("b", 0.5, tc.Shaping())]
    assert list(phase_boundaries(phases, True, 5.0)) == [(0.0, 0), (2.0, 1), (2.5, 0), (4.5, 1)]
    assert list(phase_boundaries(phases, False, 100.0)) == [(0.0, 0), (2.0, 1)]
    open_end = [PhaseShaping("a", 1.0, tc.Shaping()), PhaseShaping("b", None, tc.Shaping())]
    assert list(phase_boundaries(open_end, True, 100.0)) == [(0.0, 0), (1.0, 1)]


def test_profile_with_jitter_needs_netem() -> None:
    prof = parse_profile({"name": "j", "network": {"latency_ms": 20, "jitter_ms": 10,
                                                   "jitter_distribution": "paretonormal"}})
    p = tc.plan("d", [ph.shaping for ph in timeline_shapings(prof)], ALL)
    assert p.layout == "netem"
    assert p.commands[0][8:] == ["netem", "delay", "20ms", "10ms", "distribution", "paretonormal"]
    assert p.applied == ["latency 20 ms, jitter 10 ms (paretonormal) (netem)"]
