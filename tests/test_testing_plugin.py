"""simstream.testing: the assertions on run directories with a known bottleneck
(simulated, no processes), the profile resolution, and the plugin in a pytest
run of its own (pytester): fixtures found, processes stopped after a failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from simstream.diagnose.simulate import Scenario, write_run_dir
from simstream.profile import ProfileError
from simstream.testing import (
    EmitRecord,
    assert_accounted,
    assert_no_loss,
    assert_no_starvation,
    assert_verdict,
    read_consumer_run,
    resolve_profile,
)

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def starved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 batches/s into a loop that could take ~100: the loop waits on an empty Q1."""
    return write_run_dir(Scenario(duration_s=2.0), tmp_path_factory.mktemp("starved"))


@pytest.fixture(scope="module")
def saturated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 batches/s into a loop that takes ~33: Q1 stays full, the consumer limits."""
    return write_run_dir(Scenario(duration_s=2.0, compute_ms=30),
                         tmp_path_factory.mktemp("saturated"))


def test_verdict_and_starvation_assertions_pass_and_fail(starved: Path, saturated: Path) -> None:
    rep = assert_verdict(starved, "network", min_confidence=0.5)
    assert rep["verdict"] == "network"
    with pytest.raises(AssertionError, match=r"verdict 'network' .*expected 'consumer'"):
        assert_verdict(starved, "consumer")
    with pytest.raises(AssertionError, match="confidence .* < 1.00"):
        assert_verdict(saturated, "consumer", min_confidence=1.0)
    with pytest.raises(ValueError, match="not one of network, parse, queue, consumer"):
        assert_verdict(starved, "gpu")
    assert assert_no_starvation(saturated) <= 0.15
    with pytest.raises(AssertionError, match="the consumer starved: .* empty Q1"):
        assert_no_starvation(starved, max_idle_share=0.5)


def test_accounting_names_the_first_delivered_message_never_received(
        starved: Path, tmp_path: Path) -> None:
    counts = assert_accounted(starved)
    assert counts["delivered"] == counts["received"] == 100
    assert_no_loss(starved)
    run = read_consumer_run(starved)
    records = [json.loads(line) for line in (starved / "emit.jsonl").read_text().splitlines()]
    extra = dict(records[-1], seq=100, faults=["duplicate"])
    emitter = [EmitRecord.from_dict(r) for r in [*records, extra]]
    with pytest.raises(AssertionError, match=r"rank 0 seq 100 was delivered by the emitter "
                                             r"\(faults: duplicate\) .* never received it"):
        assert_accounted(run, emitter)
    # a delivered message too damaged to carry its numbers: a quarantined row without them
    run.messages.append({"index": 100, "rank": None, "seq": None, "status": "quarantined"})
    run.summary = dict(run.summary, received=101, quarantined=1)
    assert assert_accounted(run, emitter)["delivered"] == 101
    # the consumer's own books
    run.summary = dict(run.summary, processed=99)
    with pytest.raises(AssertionError, match="books do not balance"):
        assert_accounted(run, emitter)
    lost = [*records[:-1], dict(records[-1], outcome="lost")]
    with pytest.raises(AssertionError, match=r"rank 0 seq 99 lost"):
        assert_no_loss(starved, [EmitRecord.from_dict(r) for r in lost])


def test_profiles_resolve_from_names_paths_and_mappings(tmp_path: Path) -> None:
    p = resolve_profile("steady", url="tcp://127.0.0.1:5555", count=7,
                        network={"latency_ms": 3}, faults=[{"kind": "reset", "at_message": 2}])
    assert p.transport.url == "tcp://127.0.0.1:5555" and p.stop.messages == 7
    assert p.network.latency_ms == 3 and p.network.bandwidth_scope == "per_rank"
    assert p.source.shape == [1, 512, 512]  # sections merge key by key
    assert resolve_profile(p).model_dump() == p.model_dump()
    assert resolve_profile({"source": {"shape": [1, 8, 8]}}, duration=2).stop.duration_s == 2
    with pytest.raises(ProfileError, match="netwrok: not a profile section"):
        resolve_profile("steady", netwrok={})
    with pytest.raises(ProfileError, match="network.latency_ms: -1 is not >= 0"):
        resolve_profile("steady", network={"latency_ms": -1})


def test_the_plugin_is_registered_under_its_module_name() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.entry-points.pytest11]", 1)[1].split("\n[", 1)[0]
    entries = [ln.strip() for ln in section.splitlines() if ln.strip() and ln[0] != "#"]
    assert entries == ['"simstream.testing" = "simstream.testing"']


def test_fixtures_stop_the_emitter_when_the_test_fails(pytester: pytest.Pytester) -> None:
    """A user's failing test: the emitter it started (still retrying to connect to a
    port nobody listens on) is gone after the run; bad input fails at once."""
    pidfile = pytester.path / "pid"
    pytester.makepyfile(test_user=f"""
        import pathlib
        import pytest
        from simstream.profile import ProfileError
        from simstream.testing import free_url

        def test_fails_while_sending(simstream_emitter):
            h = simstream_emitter("steady", url=free_url(), count=5,
                                  source={{"shape": [1, 8, 8], "pool": None}})
            pathlib.Path({str(pidfile)!r}).write_text(str(h.process.pid))
            assert h.running and h.status()["counters"]["delivered"] == 0
            assert False, "the user's assertion"

        def test_bad_profile(simstream_emitter):
            with pytest.raises(ProfileError, match="network.jitter_ms"):
                simstream_emitter("steady", url=free_url(), network={{"jitter_ms": -2}})
    """)
    result = pytester.runpytest_inprocess("-p", "simstream.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*the user's assertion*"])
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_fixture_names_are_offered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("-p", "simstream.testing", "--fixtures", "-q")
    out = result.stdout.str()
    for name in ("simstream_emitter", "simstream_consumer", "simstream_run"):
        assert name in out
