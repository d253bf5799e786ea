"""Each bundled hypothesis profile, run end to end on loopback, gets its verdict.

The verdict comes from the measurements (diagnose never reads the profile);
these runs check that each scenario really produces the bottleneck it is named
after on this kind of machine, and that every message is accounted for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simstream.profile import bundled_profiles
from simstream.runner.core import run_profile
from simstream.testing import assert_accounted

EXPECTED = {
    "hypotheses/network-bound": "network",
    "hypotheses/bursty-network": "network",
    "hypotheses/parse-bound": "parse",
    "hypotheses/queue-bound": "queue",
    "hypotheses/queue-bound-ray": "queue",
    "hypotheses/consumer-bound": "consumer",
}


def test_every_hypothesis_profile_is_covered() -> None:
    bundled = {n for n in bundled_profiles() if n.startswith("hypotheses/")}
    assert bundled == set(EXPECTED)


# the other hypotheses on production's engine too: `--queue-backend ray` puts the
# consumer in Ray receiver, Q1 shard and inference actors
ON_RAY = ("hypotheses/network-bound", "hypotheses/parse-bound", "hypotheses/consumer-bound")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("name", "backend"), [(n, None) for n in sorted(EXPECTED)]
                         + [(n, "ray") for n in ON_RAY])
def test_hypothesis_profile_gets_its_verdict(name: str, backend: str | None,
                                             tmp_path: Path) -> None:
    if name.endswith("-ray") or backend == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    args = [] if backend is None else ["--queue-backend", backend]
    result = run_profile(bundled_profiles()[name], tmp_path / "run", consumer_args=args)
    if backend is not None:
        assert result.summary["queue_backend"] == backend and result.summary["ray"]["actors"]
    s = result.summary
    assert result.emitter_rc == 0
    assert s["received"] > 0
    assert s["lost"] == 0 and s["duplicated"] == 0
    # the public assertion users get: the consumer's books balance, row by row, and
    # every message the emitter delivered was received (matched by rank and seq)
    counts = assert_accounted(tmp_path / "run")
    assert counts["delivered"] == s["received"]
    # on Ray actors too: each profile's bottleneck holds there by construction (the
    # margins are in the profiles' descriptions), and the receiver side's putting into
    # Q1 is timed on the putting thread's own clock (a shard stamps a batch mid-call)
    assert result.report["verdict"] == EXPECTED[name], result.report.get("key_evidence")
    for f in ("report.json", "report.md", "report.html", "trace.json"):
        assert (tmp_path / "run" / f).exists()
