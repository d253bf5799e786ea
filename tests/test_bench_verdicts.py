"""bench/bench_verdicts.py's lane plan and tally, without running a profile."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_verdicts", ROOT / "bench" / "bench_verdicts.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bv = _bench()


def test_lanes_are_blocks_of_the_usable_cpus() -> None:
    assert bv.lane_cpus([7, 1, 0, 3, 2, 5, 4, 6], 3, 2) == [[0, 1], [2, 3], [4, 5]]
    assert bv.lane_cpus([0, 1], 2, None) == [None, None]
    with pytest.raises(ValueError, match="need 6 CPUs"):
        bv.lane_cpus([0, 1, 2, 3], 3, 2)


def test_runs_are_dealt_round_robin_and_all_made_once() -> None:
    per_lane = [bv.lane_runs(20, 3, i) for i in range(3)]
    assert per_lane[1] == [1, 4, 7, 10, 13, 16, 19]
    assert sorted(r for lane in per_lane for r in lane) == list(range(20))


def test_tally_merges_lanes_per_profile() -> None:
    runs = [{"run": 1, "verdict": "queue", "confidence": 0.8, "loop_busy": 0.9, "q1_full": 0.1, "lane": 1,
             "wall_s": 30.0, "load_average_at_start": 2.0},
            {"run": 0, "verdict": "network", "cause": "receive", "confidence": 0.5, "loop_busy": 0.8,
             "q1_full": 0.0, "lane": 0, "wall_s": 20.0, "load_average_at_start": 2.5},
            {"run": 2, "verdict": "error: RuntimeError", "confidence": None, "lane": 0, "wall_s": 1.0}]
    r = bv.tally("hypotheses/queue-bound", 2, runs)
    assert (r["correct"], r["runs"]) == (1, 3)
    assert r["verdicts"] == {"error: RuntimeError": 1, "network": 1, "queue": 1}
    assert r["causes"] == ["receive"]
    assert (r["confidence_min"], r["confidence_median"]) == (0.5, 0.65)
    assert (r["loop_busy_min"], r["loop_busy_max"]) == (0.8, 0.9)
    assert [g["run"] for g in r["runs_detail"]] == [0, 1, 2]
    table = bv.markdown([r])
    assert "| queue-bound | 2 | 1/3 | error: RuntimeError 1, network 1, queue 1 (cause receive) | 0.50 / 0.65 |" in table


def test_a_ray_profile_is_recognised_by_its_queue_backend(tmp_path: Path) -> None:
    from simstream.profile import bundled_profiles

    b = bundled_profiles()
    assert bv.is_ray_profile(b["hypotheses/queue-bound-ray"], None)
    assert not bv.is_ray_profile(b["hypotheses/queue-bound"], None)
    assert bv.is_ray_profile(b["hypotheses/queue-bound"], "ray")


def test_ray_profiles_are_skipped_and_said_so_without_ray(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bv, "ray_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["bench_verdicts.py", "--runs", "1", "--load", "0",
                                     "--profile", "hypotheses/queue-bound-ray"])
    bv.main()
    out = capsys.readouterr().out
    assert "# skipped hypotheses/queue-bound-ray: its consumer runs on Ray and ray is not importable here" in out
    assert "# nothing to run" in out and "load average" in out


def test_lanes_that_do_not_fit_are_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["bench_verdicts.py", "--lanes", "1000", "--cpus-per-lane", "2"])
    with pytest.raises(SystemExit) as e:
        bv.main()
    assert e.value.code == 2
