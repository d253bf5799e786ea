"""The one clock: its epoch offset does not move with a preemption between its reads."""

from __future__ import annotations

import time

import pytest

from simstream import clock


def test_epoch_offset_takes_the_tightest_bracket(monkeypatch: pytest.MonkeyPatch) -> None:
    # true offset 1000.0; the first sample is descheduled for 0.15 s between its
    # perf_counter and wall-clock reads, the second is tight
    perf = iter([10.0, 10.15, 20.0, 20.000002])
    wall = iter([1010.15, 1020.000001])
    monkeypatch.setattr(time, "perf_counter", lambda: next(perf))
    monkeypatch.setattr(time, "time", lambda: next(wall))
    assert clock._epoch_offset(samples=2) == pytest.approx(1000.0, abs=1e-5)


def test_now_is_unix_time() -> None:
    before = time.time()
    t = clock.now()
    after = time.time()
    assert before - 0.005 <= t <= after + 0.005
