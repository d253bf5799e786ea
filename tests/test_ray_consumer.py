"""The consumer on Ray actors: receiver actors (one per bound address), Q1 shard
actors, inference actors; one run directory merged by the driver.

The relay and the striped records are tested without Ray; the actors end to end
on a local Ray instance that the consumer starts and stops itself.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.cli import main
from simstream.pipeline.config import consumer_config
from simstream.pipeline.engine import Finished
from simstream.pipeline.ray_consumer import (
    RecordRelay,
    _end_reason,
    _merge_q1,
    _merge_receivers,
    replay,
)
from simstream.pipeline.records import BatchTimes, RunRecords
from simstream.profile import ProfileError
from tests.peers import consume_while_emitting


def _fin(index: int, t: float, events: int = 2) -> Finished:
    return Finished(
        index=index, meta=None, events=events, output=np.zeros(events), buffer=index % 2,
        t_h2d_start=t, t_h2d_end=t + 0.001, t_compute_start=t + 0.001, t_compute_end=t + 0.003,
        t_d2h_start=t + 0.003, t_d2h_end=t + 0.004,
    )


def _host(index: int, rank: int, seq: int, t: float) -> BatchTimes:
    return BatchTimes(index, rank, seq, 2, 1000, t, t, t + 0.0005, t + 0.0005, t + 0.0006,
                      t + 0.0007, t + 0.0008)


def _feed(target: Any, messages: list[tuple[int, int, int, float]], quarantined: set[int]) -> None:
    for index, rank, seq, t in messages:
        target.arrival(t)
        target.sequence(index, rank, seq)
        if index in quarantined:
            target.quarantine(index, b"x" * 10, "codec: bad", nbytes=10, t_arrival=t,
                              rank=rank, seq=seq)
        else:
            target.batch_done(_host(index, rank, seq, t), _fin(index, t + 0.001))


_ACCOUNTING = ("received", "processed", "quarantined", "lost", "duplicated", "reordered",
               "batches", "samples", "bytes", "quarantine_reasons", "per_rank",
               "gpu_busy_fraction", "stage_median_ms")


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=40))
def test_relayed_records_equal_direct_records(tmp_path_factory: pytest.TempPathFactory,
                                              msgs: list[tuple[int, bool]]) -> None:
    """What an actor relays and the driver replays gives the summary direct calls give."""
    next_seq: dict[int, int] = {}
    messages = []
    quarantined = set()
    for i, (rank, bad) in enumerate(msgs):
        seq = next_seq.get(rank, 0)
        next_seq[rank] = seq + 1
        messages.append((i, rank, seq, 1000.0 + i * 0.01))
        if bad:
            quarantined.add(i)
    direct = RunRecords(tmp_path_factory.mktemp("direct"))
    _feed(direct, messages, quarantined)
    relayed = RunRecords(tmp_path_factory.mktemp("relayed"))
    relay = RecordRelay()
    _feed(relay, messages, quarantined)
    assert relay.batches == len(msgs) - len(quarantined)
    replay(relayed, relay.drain())
    assert relay.drain() == []
    a, b = direct.close({}), relayed.close({})
    assert {k: a[k] for k in _ACCOUNTING} == {k: b[k] for k in _ACCOUNTING}
    for name in ("messages.csv", "batches.csv", "gpu.csv"):
        assert (direct.dir / name).read_text() == (relayed.dir / name).read_text()


def test_replay_refuses_what_is_not_a_record_call(tmp_path: Path) -> None:
    records = RunRecords(tmp_path)
    with pytest.raises(ValueError, match="not a record event: 'close'"):
        replay(records, [("close", ({},), {})])
    records.close({})


def test_relay_keeps_only_the_quarantine_head(tmp_path: Path) -> None:
    from simstream.pipeline.records import QUARANTINE_HEAD_BYTES

    relay = RecordRelay()
    relay.quarantine(0, bytes(QUARANTINE_HEAD_BYTES + 5), "oversize: big", nbytes=99, t_arrival=1.0)
    (name, args, kwargs), = relay.drain()
    assert name == "quarantine" and len(args[1]) == QUARANTINE_HEAD_BYTES
    assert kwargs == {"nbytes": 99, "t_arrival": 1.0, "rank": None, "seq": None}


def test_striped_receivers_feed_the_ledger_in_their_own_order(tmp_path: Path) -> None:
    """Receiver 0 numbers 0, 2, 4...; receiver 1 numbers 1, 3, 5... A receiver that
    got fewer messages does not hold back the other's accounting, and a seq that
    really arrived out of order on one receiver still counts as reordered."""
    records = RunRecords(tmp_path, streams=2)
    # receiver 0 carries rank 0: seqs 0, 2, 1 (one late arrival); receiver 1 rank 1: 0
    for index, rank, seq in ((0, 0, 0), (2, 0, 2), (4, 0, 1), (1, 1, 0)):
        records.arrival(float(index))
        records.sequence(index, rank, seq)
    # everything was fed to the ledger as it came: nothing waits for a hole
    assert records._pending_seq == {}
    s = records.close({})
    assert (s["received"], s["lost"], s["duplicated"], s["reordered"]) == (4, 0, 0, 1)


def test_gpu_busy_is_the_mean_over_devices(tmp_path: Path) -> None:
    records = RunRecords(tmp_path)
    # device 0 computes 2 ms of every 10 ms; device 1 6 ms of the same 10 ms
    for i, t in enumerate((0.0, 0.01)):
        records.arrival(t)
        records.sequence(i, 0, i)
        records.batch_done(_host(i, 0, i, t), _fin(i, t), device=0)
    fin = dataclasses.replace(_fin(2, 0.0), t_compute_start=0.004, t_compute_end=0.010)
    records.arrival(0.0)
    records.sequence(2, 1, 0)
    records.batch_done(_host(2, 1, 0, 0.0), fin, device=1)
    s = records.close({})
    wall = 0.014  # first arrival 0.0 .. last finish 0.01 + 0.004
    assert s["gpu_busy_by_device"] == pytest.approx({"0": 0.004 / wall, "1": 0.006 / wall})
    assert s["gpu_busy_fraction"] == pytest.approx(0.005 / wall)
    with (tmp_path / "gpu.csv").open() as f:
        devices = {r["device"] for r in csv.DictReader(f)}
    assert devices == {"0", "1"}


def test_merged_counters() -> None:
    q = _merge_q1([{"puts": 3, "gets": 0, "backpressure_events": 1, "blocked_s": 0.5,
                    "put_s": 0.3, "get_s": 0.0, "ipc_calls": 4},
                   {"puts": 0, "gets": 3, "backpressure_events": 0, "blocked_s": 0.0,
                    "put_s": 0.0, "get_s": 0.6, "ipc_calls": 9}])
    assert (q.puts, q.gets, q.backpressure_events, q.ipc_calls) == (3, 3, 1, 13)
    assert q.as_dict()["get_mean_ms"] == pytest.approx(200.0)
    rx = _merge_receivers([None, {"messages": 2, "bytes": 10, "errors": ["a"]},
                           {"messages": 3, "bytes": 5, "errors": ["b"]}])
    assert rx == {"messages": 5, "bytes": 15, "errors": ["a", "b"]}
    # the receivers' own timing: times add up, shares are each receiver's, averaged
    rx = _merge_receivers([{"bytes": 100, "wait_s": 1.0, "wakeups": 4, "busy_share": 0.9, "span_s": 10.0,
                            "rx_queue_bytes_max": 7, "bytes_per_wakeup": 25.0},
                           {"bytes": 50, "wait_s": 5.0, "wakeups": 1, "busy_share": 0.5, "span_s": None,
                            "rx_queue_bytes_max": None, "bytes_per_wakeup": 50.0}])
    assert rx["wait_s"] == 6.0 and rx["wakeups"] == 5 and rx["busy_share"] == pytest.approx(0.7)
    assert rx["span_s"] == 10.0 and rx["rx_queue_bytes_max"] == 7 and rx["bytes_per_wakeup"] == 30.0
    assert _merge_receivers([None]) is None
    assert _end_reason(["idle", "idle"]) == "idle"
    assert _end_reason(["stopped", "idle"]) == "idle,stopped"


# --------------------------------------------------------------------------
# configuration


def test_several_bind_addresses_need_the_ray_actors() -> None:
    two = ["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"]
    cfg = consumer_config(None, {"bind": two, "queue.backend": "ray"})
    assert cfg.urls == two and cfg.url == two[0] and cfg.ray.actors
    with pytest.raises(ProfileError, match="consumer: bind lists 2 addresses: one receiver per "
                                           "address needs queue.backend ray"):
        consumer_config(None, {"bind": two})
    with pytest.raises(ProfileError, match="needs queue.backend ray with ray.actors true"):
        consumer_config(None, {"bind": two, "queue.backend": "ray", "ray.actors": False})
    with pytest.raises(ProfileError, match=r"consumer.bind: 'tcp://127.0.0.1:5001' is listed twice"):
        consumer_config(None, {"bind": [two[0], two[0]], "queue.backend": "ray"})
    with pytest.raises(ProfileError, match="consumer.bind: an empty list binds nothing"):
        consumer_config(None, {"bind": [], "queue.backend": "ray"})
    assert consumer_config(None, {"bind": [two[0]]}).bind == two[0]


def test_cli_two_binds_without_ray_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["consume", "--bind", "tcp://127.0.0.1:5001", "--bind", "tcp://127.0.0.1:5002"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "bind lists 2 addresses" in err and "Traceback" not in err


def test_an_injected_engine_cannot_go_into_actors(tmp_path: Path) -> None:
    from simstream.pipeline.consumer import run_consumer

    cfg = consumer_config(None, {"queue.backend": "ray"})
    with pytest.raises(ValueError, match="set ray.actors false"):
        run_consumer(cfg, tmp_path, engine=object())


# --------------------------------------------------------------------------
# end to end on a local Ray instance


@pytest.mark.integration
def _run_over_two_addresses(tmp_path: Path, name: str, consumer_yaml: str
                            ) -> tuple[str, dict[str, Any], Path, list[str]]:
    """An emitter of 4 ranks, 25 messages each, spread over two addresses, into
    `simstream consume` binding both (CPU, a 1 ms synthetic model, ``consumer_yaml``
    added to the consumer section): its stdout, summary, run directory and the
    addresses, once the emit log shows all 100 delivered."""
    from simstream.runner.procs import free_ports

    ports = free_ports(2)
    urls = [f"tcp://127.0.0.1:{p}" for p in ports]
    profile = tmp_path / f"{name}.yaml"
    profile.write_text(
        f"name: {name}\nseed: 3\n"
        "source: {batch_size: 2, shape: [1, 32, 32], dtype: float32, format: hdf5,"
        " total_events: null, pool: 4}\n"
        f"transport: {{kind: zmq, role: client, urls: {json.dumps(urls)}, ranks: 4}}\n"
        "timeline: {phases: [{name: steady, rate_hz: 200}]}\n"
        "stop: {messages: 25}\n"
        "consumer:\n  model: {kind: synthetic, compute_ms: 1}\n" + consumer_yaml
    )
    out = tmp_path / "run"
    emit_log = tmp_path / "emit.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    consume = [sys.executable, "-m", "simstream", "consume", "--profile", str(profile),
               "--bind", urls[0], "--bind", urls[1], "--idle-timeout", "3", "--device", "cpu",
               "--out", str(out)]
    emit = [sys.executable, "-m", "simstream", "emit", "--profile", str(profile),
            "--log", str(emit_log), "--no-progress"]
    stdout, _ = consume_while_emitting(consume, emit, ports, env)
    delivered = [r for r in map(json.loads, emit_log.read_text().splitlines())
                 if r["outcome"] == "delivered"]
    assert len(delivered) == 100
    return stdout, json.loads((out / "summary.json").read_text()), out, urls


def test_two_receiver_actors_one_inference_actor_account_for_every_message(
        tmp_path: Path) -> None:
    """An emitter with 4 ranks spread over two addresses -> two receiver actors
    (one per address) -> Q1 shard actors -> one inference actor (CPU); the driver's
    run directory accounts for every delivered message, per rank."""
    pytest.importorskip("ray", reason="ray is not installed (optional extra: simstream[ray])")

    stdout, s, out, urls = _run_over_two_addresses(
        tmp_path, "two-receivers", "  queue: {maxsize: 8, backend: ray, shards: 2}\n")
    assert (s["received"], s["processed"], s["quarantined"]) == (100, 100, 0)
    assert (s["lost"], s["duplicated"]) == (0, 0)
    # one emitter run: one epoch per rank, relayed from the receiver actors
    assert {r: (v["max_seq"], v["lost"], len(v["epochs"])) for r, v in s["per_rank"].items()
            } == {str(r): (24, 0, 1) for r in range(4)}
    assert s["q1"]["puts"] == s["q1"]["gets"] == 100
    assert s["urls"] == urls and s["ray"]["actors"] is True
    rx = s["ray"]["receivers"]
    assert [r["url"] for r in rx] == urls
    # ranks 0 and 2 go to the first address, 1 and 3 to the second
    assert [r["puts"] for r in rx] == [50, 50]
    assert [i["batches"] for i in s["ray"]["inference"]] == [100]
    # the inference actor's batches come out of the object store: its engine keeps and
    # reserves host buffers for the batches in flight (and one being parsed), not for
    # Q1's, held elsewhere
    cfg = s["config"]
    assert s["host_pool"]["allocations"] == s["host_pool"]["reserved"] == cfg["buffers"] + 1
    with (out / "messages.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_receiver = {int(r["index"]) % 2: set() for r in rows}
    for r in rows:
        by_receiver[int(r["index"]) % 2].add(int(r["rank"]))
    assert by_receiver == {0: {0, 2}, 1: {1, 3}}
    with (out / "batches.csv").open() as f:
        for r in csv.DictReader(f):
            assert float(r["t_q1_put_start"]) <= float(r["t_q1_put_end"]) <= float(r["t_q1_get_end"])
    assert "potential data starvation" not in stdout


def test_fast_layout_on_ray_receives_inside_the_inference_actor(tmp_path: Path) -> None:
    """layout fast with queue.backend ray: no receiver or shard actors; the one
    inference actor binds both addresses, receives and parses in its own threads
    into an in-process Q1; the driver's run directory accounts for every message."""
    pytest.importorskip("ray", reason="ray is not installed (optional extra: simstream[ray])")

    _, s, out, urls = _run_over_two_addresses(
        tmp_path, "fast-on-ray", "  layout: fast\n  queue: {maxsize: 8, backend: ray}\n")
    assert (s["received"], s["processed"], s["quarantined"]) == (100, 100, 0)
    assert (s["lost"], s["duplicated"]) == (0, 0)
    assert {r: (v["max_seq"], v["lost"]) for r, v in s["per_rank"].items()
            } == {str(r): (24, 0) for r in range(4)}
    assert s["q1"]["puts"] == s["q1"]["gets"] == 100 and s["q1"]["ipc_calls"] == 0
    ray_facts = s["ray"]
    assert (ray_facts["layout"], ray_facts["receivers"], ray_facts["q1_shards"]) == ("fast", [], 0)
    [actor] = ray_facts["inference"]
    assert (actor["urls"], actor["batches"], actor["puts"]) == (urls, 100, 100)
    # the actor's receivers, one per address, as the in-process fast layout records them
    rx = s["receiver"]
    assert rx["messages"] == 100 and len(rx["per_receiver"]) == 2
    assert [r["messages"] for r in rx["per_receiver"]] == [50, 50]
    assert s["end_reason"] == "idle"
    # the actor's engine's host buffers: one taken per message, every one given back
    pool, cfg = s["host_pool"], s["config"]
    assert pool["allocations"] - pool["reserved"] + pool["reuses"] == pool["releases"] >= 100
    # reserved at warm-up: Q1, the parser slots, the engine's buffers, one per receiver
    assert pool["reserved"] == (cfg["queue"]["maxsize"] + 2 * cfg["parser_threads"]
                                + cfg["buffers"] + 1 + 2)
    with (out / "batches.csv").open() as f:
        for r in csv.DictReader(f):
            assert float(r["t_q1_put_start"]) <= float(r["t_q1_put_end"]) <= float(r["t_q1_get_end"])


def test_fast_layout_on_ray_needs_an_address_per_inference_actor(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed (optional extra: simstream[ray])")
    from simstream.errors import UsageError
    from simstream.pipeline.consumer import run_consumer

    cfg = consumer_config(None, {"layout": "fast", "queue.backend": "ray", "device": "cpu",
                                 "ray": {"inference_actors": 2, "num_cpus": 1},
                                 "model": {"kind": "noop"}})
    with pytest.raises(UsageError, match="2 inference actors receive for themselves and need "
                                         "an address each, 1 given"):
        run_consumer(cfg, tmp_path / "run")


@pytest.mark.integration
def test_simstream_run_fans_the_ranks_in_over_every_address(tmp_path: Path) -> None:
    """`simstream run` with two addresses in the profile and receiver actors: each
    address gets a free port, a receiver actor binds each, the emitter spreads its
    ranks over both, two inference actors share Q1; the report reads the merged
    run directory."""
    pytest.importorskip("ray", reason="ray is not installed (optional extra: simstream[ray])")
    from simstream.runner.core import run_profile

    profile = tmp_path / "fan-in.yaml"
    profile.write_text(
        "name: fan-in\nseed: 5\n"
        "source: {batch_size: 2, shape: [1, 16, 16], dtype: float32, format: hdf5,"
        " total_events: null, pool: 4}\n"
        "transport: {kind: zmq, role: client, urls: [tcp://127.0.0.1:1, tcp://127.0.0.1:2],"
        " ranks: 2}\n"
        "timeline: {phases: [{name: steady, rate_hz: 200}]}\n"
        "stop: {messages: 20}\n"
        "consumer:\n  model: {kind: synthetic, compute_ms: 1}\n  device: cpu\n"
        "  queue: {maxsize: 8, backend: ray, shards: 2}\n  ray: {inference_actors: 2}\n"
    )
    result = run_profile(profile, tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (s["received"], s["processed"], s["lost"], s["duplicated"]) == (40, 40, 0, 0)
    assert len(s["urls"]) == 2 and s["urls"][0] != s["urls"][1]
    assert [r["puts"] for r in s["ray"]["receivers"]] == [20, 20]
    # two inference actors shared the batches; each has its own GPU (here CPU) busy share
    inf = s["ray"]["inference"]
    assert [i["number"] for i in inf] == [0, 1] and sum(i["batches"] for i in inf) == 40
    assert set(s["gpu_busy_by_device"]) <= {"0", "1"}
    assert s["gpu_busy_fraction"] == pytest.approx(
        sum(s["gpu_busy_by_device"].values()) / len(s["gpu_busy_by_device"]))
    from simstream.diagnose.verdict import VERDICTS

    assert result.report["verdict"] in VERDICTS
    assert result.report["evidence"]["messages_received"] == 40


@pytest.mark.integration
def test_actors_that_do_not_start_in_time_are_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inference actor that cannot start (a cluster short of GPUs, a slow model
    build) ends the run with a RuntimeError saying so, and nothing is left running."""
    pytest.importorskip("ray", reason="ray is not installed (optional extra: simstream[ray])")
    import ray

    from simstream.pipeline import ray_consumer
    from simstream.runner.procs import free_port

    monkeypatch.setattr(ray_consumer, "START_TIMEOUT_S", 0.001)
    cfg = consumer_config(None, {"queue.backend": "ray", "device": "cpu",
                                 "bind": f"tcp://127.0.0.1:{free_port()}"})
    with pytest.raises(RuntimeError, match="the consumer's actors did not start in time"):
        ray_consumer.run_ray_consumer(cfg, tmp_path / "run")
    assert not ray.is_initialized()  # the run's own Ray was stopped with it
