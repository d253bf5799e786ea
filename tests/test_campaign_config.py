"""Bad configuration: generated invalid profiles and flag combinations for ``emit``,
``consume`` and ``run`` always exit 2 with a one-line-per-problem message naming the
field, never a traceback; conflicting settings are caught at load.

Every case here is rejected before a socket opens or a child starts, so the CLI is
driven in-process through ``simstream.cli.main`` (what the console script runs).
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from simstream.cli import main

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "profiles" / "steady.yaml").read_text())


def invoke(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, stderr + stdout). Any exception other than
    SystemExit escapes (that would be a traceback for the user)."""
    err, out = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    return int(code or 0), err.getvalue() + out.getvalue()


def assert_rejected(argv: list[str], field: str) -> str:
    code, text = invoke(argv)
    assert code == 2, f"{argv}: exit {code}\n{text}"
    assert "Traceback" not in text
    assert field in text, f"{field!r} not named in: {text}"
    return text


# --------------------------------------------------------------------------
# generated invalid profiles

# (dotted path, invalid values, what the message must name)
BAD_VALUES: list[tuple[str, list[Any], str]] = [
    ("seed", [-1, "one", 1.5], "seed"),
    ("source.batch_size", [0, -4, "eight", None], "source.batch_size"),
    ("source.shape", [[], [0, 4], [1, 2, 3, 4, 5], "512x512", [-1]], "source.shape"),
    ("source.dtype", ["float128", "object", "O", 7], "source.dtype"),
    ("source.format", ["hdf6", "pickle", None], "source.format"),
    ("source.compression", ["lzma", "bitshuffle"], "source.compression"),
    ("source.compression_level", [-1, 23, "high"], "source.compression_level"),
    ("source.total_events", [0, -1, "all"], "source.total_events"),
    ("source.fields", [{}, {"timestamp": "/t"}, {"detector_data": ""}], "source.fields"),
    ("transport.kind", ["udp", "zmtp", ""], "transport.kind"),
    ("transport.role", ["push", "bind", None], "transport.role"),
    ("transport.url", ["127.0.0.1:12321", "tcp://host", "tcp://h:0", "tcp://h:70000",
                       "ipc:///tmp/x", 12321], "transport.url"),
    ("transport.urls", [[], ["udp://a:1"]], "transport.urls"),
    ("transport.sndhwm", [0, -5], "transport.sndhwm"),
    ("transport.ranks", [0, 1025, "two"], "transport.ranks"),
    ("transport.connect_timeout_s", [0, -1.5], "transport.connect_timeout_s"),
    ("transport.reconnect_backoff_ms", [[1], [1, 2, 3], "fast"],
     "transport.reconnect_backoff_ms"),
    ("network.latency_ms", [-1, "slow"], "network.latency_ms"),
    ("network.bandwidth_mbps", [0, -10], "network.bandwidth_mbps"),
    ("network.jitter_distribution", ["cauchy"], "network.jitter_distribution"),
    ("network.bandwidth_scope", ["global"], "network.bandwidth_scope"),
    ("timeline.phases", [[], "steady"], "timeline.phases"),
    ("timeline.phases[0].rate_hz", [-3, "fast"], "timeline.phases[0].rate_hz"),
    ("timeline.phases[0].duration_s", [0, -1], "timeline.phases[0].duration_s"),
    ("faults", [[{"kind": "explode", "at_message": 1}]], "faults[0].kind"),
    ("faults", [[{"kind": "reset"}]], "faults[0]"),
    ("faults", [[{"kind": "stall", "at_message": 1}]], "faults[0]"),
    ("faults", [[{"kind": "reset", "probability": 1.5}]], "faults[0].probability"),
    ("faults", [[{"kind": "reset", "at_message": 1, "fraction": 0.5}]], "faults[0]"),
    ("faults", [[{"kind": "corrupt", "at_message": 1, "rank": 3}]], "rank"),
    ("stop.messages", [0, -2], "stop.messages"),
    ("stop.duration_s", [0, -1], "stop.duration_s"),
    ("unknown_top_key", [1], "unknown_top_key"),
    ("source.shpe", [[1, 2]], "source.shpe"),
]


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = data
    parts = dotted.replace("[0]", ".0").split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


@st.composite
def invalid_profiles(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid profile with one field made invalid, and the field's path."""
    path, values, field = draw(st.sampled_from(BAD_VALUES))
    data = copy.deepcopy(BASE)
    _set(data, path, draw(st.sampled_from(values)))
    return data, field


# each bounded in case a profile meant to be invalid is not: a dry run, a short run
COMMANDS = {
    "emit": lambda p, d: ["emit", "--profile", p, "--dry-run", "--log", f"{d}/emit.jsonl"],
    "consume": lambda p, d: ["consume", "--profile", p, "--out", f"{d}/out",
                             "--duration", "0.5"],
    "run": lambda p, d: ["run", "--profile", p, "--out", f"{d}/run", "--duration", "1"],
    "validate": lambda p, d: ["profiles", "validate", p],
}


@given(case=invalid_profiles(), command=st.sampled_from(sorted(COMMANDS)))
def test_an_invalid_profile_exits_2_naming_the_field(case: tuple[dict[str, Any], str],
                                                     command: str) -> None:
    data, field = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        assert_rejected(COMMANDS[command](str(path), d), field)


@given(text=st.sampled_from(["name: [unclosed", "{a: 1", "- just\n- a list\n", "42",
                             "name: x\n\tsource: {}\n", ""]),
       command=st.sampled_from(sorted(COMMANDS)))
def test_a_profile_that_is_not_yaml_or_not_a_mapping_exits_2(text: str, command: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bad.yaml"
        path.write_text(text)
        code, out = invoke(COMMANDS[command](str(path), d))
        assert code == 2 and "Traceback" not in out
        assert "bad.yaml" in out or "top level" in out


# --------------------------------------------------------------------------
# the consumer section

BAD_CONSUMER: list[tuple[dict[str, Any], str]] = [
    ({"buffers": 0}, "consumer.buffers"),
    ({"buffers": 17}, "consumer.buffers"),
    ({"mode": "file"}, "consumer.mode"),
    ({"transport": "udp"}, "consumer.transport"),
    ({"device": "tpu"}, "consumer.device"),
    ({"queue": {"maxsize": 0}}, "consumer.queue.maxsize"),
    ({"queue": {"backend": "redis"}}, "consumer.queue.backend"),
    ({"queue": {"sample_interval_ms": 0}}, "consumer.queue.sample_interval_ms"),
    ({"parse_in": "gpu"}, "consumer.parse_in"),
    ({"parse_isolation": "thread"}, "consumer.parse_isolation"),
    ({"parse_timeout_s": 0}, "consumer.parse_timeout_s"),
    ({"max_message_bytes": 0}, "consumer.max_message_bytes"),
    ({"model": {}}, "consumer.model"),
    ({"bind": "tcp://127.0.0.1:1", "connect": "tcp://127.0.0.1:2"}, "bind and connect"),
    ({"bind": "udp://x:1"}, "consumer.bind"),
    ({"expected_fields": ["nope"]}, "expected_fields"),
    ({"fields": {"detector_data": 5}}, "consumer.fields"),
    ({"qeue": {}}, "consumer.qeue"),
]


@given(case=st.sampled_from(BAD_CONSUMER))
def test_an_invalid_consumer_section_exits_2_naming_the_field(
        case: tuple[dict[str, Any], str]) -> None:
    section, field = case
    data = copy.deepcopy(BASE)
    data["consumer"] = section
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        assert_rejected(COMMANDS["consume"](str(path), d), field)


def test_run_catches_an_invalid_consumer_section_at_load(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["consumer"] = {"buffers": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_rejected(COMMANDS["run"](str(path), str(tmp_path)), "consumer.buffers")


# --------------------------------------------------------------------------
# flag combinations

FLAG_CASES: list[tuple[list[str], str]] = [
    (["emit", "--profile", "steady", "--url", "tcp://0.0.0.0:5555", "--role", "client"],
     "wildcard"),
    (["emit", "--profile", "steady", "--url", "nonsense"], "transport.url"),
    (["emit", "--profile", "steady", "--role", "server", "--ranks", "3"], "transport.urls"),
    (["emit", "--profile", "steady", "--ranks", "0"], "--ranks"),
    (["emit", "--profile", "steady", "--count", "0"], "--count"),
    (["emit", "--profile", "steady", "--duration", "-1"], "--duration"),
    (["emit", "--profile", "steady", "--transport", "udp"], "--transport"),
    (["emit", "--profile", "steady", "--lclstreamer-config", "x.yaml"], "x.yaml"),
    (["emit"], "--profile"),
    (["emit", "--profile", "no-such-profile"], "no-such-profile"),
    (["emit", "--profile", "steady", "--log", "/no/such/dir/e.jsonl"], "--log"),
    (["emit", "--profile", "steady", "--loopback", "--url", "tcp://127.0.0.1:5555"], "--loopback"),
    (["consume", "--bind", "tcp://127.0.0.1:1", "--connect", "tcp://127.0.0.1:2"],
     "--bind and --connect"),
    (["consume", "--bind", "127.0.0.1:5555"], "--bind"),
    (["consume", "--connect", "tcp://[::1]"], "--connect"),
    (["consume", "--buffers", "0"], "--buffers"),
    (["consume", "--parser-threads", "65"], "--parser-threads"),
    (["consume", "--queue-backend", "redis"], "--queue-backend"),
    (["consume", "--count", "0"], "--count"),
    (["consume", "--duration", "0"], "--duration"),
    (["consume", "--idle-timeout", "-1"], "--idle-timeout"),
    (["consume", "--mode", "file"], "--mode"),
    (["consume", "--device", "tpu"], "consumer.device"),
    (["consume", "--profile", "no-such-profile"], "no-such-profile"),
    (["run", "--profile", "steady", "--duration", "-1"], "--duration"),
    (["run", "--profile", "steady", "--capture-snaplen", "100"], "--capture"),
    (["run", "--profile", "no-such-profile"], "no-such-profile"),
    (["run"], "--profile"),
]


@pytest.mark.parametrize(("argv", "field"), FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flags_and_combinations_exit_2_naming_the_flag(argv: list[str], field: str,
                                                           tmp_path: Path) -> None:
    if argv[0] in ("consume", "run") and "--out" not in argv and len(argv) > 1:
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert_rejected(argv, field)


# --------------------------------------------------------------------------
# conflicts caught at load (``profiles validate`` reads only the file)


def test_a_server_role_with_more_ranks_than_addresses_is_caught_at_load(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["transport"].update(role="server", ranks=3)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_rejected(["profiles", "validate", str(path)], "transport.urls")
