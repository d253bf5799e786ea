"""Q1: local and process backends (order, bounds, backpressure, no stale items) and the
occupancy sampler."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from simstream.pipeline.q1 import LocalQ1, ProcessQ1, Q1Closed, Q1Sampler, make_q1


def test_local_is_fifo_and_counts() -> None:
    q = LocalQ1(4)
    for i in range(4):
        q.put(i)
    assert q.depth() == 4
    assert [q.get(0) for _ in range(4)] == [0, 1, 2, 3]
    assert q.get(0) is None
    assert (q.stats.puts, q.stats.gets, q.stats.backpressure_events) == (4, 4, 0)


def test_local_full_put_is_backpressure() -> None:
    q = LocalQ1(2)
    q.put("a")
    q.put("b")
    with pytest.raises(TimeoutError):
        q.put("c", timeout_s=0)
    assert q.stats.backpressure_events == 1
    assert q.depth() == 2


def test_local_put_blocks_until_a_get() -> None:
    q = LocalQ1(1)
    q.put(0)
    entered = threading.Event()
    done = threading.Event()

    def producer() -> None:
        entered.set()
        q.put(1)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert entered.wait(5)
    # the put counts its backpressure event under the lock, then waits: once the
    # count is seen, the producer is blocked until a get (no timing involved)
    with q._cv:
        assert q._cv.wait_for(lambda: q.stats.backpressure_events == 1, timeout=5)
    assert not done.is_set()
    assert q.get(1.0) == 0
    assert done.wait(5)
    t.join(5)
    assert q.get(1.0) == 1
    assert q.stats.backpressure_events == 1
    assert q.stats.blocked_s > 0


def test_local_close_wakes_a_blocked_producer_and_drops_items() -> None:
    q = LocalQ1(1)
    q.put(0)
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            q.put(1)
        except Q1Closed as e:
            errors.append(e)

    t = threading.Thread(target=producer)
    t.start()
    q.close()
    t.join(5)
    assert len(errors) == 1 and q.depth() == 0
    assert q.get(0) is None


def test_a_new_local_queue_starts_empty() -> None:
    q = make_q1("local", 4)
    q.put("stale")
    q.close()
    assert make_q1("local", 4).get(0) is None


class FakeQ:
    maxsize = 10

    def __init__(self, depths: list[int]) -> None:
        self.depths = iter(depths)

    def depth(self) -> int:
        return next(self.depths)


def test_sampler_records_time_depth_and_size() -> None:
    seen = []
    clock = iter([1.0, 1.1, 1.2])
    s = Q1Sampler(FakeQ([0, 3, 10]), 0.1, lambda *a: seen.append(a), clock=lambda: next(clock))
    for _ in range(3):
        s.sample_once()
    assert seen == [(1.0, 0, 10), (1.1, 3, 10), (1.2, 10, 10)]


def test_sampler_thread_samples_until_stopped() -> None:
    seen = []
    got_three = threading.Event()

    def on(t, d, m):
        seen.append(d)
        if len(seen) >= 3:
            got_three.set()

    q = LocalQ1(4)
    q.put(1)
    s = Q1Sampler(q, 0.001, on).start()
    assert got_three.wait(5)
    s.stop()
    n = len(seen)
    assert set(seen) == {1}
    assert len(seen) == n  # nothing after stop


@pytest.mark.integration
class TestProcessBackend:
    def test_one_shard_is_fifo_and_items_are_copied(self) -> None:
        q = ProcessQ1(8, shards=1, poll_interval_ms=1)
        try:
            a = np.arange(12.0).reshape(3, 4)
            for i in range(5):
                q.put({"i": i, "data": a + i})
            assert q.depth() == 5
            got = [q.get(1.0) for _ in range(5)]
            assert [g["i"] for g in got] == list(range(5))
            np.testing.assert_array_equal(got[2]["data"], a + 2)
            assert q.get(0.01) is None
            assert q.stats.ipc_calls >= 10
        finally:
            q.close()

    def test_shards_deliver_everything_once(self) -> None:
        q = ProcessQ1(16, shards=4, poll_interval_ms=1)
        try:
            for i in range(16):
                q.put(i)
            got = [q.get(1.0) for _ in range(16)]
            assert sorted(got) == list(range(16))
            assert q.get(0.0) is None
        finally:
            q.close()

    def test_full_means_backpressure_with_backoff(self) -> None:
        q = ProcessQ1(4, shards=2, poll_interval_ms=1)
        try:
            for i in range(4):
                q.put(i)
            with pytest.raises(TimeoutError):
                q.put(99, timeout_s=0.02)
            assert q.stats.backpressure_events >= 1
            assert q.stats.blocked_s >= 0.001  # at least the first backoff
            assert q.depth() == 4
        finally:
            q.close()

    def test_blocked_put_proceeds_after_a_get(self) -> None:
        q = ProcessQ1(2, shards=2, poll_interval_ms=1)
        try:
            q.put(0)
            q.put(1)
            done = threading.Event()
            t = threading.Thread(target=lambda: (q.put(2), done.set()))
            t.start()
            assert not done.wait(0.05)
            assert q.get(1.0) in (0, 1)
            assert done.wait(5)
            t.join(5)
            assert sorted([q.get(1.0), q.get(1.0)]) in ([0, 2], [1, 2])
        finally:
            q.close()

    def test_no_stale_items_and_the_process_ends(self) -> None:
        q = ProcessQ1(4, shards=2)
        q.put("stale")
        q.close()
        assert q._proc.poll() is not None
        with pytest.raises(Q1Closed):
            q.put("late")
        q2 = ProcessQ1(4, shards=2, poll_interval_ms=1)
        try:
            assert q2.get(0.02) is None
            assert q2.depth() == 0
        finally:
            q2.close()

    def test_maxsize_is_split_over_shards(self) -> None:
        q = make_q1("process", 10, shards=4, poll_interval_ms=1)
        try:
            assert q.shards == 4 and q.capacity == 3 and q.maxsize == 12
        finally:
            q.close()


class _FakeRay:
    """Ray's init as it behaves when its raylet does not register in time, then does."""

    def __init__(self, failures: int, message: str) -> None:
        self.failures, self.message = failures, message
        self.inits = self.shutdowns = 0

    def init(self, **kwargs: object) -> None:
        self.inits += 1
        if self.inits <= self.failures:
            raise Exception(self.message)  # noqa: TRY002  (what Ray raises)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_local_ray_that_timed_out_starting_is_started_once_more() -> None:
    from simstream.pipeline.q1 import _init_local_or_join

    ray = _FakeRay(1, "The current node timed out during startup. This could happen ...")
    _init_local_or_join(ray, {}, local=True)
    assert (ray.inits, ray.shutdowns) == (2, 1)
    # a second time-out, a cluster that timed out, or any other failure is not retried
    ray = _FakeRay(2, "The current node timed out during startup.")
    with pytest.raises(Exception, match="timed out during startup"):
        _init_local_or_join(ray, {}, local=True)
    assert ray.inits == 2
    for local, message in ((False, "The current node timed out during startup."),
                           (True, "something else")):
        ray = _FakeRay(1, message)
        with pytest.raises(Exception, match=message):
            _init_local_or_join(ray, {}, local=local)
        assert ray.inits == 1
