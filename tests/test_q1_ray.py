"""Q1 on Ray: sharded queue actors with production's protocol (round-robin put with a
"full" answer and backoff, sweeping get with a poll interval), no stale items across
runs, and `simstream consume --queue-backend ray` end to end on loopback.

One local Ray instance (1 CPU, no dashboard) serves the whole module; the end-to-end
test's consumer starts and stops its own.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from simstream.cli import main
from simstream.pipeline.config import consumer_config
from simstream.profile import ProfileError

ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: simstream[ray])")

from simstream.pipeline.q1 import Q1Closed, RayQ1, make_q1  # noqa: E402
from tests.peers import consume_while_emitting  # noqa: E402


@pytest.fixture(scope="module")
def ray_instance():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def q2(ray_instance):
    """Two shards of 3 items, 1 ms poll; closed after the test."""
    q = RayQ1(6, shards=2, poll_interval_ms=1.0)
    yield q
    q.close()


# --------------------------------------------------------------------------
# the protocol


def test_put_is_round_robin_and_each_shard_is_fifo(q2: RayQ1) -> None:
    for i in range(6):
        q2.put(i)
    assert (q2.maxsize, q2.capacity, q2.depth()) == (6, 3, 6)
    per_shard = ray.get([a.depth.remote() for a in q2._actors])
    assert per_shard == [3, 3]
    got = [q2.get(1.0) for _ in range(6)]
    assert sorted(got) == list(range(6))
    # round robin: even items on shard 0, odd on shard 1, each in put order
    assert [x for x in got if x % 2 == 0] == [0, 2, 4]
    assert [x for x in got if x % 2 == 1] == [1, 3, 5]
    assert (q2.stats.puts, q2.stats.gets, q2.stats.backpressure_events) == (6, 6, 0)
    assert q2.get(0) is None


def test_full_queue_answers_full_and_the_producer_backs_off(q2: RayQ1) -> None:
    for i in range(6):
        q2.put(i)
    calls = q2.stats.ipc_calls
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        q2.put("late", timeout_s=0.3)
    elapsed = time.monotonic() - t0
    events = q2.stats.backpressure_events
    # one event per sweep in which every shard said "full", one call per shard each
    assert events >= 2
    assert q2.stats.ipc_calls - calls == 2 * events
    # the producer backs off between sweeps (1 ms doubling to 10 ms): no more sweeps
    # than those sleeps allow in the time the put took (a busy-looping producer
    # would show far more; a loaded machine only fewer)
    first, cap = q2.BACKOFF_S
    slept, fit, backoff = 0.0, 1, first
    while slept + backoff <= elapsed:
        slept, fit, backoff = slept + backoff, fit + 1, min(2 * backoff, cap)
    assert events <= fit
    assert q2.stats.blocked_s >= 0.001 * (events - 1)
    assert q2.depth() == 6


def test_a_blocked_put_goes_through_after_a_get(q2: RayQ1) -> None:
    for i in range(6):
        q2.put(i)
    done = threading.Event()

    def producer() -> None:
        q2.put(6, timeout_s=30)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    deadline = time.monotonic() + 30
    while q2.stats.backpressure_events == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert q2.stats.backpressure_events >= 1 and not done.is_set()
    assert q2.get(5.0) == 0
    t.join(30)
    assert done.is_set()
    assert q2.depth() == 6 and q2.stats.puts == 7


def test_get_sweeps_every_shard_and_polls_between_empty_sweeps(q2: RayQ1) -> None:
    # an item on the last shard only: one sweep finds it, asking each shard once
    ray.get(q2._actors[1].put.remote("only"))
    assert q2.get(0) == "only"
    assert q2.stats.ipc_calls == 2
    # an empty queue: sweeps of 2 calls each, a poll sleep between them, then None
    q3 = RayQ1(4, shards=2, poll_interval_ms=20.0)
    try:
        t0 = time.monotonic()
        assert q3.get(0.1) is None
        took = time.monotonic() - t0
        sweeps = q3.stats.ipc_calls // 2
        assert q3.stats.ipc_calls % 2 == 0
        assert took >= 0.1
        # 100 ms at a 20 ms poll: about 6 sweeps; without the sleep it would be hundreds
        assert 2 <= sweeps <= 7
    finally:
        q3.close()


def test_large_batches_survive_the_object_store(q2: RayQ1) -> None:
    import numpy as np

    batch = np.arange(2 * 1 * 256 * 256, dtype=np.float32).reshape(2, 1, 256, 256)
    q2.put({"index": 7, "data": batch})
    got = q2.get(5.0)
    assert got["index"] == 7 and np.array_equal(got["data"], batch)


def _times(index: int):
    from simstream.pipeline.records import BatchTimes

    return BatchTimes(index=index, rank=0, seq=index, events=4, nbytes=0, t_arrival=0.0)


@pytest.mark.parametrize("items", ["ref", "value"])
def test_a_batch_crosses_by_reference_or_by_value(ray_instance, items: str) -> None:
    import numpy as np

    from simstream.pipeline.context import Q1Item

    q = RayQ1(2, shards=1, poll_interval_ms=1.0, items=items)
    try:
        batch = np.arange(4 * 64 * 64, dtype=np.float32).reshape(4, 1, 64, 64)
        q.put(Q1Item(host=_times(3), data=batch))
        batch[:] = -1  # the producer reuses its buffer once the put has returned
        q.put(Q1Item(host=_times(4), data=np.zeros(1, np.float32)))
        # what the shard holds: the reference only, or the whole array
        held = ray.get(q.actors[0].get.remote())
        assert isinstance(held.data, ray.ObjectRef) is (items == "ref")
        assert held.host.t_q1_put_end is not None
        got = q.get(5.0)
        assert got.host.index == 4 and isinstance(got.data, np.ndarray)
        assert np.array_equal(ray.get(held.data) if items == "ref" else held.data,
                              np.arange(4 * 64 * 64, dtype=np.float32).reshape(4, 1, 64, 64))
    finally:
        q.close()
    with pytest.raises(ValueError, match="items"):
        RayQ1.view([], 1, items="pickle")


# --------------------------------------------------------------------------
# lifecycle: nothing outlives its run


def test_no_stale_items_across_runs(ray_instance) -> None:
    first = RayQ1(8, shards=2, poll_interval_ms=1.0)
    for i in range(5):
        first.put(("run1", i))
    old = list(first._actors)
    first.close()
    with pytest.raises(Q1Closed):
        first.put(("run1", 99))
    assert first.depth() == 0 and first.get(0.05) is None
    # the shard actors are dead, not merely forgotten (ray.kill takes effect
    # asynchronously: a call sent just after it may still be served)
    for a in old:
        deadline = time.monotonic() + 30
        while True:
            try:
                ray.get(a.depth.remote(), timeout=30)
            except ray.exceptions.RayActorError:
                break
            assert time.monotonic() < deadline, "a shard actor outlived close() by 30 s"
            time.sleep(0.1)
    assert ray.util.list_named_actors(all_namespaces=True) == []
    second = RayQ1(8, shards=2, poll_interval_ms=1.0)
    try:
        assert second.depth() == 0
        assert second.get(0.05) is None
        second.put(("run2", 0))
        assert second.get(1.0) == ("run2", 0)
    finally:
        second.close()
    # a queue on a Ray it did not start leaves that Ray running
    assert ray.is_initialized()


def test_make_q1_builds_the_ray_backend(ray_instance) -> None:
    q = make_q1("ray", 5, shards=2, poll_interval_ms=1.0)
    try:
        assert isinstance(q, RayQ1) and (q.backend, q.shards, q.capacity, q.maxsize) == (
            "ray", 2, 3, 6)
        assert not q.owns_ray
    finally:
        q.close()


# --------------------------------------------------------------------------
# configuration (no Ray needed, but only meaningful with it)


def test_config_accepts_ray_and_checks_the_address() -> None:
    cfg = consumer_config(None, {"queue.backend": "ray", "ray.address": "auto"})
    assert (cfg.queue.backend, cfg.ray.address, cfg.ray.num_cpus) == ("ray", "auto", 1)
    cfg = consumer_config(None, section={"ray": {"address": "10.0.0.5:6379", "num_cpus": 2}})
    assert (cfg.ray.address, cfg.ray.num_cpus) == ("10.0.0.5:6379", 2)
    with pytest.raises(ProfileError, match=r"consumer\.ray\.address: 'nowhere' is not auto"):
        consumer_config(None, section={"ray": {"address": "nowhere"}})


def test_consume_bad_ray_address_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["consume", "--queue-backend", "ray", "--ray-address", "host-without-port",
              "--mode", "random", "--count", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "ray.address" in err and "Traceback" not in err


# --------------------------------------------------------------------------
# end to end


@pytest.mark.integration
def test_consume_with_ray_queue_accounts_for_every_message(tmp_path: Path, ray_instance) -> None:
    """`simstream emit` -> `simstream consume --queue-backend ray` (its own local Ray)
    on loopback: every delivered message received, queued through the actors, processed."""
    from simstream.runner.procs import free_port, is_listening

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "run"
    emit_log = tmp_path / "emit.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    consume = [sys.executable, "-m", "simstream", "consume", "--profile", "steady",
               "--queue-backend", "ray", "--idle-timeout", "2", "--device", "cpu",
               "--out", str(out), "--bind", url]
    emit = [sys.executable, "-m", "simstream", "emit", "--profile", "steady", "--url", url,
            "--role", "client", "--count", "20", "--log", str(emit_log), "--no-progress"]
    _, stderr = consume_while_emitting(consume, emit, [port], env, listen_s=90)
    delivered = [r for r in map(json.loads, emit_log.read_text().splitlines())
                 if r["outcome"] == "delivered"]
    assert len(delivered) == 20
    s = json.loads((out / "summary.json").read_text())
    assert s["queue_backend"] == "ray" and s["ray_address"]
    # the consumer started its own Ray (not this module's) and stopped it with the run
    assert s["ray_address"] != ray.get_runtime_context().gcs_address
    gcs_port = int(s["ray_address"].rpartition(":")[2])
    deadline = time.monotonic() + 30
    while is_listening(gcs_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_listening(gcs_port)
    assert (s["received"], s["processed"], s["quarantined"]) == (20, 20, 0)
    assert (s["lost"], s["duplicated"], s["reordered"]) == (0, 0, 0)
    assert s["q1"]["puts"] == s["q1"]["gets"] == 20
    with (out / "batches.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20
    for r in rows:
        assert float(r["t_q1_put_start"]) <= float(r["t_q1_put_end"]) <= float(r["t_q1_get_end"])
    with (out / "q1.csv").open() as f:
        assert len(list(csv.DictReader(f))) >= 1
    assert "Q1 ray" in stderr


def test_without_ray_the_backend_is_a_one_line_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from simstream.errors import UsageError

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UsageError, match=r"queue\.backend ray needs Ray: pip install 'simstream\[ray\]'"):
        make_q1("ray", 4)


def test_consume_unreachable_ray_address_exits_2_quickly(tmp_path: Path) -> None:
    """In a fresh process (this one already has Ray up, which a queue would reuse)."""
    from simstream.runner.procs import free_port

    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "simstream", "consume", "--queue-backend", "ray", "--ray-address",
         f"127.0.0.1:{port}", "--mode", "random", "--count", "1", "--device", "cpu",
         "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"cannot reach Ray at '127.0.0.1:{port}'" in r.stderr and "Traceback" not in r.stderr
    # Ray alone would retry for minutes; the probe answers within its 5 s
    assert time.monotonic() - t0 < 60


def test_a_ray_the_consumer_starts_runs_its_workers_at_its_own_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's default worker niceness (15) would let any other process on the host,
    the run's own emitter included, take the CPU from the consumer's actors first."""
    seen: list[dict] = []

    class FakeRay:
        def init(self, **kw):
            seen.append(kw)

    from simstream.pipeline import q1 as q1_module

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(q1_module, "_ray", FakeRay)
    q1_module.init_ray(None, 1)  # as RayQ1 and the fast layout on Ray start it
    assert seen[-1]["address"] == "local" and seen[-1]["_system_config"] == {"worker_niceness": 0}
    q1_module.init_ray("auto", 1)  # a cluster's own settings are left alone
    assert "_system_config" not in seen[-1]
