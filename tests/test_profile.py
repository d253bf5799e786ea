"""The profile contract: bundled profiles, round trips, path-naming errors, exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from simstream.cli import main
from simstream.profile import (
    COMPRESSIONS,
    DTYPES,
    FAULT_KINDS,
    Profile,
    ProfileError,
    bundled_profiles,
    dump_profile,
    find_profile,
    load_profile,
    parse_profile,
    profile_schema,
)

REQUIRED_BUNDLED = {
    "steady",
    "bursty",
    "jitter",
    "bandwidth-capped",
    "flaky",
    "lclstreamer-default",
    "peaknet-1920",
}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return int(rc or 0), out.out, out.err


def test_required_profiles_are_bundled() -> None:
    assert set(bundled_profiles()) >= REQUIRED_BUNDLED


@pytest.mark.parametrize("name", sorted(bundled_profiles()))
def test_every_bundled_profile_validates(name: str) -> None:
    p = load_profile(bundled_profiles()[name])
    assert p.name
    # a bundled profile must terminate on its own: tests and demos rely on it
    assert p.stop.duration_s is not None or p.stop.messages is not None or (
        p.source.total_events is not None
    )


def test_lclstreamer_default_matches_lclstreamer() -> None:
    p = load_profile(find_profile("lclstreamer-default"))
    # the parameter model's default role; LINGER 0 closes abruptly; one socket on all urls
    assert p.transport.role == "server"
    assert p.transport.close == "abrupt" and p.transport.url_spread == "message"
    assert p.transport.sndhwm == 5
    assert p.transport.url.endswith(":12321")
    assert p.source.format == "hdf5" and p.source.compression == "none"
    assert p.source.dtype == "float64"


def test_peaknet_1920_is_the_npz_branch() -> None:
    p = load_profile(find_profile("peaknet-1920"))
    assert p.source.shape == [1, 1920, 1920]
    assert p.source.dtype == "float32"
    assert p.source.batch_size == 8
    assert p.source.format == "npz"


def test_contract_example_from_the_issue_loads(tmp_path: Path) -> None:
    text = """
name: bursty
description: LCLStreamer pushing in bursts separated by stalls
seed: 7
source:
  batch_size: 8
  shape: [1, 512, 512]
  dtype: float32
  content: peaks
  replay_path: null
  format: hdf5
  compression: none
  compression_level: 3
  fields:
    detector_data: /data/data
    timestamp: /data/timestamp
    photon_wavelength: /data/wavelength
  total_events: 4000
  pool: null
transport:
  kind: zmq
  role: client
  url: tcp://127.0.0.1:12321
  sndhwm: 5
  ranks: 1
network:
  latency_ms: 0
  jitter_ms: 0
  jitter_distribution: normal
  bandwidth_mbps: null
timeline:
  repeat: true
  phases:
    - {name: burst, duration_s: 2.0, rate_hz: 100}
    - {name: stall, duration_s: 0.5, rate_hz: 0, network: {bandwidth_mbps: 10}}
faults:
  - {kind: reset, at_message: 500}
  - {kind: stall, every_s: 30, duration_ms: 800}
stop: {messages: null, duration_s: 60}
consumer: {}
"""
    f = tmp_path / "p.yaml"
    f.write_text(text)
    p = load_profile(f)
    assert p.timeline.phases[1].network is not None
    assert p.timeline.phases[1].network.bandwidth_mbps == 10
    assert [f.kind for f in p.faults] == ["reset", "stall"]
    # an empty section: every consumer default, the data-describing ones from the source
    assert p.consumer.queue.maxsize == 16 and p.consumer.model.kind == "synthetic"
    assert p.consumer.event_shape == list(p.source.shape)


def test_consumer_section_is_typed_and_round_trips() -> None:
    p = parse_profile({"name": "x", "source": {"shape": [1, 64, 64], "format": "npz",
                                               "fields": {"detector_data": "d"}},
                       "transport": {"kind": "nng"},
                       "consumer": {"queue": {"maxsize": 3},
                                    "model": {"kind": "peaknet", "size": "small"}}})
    c = p.consumer
    assert c.queue.maxsize == 3 and c.queue.backend == "local"
    assert (c.model.kind, c.model.size, c.model.in_channels) == ("peaknet", "small", 1)
    # the data-describing defaults come from the source and transport
    assert c.transport == "nng" and c.event_shape == [1, 64, 64] and c.fields == {"detector_data": "d"}
    assert c.random.shape == [1, 64, 64]
    assert load_profile_text(dump_profile(p)) == p
    # values that only repeat the source follow it when it is overridden
    q = p.with_overrides({"source.shape": [1, 32, 32], "consumer.buffers": 3})
    assert q.consumer.event_shape == [1, 32, 32] and q.consumer.buffers == 3
    assert q.consumer.model == c.model
    # None is "not given" unless asked to set it (lifting a limit the profile sets)
    capped = p.with_overrides({"source.total_events": 800})
    assert capped.with_overrides({"source.total_events": None}).source.total_events == 800
    assert capped.with_overrides({"source.total_events": None},
                                 skip_none=False).source.total_events is None
    # so do they when a dumped profile is edited and validated again
    data = p.model_dump(mode="python")
    data["source"]["shape"] = [1, 16, 16]
    assert parse_profile(data).consumer.event_shape == [1, 16, 16]
    assert parse_profile(data).consumer.queue.maxsize == 3


@pytest.mark.parametrize(("section", "message"), [
    ({"bufers": 2}, "consumer.bufers: unknown key (did you mean 'buffers'?)"),
    ({"model": {"kind": "synthetic", "compute_msec": 3}},
     "consumer.model.compute_msec: unknown key (did you mean 'compute_ms'?)"),
    ({"model": {"kind": "peaknet", "sise": "base"}},
     "consumer.model.sise: unknown key (did you mean 'size'?)"),
    ({"model": {"kind": "resnet"}}, "consumer.model.kind: 'resnet' is not one of"),
    ({"model": {"kind": "noop", "probe": 0}}, "consumer.model.probe: 0 is not >= 1"),
    ({"queue": {"backend": "redis"}}, "consumer.queue.backend: 'redis' is not one of"),
    ({"ray": {"num_cpu": 2}}, "consumer.ray.num_cpu: unknown key (did you mean 'num_cpus'?)"),
])
def test_validate_cli_rejects_consumer_typos_naming_the_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], section: dict[str, Any],
        message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"name": "x", "consumer": section}))
    rc, _, err = run_cli(["profiles", "validate", str(f)], capsys)
    assert rc == 2 and message in err, err
    assert "Traceback" not in err


def test_show_and_schema_cover_the_consumer(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["profiles", "show", "peaknet-1920"], capsys)
    assert rc == 0
    consumer = yaml.safe_load(out)["consumer"]
    assert consumer["model"] == {"kind": "peaknet", "size": "production", "dims": None,
                                 "depths": None, "bifpn_channels": None, "bifpn_layers": None,
                                 "in_channels": 1, "num_classes": 2, "seed": 0,
                                 "weights_path": None}
    assert consumer["queue"]["sample_interval_ms"] == 100.0 and consumer["ray"]["actors"] is True
    assert consumer["event_shape"] == [1, 1920, 1920]
    rc, out, _ = run_cli(["profiles", "schema"], capsys)
    defs = json.loads(out)["$defs"]
    assert {"buffers", "queue", "model", "ray"} <= set(defs["ConsumerConfig"]["properties"])
    assert defs["ConsumerConfig"]["additionalProperties"] is False
    assert "compute_ms" in defs["SyntheticModelSpec"]["properties"]


def load_profile_text(text: str) -> Profile:
    return parse_profile(yaml.safe_load(text))


# --- errors name the path, the value and what is allowed -------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"timeline": {"phases": [{"duration_s": 1, "rate_hz": 5},
                                     {"duration_s": 1, "rate_hz": -3}]}},
            "timeline.phases[1].rate_hz: -3 is not >= 0",
        ),
        ({"source": {"batch_size": 0}}, "source.batch_size: 0 is not >= 1"),
        ({"source": {"dtype": "complex64"}}, "source.dtype: 'complex64' is not one of"),
        ({"source": {"batchsize": 8}}, "source.batchsize: unknown key (did you mean 'batch_size'?)"),
        ({"transport": {"url": "udp://x:1"}}, "transport.url: 'udp://x:1' is not a tcp://HOST:PORT"),
        ({"network": {"bandwidth_mbps": 0}}, "network.bandwidth_mbps: 0 is not > 0"),
        ({"faults": [{"kind": "reset"}]}, "faults[0]: fault 'reset' needs a trigger"),
        ({"faults": [{"kind": "melt", "at_s": 1}]}, "faults[0].kind: 'melt' is not one of"),
        ({"faults": [{"kind": "stall", "at_s": 1}]}, "faults[0]: fault 'stall' needs duration_ms"),
        ({"faults": [{"kind": "duplicate", "probability": 1.5}]},
         "faults[0].probability: 1.5 is not <= 1"),
        ({"source": {"content": "replay"}}, "source: content: replay needs replay_path"),
        ({"transport": {"role": "client", "url": "tcp://0.0.0.0:5"}},
         "role client cannot connect to the wildcard address"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"transport": {"role": "server", "ranks": 3}},
         "transport: role server with 3 ranks needs 3 addresses in transport.urls"),
    ],
)
def test_error_messages_name_path_value_and_rule(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ProfileError) as ei:
        parse_profile({"name": "t", **data})
    assert any(expected in p for p in ei.value.problems), ei.value.problems


def test_missing_name_is_reported() -> None:
    with pytest.raises(ProfileError) as ei:
        parse_profile({})
    assert "name: required key is missing" in ei.value.problems


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nsource: [1, 2\n")
    with pytest.raises(ProfileError) as ei:
        load_profile(f)
    assert "line" in str(ei.value) and "YAML syntax" in str(ei.value)


def test_validate_cli_exits_2_with_path_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\ntimeline:\n  phases:\n    - {duration_s: 1, rate_hz: -3}\n")
    rc, out, err = run_cli(["profiles", "validate", str(f)], capsys)
    assert rc == 2
    assert "timeline.phases[0].rate_hz: -3 is not >= 0" in err
    assert "Traceback" not in err


def test_validate_cli_accepts_all_bundled(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(p) for p in bundled_profiles().values()]
    rc, out, err = run_cli(["profiles", "validate", *paths], capsys)
    assert rc == 0, err
    assert out.count(": ok") == len(paths)


def test_show_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["profiles", "list"], capsys)
    assert rc == 0 and "bursty" in out and "peaknet-1920" in out
    rc, out, _ = run_cli(["profiles", "show", "bursty"], capsys)
    assert rc == 0
    assert load_profile_text(out) == load_profile(find_profile("bursty"))


def test_show_unknown_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["profiles", "show", "bursy"], capsys)
    assert rc == 2 and "did you mean 'bursty'" in err


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["profiles", "schema"], capsys)
    assert rc == 0
    schema = json.loads(out)
    assert schema["title"] == "simstream profile"
    assert {"source", "transport", "network", "timeline", "faults", "stop", "consumer"} <= set(
        schema["properties"]
    )
    assert schema == profile_schema()


def test_overrides_apply_and_are_validated() -> None:
    p = load_profile(find_profile("bursty"))
    q = p.with_overrides({"transport.url": "tcp://127.0.0.1:5555", "stop.messages": 3})
    assert q.transport.url == "tcp://127.0.0.1:5555" and q.stop.messages == 3
    with pytest.raises(ProfileError) as ei:
        p.with_overrides({"transport.ranks": 0})
    assert "transport.ranks: 0 is not >= 1" in ei.value.problems


# --- property tests ----------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
phases = st.builds(
    dict,
    name=names,
    duration_s=st.floats(0.01, 100, allow_nan=False),
    rate_hz=st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False)),
)
faults = st.one_of(
    st.builds(dict, kind=st.sampled_from([k for k in FAULT_KINDS if k != "stall"]),
              at_message=st.integers(0, 10_000)),
    st.builds(dict, kind=st.just("stall"), every_s=st.floats(0.1, 100), duration_ms=st.floats(0, 5000)),
    st.builds(dict, kind=st.sampled_from(FAULT_KINDS), probability=st.floats(0, 1),
              duration_ms=st.just(10.0)).filter(lambda f: f["kind"] in ("stall", "slow_close")),
)


@st.composite
def profiles(draw: st.DrawFn) -> dict[str, Any]:
    compression = draw(st.sampled_from(COMPRESSIONS))
    fmt = "hdf5" if compression not in ("none", "gzip") else draw(st.sampled_from(["hdf5", "npz"]))
    ranks = draw(st.integers(1, 8))
    role = draw(st.sampled_from(["client", "server"]))
    ports = draw(st.lists(st.integers(1, 65535), min_size=ranks, max_size=ranks, unique=True))
    transport: dict[str, Any] = {
        "kind": draw(st.sampled_from(["zmq", "nng", "tcp"])),
        "role": role,
        "url": f"tcp://127.0.0.1:{ports[0]}",
        "sndhwm": draw(st.integers(1, 100)),
        "ranks": ranks,
    }
    if role == "server" and ranks > 1:  # each rank binds its own address
        transport["urls"] = [f"tcp://127.0.0.1:{p}" for p in ports]
    return {
        "name": draw(names),
        "seed": draw(st.integers(0, 2**31)),
        "source": {
            "batch_size": draw(st.integers(1, 64)),
            "shape": draw(st.lists(st.integers(1, 2048), min_size=1, max_size=3)),
            # up to 64 x 2048^3 x 8 bytes: the bound is raised explicitly
            "max_message_bytes": 1 << 43,
            "dtype": draw(st.sampled_from(DTYPES)),
            "content": draw(st.sampled_from(["random", "peaks", "constant"])),
            "format": fmt,
            "compression": compression,
            "compression_level": draw(st.integers(0, 9)),
            "total_events": draw(st.one_of(st.none(), st.integers(1, 10**6))),
            "pool": draw(st.one_of(st.none(), st.integers(1, 64))),
        },
        "transport": transport,
        "network": {
            "latency_ms": draw(st.floats(0, 1000)),
            "jitter_ms": draw(st.floats(0, 100)),
            "jitter_distribution": draw(st.sampled_from(["uniform", "normal", "pareto", "paretonormal"])),
            "bandwidth_mbps": draw(st.one_of(st.none(), st.floats(0.001, 1e5))),
        },
        "timeline": {"repeat": draw(st.booleans()), "phases": draw(st.lists(phases, min_size=1, max_size=4))},
        "faults": draw(st.lists(faults, max_size=3)),
        "stop": {"duration_s": draw(st.one_of(st.none(), st.floats(0.1, 1e4)))},
    }


@given(profiles())
def test_valid_profiles_round_trip_through_dump_and_load(data: dict[str, Any]) -> None:
    p = parse_profile(data)
    assert load_profile_text(dump_profile(p)) == p


# (path, bad value, fragment of the rule the message must state)
BAD_VALUES = [
    (("source", "batch_size"), st.integers(max_value=0), "is not >= 1"),
    (("source", "compression_level"), st.integers(min_value=23), "is not <= 22"),
    (("transport", "sndhwm"), st.integers(max_value=0), "is not >= 1"),
    (("network", "latency_ms"), st.floats(max_value=-0.001, allow_infinity=False), "is not >= 0"),
    (("network", "jitter_distribution"), names.filter(
        lambda s: s not in ("uniform", "normal", "pareto", "paretonormal")), "is not one of"),
    (("timeline", "phases", 0, "rate_hz"), st.floats(max_value=-0.001, allow_infinity=False),
     "is not >= 0"),
    (("source", "format"), names.filter(lambda s: s not in ("hdf5", "npz")), "is not one of"),
    (("source", "not_a_key"), st.integers(), "unknown key"),
]


@given(profiles(), st.sampled_from(range(len(BAD_VALUES))), st.data())
def test_generated_invalid_profiles_exit_2_naming_the_path(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any], which: int, draw: st.DataObject
) -> None:
    path, values, rule = BAD_VALUES[which]
    value = draw.draw(values)
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    dotted = ".".join(str(p) for p in path).replace(".0.", "[0].")
    f = tmp_path_factory.mktemp("p") / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    try:
        rc = main(["profiles", "validate", str(f)])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    with pytest.raises(ProfileError) as ei:
        load_profile(f)
    assert any(p.startswith(dotted + ":") and rule in p for p in ei.value.problems), (
        dotted,
        ei.value.problems,
    )


# --- transport.processes and transport.rank_offset ---------------------------


def test_schema_describes_processes_and_rank_offset(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["profiles", "schema"], capsys)
    assert rc == 0
    tp = json.loads(out)["$defs"]["Transport"]["properties"]
    assert tp["processes"]["minimum"] == 1 and tp["processes"]["default"] == 1
    assert "split" in tp["processes"]["description"]
    assert tp["rank_offset"]["minimum"] == 0 and tp["rank_offset"]["default"] == 0


def test_processes_must_not_exceed_ranks_at_load(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\ntransport: {ranks: 3, processes: 4}\n")
    with pytest.raises(ProfileError) as ei:
        load_profile(f)
    assert ei.value.problems == [
        "transport.processes: 4 is not <= transport.ranks (3): each process runs at least one rank"]
    rc, _, err = run_cli(["profiles", "validate", str(f)], capsys)
    assert rc == 2 and "transport.processes: 4 is not <= transport.ranks (3)" in err
    ok = parse_profile({"name": "x", "transport": {"ranks": 3, "processes": 3}})
    assert ok.transport.processes == 3
    # an override of ranks below the profile's processes is caught the same way
    with pytest.raises(ProfileError, match=r"transport\.processes: 3 is not <= transport\.ranks"):
        ok.with_overrides({"transport.ranks": 2})


def test_processes_and_rank_offset_round_trip() -> None:
    p = parse_profile({"name": "x", "transport": {"ranks": 4, "processes": 2, "rank_offset": 8},
                       "faults": [{"kind": "reset", "at_message": 1, "rank": 11}]})
    assert load_profile_text(dump_profile(p)) == p
    assert (p.transport.processes, p.transport.rank_offset) == (2, 8)
