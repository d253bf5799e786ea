"""The emitter engine in virtual time: in-memory fake senders, MockClock, exact times."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from simstream.emitter.engine import RankStats, run_emitter
from simstream.emitter.log import LOG_KEYS
from simstream.profile import parse_profile
from simstream.schedule import Schedule
from simstream.transport import WouldBlockAtClose

OVERHEAD = 9  # framing bytes the fake adds, like a ZMTP long frame header


@dataclass
class Message:
    seq: int
    events: int
    payload: bytes


class FakeFactory:
    """Payloads of a fixed size; the first bytes mimic the HDF5 signature."""

    def __init__(self, nbytes: int, events: int = 8) -> None:
        self.nbytes = nbytes
        self.events = events
        self.buffer = b"\x89HDF\r\n\x1a\n" + bytes(max(0, nbytes - 8))
        self.calls: list[int] = []

    def message(self, seq: int) -> Message:
        self.calls.append(seq)
        return Message(seq, self.events, self.buffer[: self.nbytes])


@dataclass
class Report:
    t_first_byte: float | None
    t_last_byte: float | None
    wire_bytes: int
    socket_wait_s: float
    outcome: str
    error: str | None = None


@dataclass
class FakeSender:
    """Sends in chunks through the gate; a link of ``link_bytes_per_s`` (None: instant)."""

    url: str = ""
    link_bytes_per_s: float | None = None
    hang: bool = False
    fail_seq_payloads: set[int] = field(default_factory=set)
    sent: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, float]] = field(default_factory=list)
    gate_calls: list[tuple[float, int]] = field(default_factory=list)
    n_calls: int = 0
    closing: bool = False  # close_when_blocked: a send that would wait is abandoned
    wait_scope: Any = None

    async def send_message(self, payload: Any, *, gate: Any = None, chunk_bytes: int,
                           cut_after_bytes: int | None = None) -> Report:
        self.n_calls += 1
        if self.hang:
            await trio.sleep_forever()
        if self.n_calls in self.fail_seq_payloads:
            raise ConnectionResetError("peer went away")
        total = len(payload) + OVERHEAD
        limit = total if cut_after_bytes is None else cut_after_bytes
        sent = 0
        t_first = None
        while sent < limit:
            n = min(chunk_bytes, limit - sent)
            if gate is not None:
                await gate(n)
                self.gate_calls.append((trio.current_time(), n))
            if t_first is None:
                t_first = trio.current_time()
            if self.link_bytes_per_s:
                # the link takes time: the "kernel" would make the sender wait
                if self.closing:
                    raise WouldBlockAtClose("full at the close")
                with trio.CancelScope() as self.wait_scope:
                    await trio.sleep(n / self.link_bytes_per_s)
                if self.wait_scope.cancelled_caught:
                    raise WouldBlockAtClose("the close came while waiting")
            sent += n
        outcome = "delivered" if cut_after_bytes is None else "cut"
        self.sent.append({"payload": bytes(payload), "t_first": t_first,
                          "t_last": trio.current_time(), "wire": sent, "outcome": outcome})
        return Report(t_first, trio.current_time(), sent, 0.0, outcome)

    async def reset(self) -> None:
        self.events.append(("reset", trio.current_time()))

    def close_when_blocked(self) -> None:
        self.closing = True
        if self.wait_scope is not None:
            self.wait_scope.cancel()

    async def close(self, delay_s: float = 0.0) -> None:
        await trio.sleep(delay_s)
        self.events.append(("close", trio.current_time()))

    async def reconnect(self) -> None:
        self.events.append(("reconnect", trio.current_time()))


class FakeTransport:
    """A sender factory handing out FakeSenders (one per rank, kept for inspection)."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.senders: list[FakeSender] = []
        self.opened: list[tuple[str, str, str]] = []

    def __call__(self, kind: str, role: str, url: str, **_: Any) -> Any:
        transport = self

        class _CM:
            async def __aenter__(self) -> FakeSender:
                s = FakeSender(url=url, **transport.kw)
                transport.senders.append(s)
                transport.opened.append((kind, role, url))
                return s

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _CM()


def profile(**sections: Any) -> Any:
    data: dict[str, Any] = {"name": "t", "seed": 3,
                            "source": {"shape": [1, 4, 4], "total_events": None}}
    for k, v in sections.items():
        data[k] = v
    return parse_profile(data)


def emit(prof: Any, *, transport: FakeTransport | None = None, nbytes: int = 1000,
         drain_timeout_s: float | None = 10.0, during: Any = None,
         cancel_at: float | None = None) -> tuple[list[dict[str, Any]], Any, FakeTransport]:
    """Run the engine under MockClock; returns (records, result, transport)."""
    transport = transport or FakeTransport()
    records: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    stats: list[RankStats] = []

    async def main() -> None:
        async with trio.open_nursery() as n:
            if during is not None:
                n.start_soon(during, stats, transport)
            with trio.CancelScope() as scope:
                if cancel_at is not None:
                    scope.deadline = cancel_at
                out["result"] = await run_emitter(
                    prof, sender_factory=transport,
                    message_factory=lambda p, r: FakeFactory(nbytes),
                    on_record=records.append, wall_clock=trio.current_time,
                    drain_timeout_s=drain_timeout_s, messages_in_thread=False,
                    stats_out=stats)
            out["end"] = trio.current_time()
            out["cancelled"] = scope.cancelled_caught

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return records, out, transport


def test_records_follow_the_contract_and_paced_phases_hit_exact_times() -> None:
    prof = profile(
        timeline={"repeat": True, "phases": [
            {"name": "burst", "duration_s": 1.0, "rate_hz": 10},
            {"name": "quiet", "duration_s": 0.5, "rate_hz": 0}]},
        stop={"duration_s": 3.0})
    records, out, _ = emit(prof)
    assert all(tuple(r) == LOG_KEYS for r in records)
    times = [r["t_first_byte"] for r in records]
    expected = [k / 10 for k in range(10)] + [1.5 + k / 10 for k in range(10)]
    assert times == pytest.approx(expected, abs=1e-12)
    assert [r["t_sched"] for r in records] == pytest.approx(expected, abs=1e-12)
    assert [r["seq"] for r in records] == list(range(20))
    assert {r["phase"] for r in records} == {"burst"}
    assert all(r["outcome"] == "delivered" and r["nbytes"] == 1000 for r in records)
    assert all(r["wire_bytes"] == 1000 + OVERHEAD for r in records)
    # the run lasts its duration: the quiet tail 2.5..3.0 included
    assert out["end"] == 3.0


def test_token_bucket_paces_a_large_message_across_its_length() -> None:
    # 8 Mbit/s = 1e6 B/s; the chunk is 4096 bytes, the bucket holds 4 of them
    nbytes = 1_000_000 - OVERHEAD + 4 * 4096
    prof = profile(network={"bandwidth_mbps": 8}, stop={"messages": 1})
    records, _, transport = emit(prof, nbytes=nbytes)
    (rec,) = records
    assert rec["t_first_byte"] == 0.0
    assert rec["t_last_byte"] == pytest.approx(1.0, rel=1e-9)
    calls = transport.senders[0].gate_calls
    assert len(calls) == math.ceil((nbytes + OVERHEAD) / 4096)
    # the bucket's 4 chunks go at once; every later chunk waits for exactly its own
    # bytes' worth of tokens
    assert [t for t, _ in calls[:4]] == [0.0] * 4
    for (t_prev, _), (t, n) in zip(calls[3:], calls[4:], strict=False):
        assert t - t_prev == pytest.approx(n / 1e6, rel=1e-6)


def test_latency_shifts_the_schedule_without_serialising_sends() -> None:
    # 10 messages of 10 MB on a 1 GB/s link, 20 ms latency: 20 ms + 10 x 10 ms
    prof = profile(network={"latency_ms": 20}, stop={"messages": 10})
    records, _, _ = emit(prof, transport=FakeTransport(link_bytes_per_s=1e9),
                         nbytes=10_000_000 - OVERHEAD)
    assert records[0]["t_first_byte"] == pytest.approx(0.02)
    assert records[-1]["t_last_byte"] == pytest.approx(0.02 + 10 * 0.01)


def test_jitter_draws_match_the_pure_schedule() -> None:
    prof = profile(network={"latency_ms": 5, "jitter_ms": 3, "jitter_distribution": "pareto"},
                   timeline={"phases": [{"rate_hz": 50}]}, stop={"messages": 40})
    records, _, _ = emit(prof)
    sched = Schedule(prof, 0)
    plan = [sched.next() for _ in range(40)]
    assert [r["t_first_byte"] for r in records] == pytest.approx(
        [p.t_sched for p in plan], abs=1e-12)
    delays = [p.delay_s for p in plan]
    assert len(set(delays)) > 30 and min(delays) >= 0
    firsts = [r["t_first_byte"] for r in records]
    assert firsts == sorted(firsts)  # order preserved


def test_stall_duplicate_reset_truncate_slow_close() -> None:
    prof = profile(
        timeline={"phases": [{"rate_hz": 10}]},
        faults=[{"kind": "stall", "at_s": 0.5, "duration_ms": 300},
                {"kind": "duplicate", "at_message": 2},
                {"kind": "reset", "at_message": 3},
                {"kind": "truncate", "at_message": 4, "fraction": 0.25},
                {"kind": "slow_close", "at_message": 7, "duration_ms": 40}],
        stop={"messages": 9})
    records, _, transport = emit(prof)
    sender = transport.senders[0]
    by = [(r["seq"], r["outcome"], tuple(r["faults"])) for r in records]
    assert by == [
        (0, "delivered", ()), (1, "delivered", ()), (2, "delivered", ()),
        (2, "delivered", ("duplicate",)), (3, "cut", ("reset",)), (4, "cut", ("truncate",)),
        (5, "delivered", ("stall",)), (6, "delivered", ()),
        (7, "delivered", ("slow_close",)), (8, "delivered", ()),
    ]
    firsts = [r["t_first_byte"] for r in records]
    # the stall at 0.5 s moves message 5 and everything after by 0.3 s
    assert firsts[6:] == pytest.approx([0.8, 0.9, 1.0, 1.1])
    assert firsts[3] == firsts[2] == pytest.approx(0.2)
    total = 1000 + OVERHEAD
    reset_rec, trunc_rec = records[4], records[5]
    assert 0 < reset_rec["wire_bytes"] < total and reset_rec["t_last_byte"] is None
    assert trunc_rec["wire_bytes"] == math.floor(1000 * 0.25)  # a share of the payload
    # cuts are the transport's own RST; the slow close lingers 40 ms, then reconnects
    assert sender.events == [("reconnect", pytest.approx(1.0 + 0.04))]


def test_stall_is_silence_even_when_the_link_is_backlogged() -> None:
    # as fast as possible on a 1 MB/s link: 1000-byte messages, one every ~1 ms
    prof = profile(faults=[{"kind": "stall", "at_message": 5, "duration_ms": 100}],
                   stop={"messages": 8})
    records, _, _ = emit(prof, transport=FakeTransport(link_bytes_per_s=1e6),
                         nbytes=1000 - OVERHEAD)
    gap = records[5]["t_first_byte"] - records[4]["t_last_byte"]
    assert gap == pytest.approx(0.1)
    assert records[5]["faults"] == ["stall"]


def test_corrupt_flips_a_copy_and_keeps_the_pooled_buffer() -> None:
    factory = FakeFactory(64)
    pristine = bytes(factory.buffer)
    prof = profile(faults=[{"kind": "corrupt", "at_message": 1, "nbytes": 3}],
                   stop={"messages": 3})
    transport = FakeTransport()

    async def main() -> None:
        await run_emitter(prof, sender_factory=transport, message_factory=lambda p, r: factory,
                          wall_clock=trio.current_time, messages_in_thread=False)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    sent = [s["payload"] for s in transport.senders[0].sent]
    assert sent[0] == sent[2] == pristine[:64]
    diff = [i for i in range(64) if sent[1][i] != pristine[i]]
    assert len(diff) == 3 and diff[0] < 4  # the first flip hits the signature
    assert factory.buffer == pristine


def test_sndhwm_queues_exactly_sndhwm_then_blocks() -> None:
    prof = profile(transport={"sndhwm": 3}, timeline={"phases": [{"rate_hz": 100}]},
                   stop={"duration_s": 1.0})
    seen: dict[str, Any] = {}

    async def during(stats: list[RankStats], transport: FakeTransport) -> None:
        await trio.sleep_until(0.5)
        seen["queued"] = stats[0].queued
        seen["calls"] = transport.senders[0].n_calls

    records, out, _ = emit(prof, transport=FakeTransport(hang=True), drain_timeout_s=0.5,
                           during=during)
    assert seen == {"queued": 3, "calls": 1}
    # 1 in flight + 3 queued + 1 blocked producer; every one recorded as lost
    assert sorted(r["seq"] for r in records) == [0, 1, 2, 3, 4]
    assert all(r["outcome"] == "lost" and r["t_first_byte"] is None for r in records)
    blocked = {r["seq"]: r["blocked_s"] for r in records}
    # waited from its slot to the end of the drain after the stop
    assert blocked[4] == pytest.approx(1.0 + 0.5 - 0.04)
    assert blocked[0] == blocked[1] == blocked[2] == blocked[3] == 0.0
    assert out["end"] == pytest.approx(1.5)  # the stop, plus the drain timeout


def test_blocked_time_is_recorded_when_the_link_is_slower_than_the_offer() -> None:
    # 100 Hz offered, each send takes 20 ms: the queue fills and the producer waits
    prof = profile(transport={"sndhwm": 2}, timeline={"phases": [{"rate_hz": 100}]},
                   stop={"messages": 12})
    records, _, _ = emit(prof, transport=FakeTransport(link_bytes_per_s=50_000),
                         nbytes=1000 - OVERHEAD)
    ordered = sorted(records, key=lambda r: r["seq"])
    blocked = [r["blocked_s"] for r in ordered]
    # the writer takes one every 20 ms: once the queue is full each send waits one slot
    assert blocked[:5] == [0.0] * 5
    assert blocked[6:] == pytest.approx([0.02] * 6)
    late = [r["t_first_byte"] - r["t_sched"] for r in ordered]
    assert late[-1] == pytest.approx(11 * 0.02 - 11 * 0.01)  # the backlog grows
    assert all(r["outcome"] == "delivered" for r in records)


def test_aggregate_cap_is_shared_and_per_rank_cap_is_not() -> None:
    def end_time(scope: str) -> float:
        prof = profile(network={"bandwidth_mbps": 8, "bandwidth_scope": scope},
                       transport={"ranks": 2}, stop={"messages": 2})
        records, _, _ = emit(prof, nbytes=100_000 - OVERHEAD)
        assert len(records) == 4 and {r["rank"] for r in records} == {0, 1}
        return max(r["t_last_byte"] for r in records)

    per_rank, aggregate = end_time("per_rank"), end_time("aggregate")
    assert per_rank == pytest.approx((200_000 - 4 * 4096) / 1e6, rel=1e-6)
    assert aggregate == pytest.approx((400_000 - 4 * 4096) / 1e6, rel=1e-6)


def test_ranks_use_their_own_connections_urls_round_robin() -> None:
    prof = profile(transport={"ranks": 3, "urls": ["tcp://127.0.0.1:5001",
                                                    "tcp://127.0.0.1:5002"]},
                   stop={"messages": 2})
    records, _, transport = emit(prof)
    assert [u for _, _, u in transport.opened] == [
        "tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002", "tcp://127.0.0.1:5001"]
    for r in range(3):
        mine = [x for x in records if x["rank"] == r]
        assert [x["seq"] for x in mine] == [0, 1]
        assert {x["url"] for x in mine} == {transport.opened[r][2]}


def test_cancellation_records_in_flight_and_queued_as_lost() -> None:
    prof = profile(transport={"sndhwm": 4}, timeline={"phases": [{"rate_hz": 100}]})
    records, out, _ = emit(prof, transport=FakeTransport(hang=True), cancel_at=0.5)
    assert out["cancelled"] and out["end"] == 0.5
    assert sorted(r["seq"] for r in records) == [0, 1, 2, 3, 4, 5]
    assert all(r["outcome"] == "lost" for r in records)


def test_a_disconnect_loses_that_message_and_the_run_goes_on() -> None:
    prof = profile(timeline={"phases": [{"rate_hz": 10}]}, stop={"messages": 4})
    records, _, _ = emit(prof, transport=FakeTransport(fail_seq_payloads={2}))
    assert [(r["seq"], r["outcome"]) for r in records] == [
        (0, "delivered"), (1, "lost"), (2, "delivered"), (3, "delivered")]


def test_final_partial_batch_and_total_events() -> None:
    prof = profile(source={"shape": [1, 4, 4], "batch_size": 8, "total_events": 20})
    sched = Schedule(prof, 0)
    plan = []
    while (p := sched.next()) is not None:
        plan.append(p)
    assert [p.events for p in plan] == [8, 8, 4]
    assert sched.end_reason == "messages"


def test_an_unreachable_peer_mid_run_ends_the_run_after_recording_everything() -> None:
    from simstream.transport import ConnectTimeout

    class Gone(FakeSender):
        async def send_message(self, payload: Any, **kw: Any) -> Report:
            if self.n_calls >= 2:
                self.n_calls += 1
                raise ConnectTimeout("could not reach the peer within 1 s")
            return await super().send_message(payload, **kw)

    records: list[dict[str, Any]] = []

    class Factory(FakeTransport):
        def __call__(self, kind: str, role: str, url: str, **_: Any) -> Any:
            async def open_() -> FakeSender:
                return Gone(url=url)

            return open_()  # the plain-coroutine form of open_sender

    async def main() -> None:
        await run_emitter(profile(transport={"sndhwm": 2}, timeline={"phases": [{"rate_hz": 10}]},
                                  stop={"messages": 6}),
                          sender_factory=Factory(),
                          message_factory=lambda p, r: FakeFactory(100),
                          on_record=records.append, wall_clock=trio.current_time,
                          messages_in_thread=False)

    with pytest.raises(BaseExceptionGroup) as info:  # noqa: F821 - builtin from Python 3.11
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert info.group_contains(ConnectTimeout)
    assert [(r["seq"], r["outcome"]) for r in records] == [
        (0, "delivered"), (1, "delivered"), (2, "lost")]


def test_emit_log_writes_the_contract_and_flushes(tmp_path: Any) -> None:
    from simstream.emitter.log import EmitLog, read_log

    path = tmp_path / "emit.jsonl"
    rec = {k: None for k in LOG_KEYS} | {"outcome": "delivered", "faults": []}
    log = EmitLog(path, flush_every=2, flush_interval_s=3600)
    log.write(rec)
    assert path.read_text() == ""  # buffered
    log.write(rec)
    assert len(path.read_text().splitlines()) == 2  # flushed every 2 records
    with pytest.raises(ValueError, match="keys differ"):
        log.write({"rank": 0})
    with pytest.raises(ValueError, match="outcome"):
        log.write(rec | {"outcome": "dropped"})
    log.write(rec)
    log.close()
    assert [list(r) for r in read_log(path)] == [list(LOG_KEYS)] * 3
    with path.open("a") as fh:
        fh.write('{"rank": 0, "se')  # a killed run's partial last line
    assert len(read_log(path)) == 3


def test_each_phase_paces_its_messages_at_its_own_cap() -> None:
    # 8 Mbit/s (1e6 B/s) in "slow", 80 Mbit/s in "fast"; one 100 kB message a second
    prof = profile(network={"bandwidth_mbps": 8},
                   timeline={"repeat": False, "phases": [
                       {"name": "slow", "duration_s": 1.0, "rate_hz": 1},
                       {"name": "fast", "duration_s": 1.0, "rate_hz": 1,
                        "network": {"bandwidth_mbps": 80}}]})
    records, _, _ = emit(prof, nbytes=100_000 - OVERHEAD)
    slow, fast = records
    assert (slow["phase"], fast["phase"]) == ("slow", "fast")
    # the bucket's 4 chunks go at once, the rest at the phase's rate
    assert slow["t_last_byte"] - slow["t_first_byte"] == pytest.approx(
        (100_000 - 4 * 4096) / 1e6, rel=1e-6)
    chunk = 20_000  # 2 ms at 1e7 B/s
    assert fast["t_last_byte"] - fast["t_first_byte"] == pytest.approx(
        (100_000 - 4 * chunk) / 1e7, rel=1e-6)


def test_the_cap_changes_at_the_phase_boundary_mid_message() -> None:
    # 80 Mbit/s (1e7 B/s) for 1 s, then 8 Mbit/s (1e6 B/s): a 15 MB message offered
    # at t=0 sends ~10 MB in the fast phase and the rest at the slow phase's cap,
    # by the clock (as a kernel shaper does), not at the cap of the phase it was
    # scheduled in
    nbytes = 15_000_000 - OVERHEAD
    prof = profile(network={"bandwidth_mbps": 8},
                   timeline={"repeat": False, "phases": [
                       {"name": "fast", "duration_s": 1.0, "rate_hz": None,
                        "network": {"bandwidth_mbps": 80}},
                       {"name": "slow", "duration_s": 10.0, "rate_hz": 0}]},
                   stop={"messages": 1})
    records, _, transport = emit(prof, nbytes=nbytes)
    (rec,) = records
    assert rec["phase"] == "fast" and rec["outcome"] == "delivered"
    calls = transport.senders[0].gate_calls
    sent_by_1s = sum(n for t, n in calls if t < 1.0)
    # what went in the fast second: its 1e7 bytes plus the bucket's burst (4 chunks
    # of 2 ms at 1e7 B/s)
    chunk = 20_000
    assert 1e7 - chunk <= sent_by_1s <= 1e7 + 5 * chunk
    # the remaining bytes at 1e6 B/s: about 5 s more, not 0.5 s
    assert rec["t_last_byte"] == pytest.approx(1.0 + (15_000_000 - sent_by_1s) / 1e6, rel=0.01)
    # no window of the slow phase carries more than its cap (+ one burst)
    slow = [(t, n) for t, n in calls if t >= 1.0]
    for i, (t_i, _) in enumerate(slow):
        window = sum(n for t, n in slow[i:] if t < t_i + 1.0)
        assert window <= 1e6 + 4 * 4096 + chunk


@st.composite
def paced_profiles(draw: st.DrawFn) -> Any:
    phases = [{"name": f"p{i}", "duration_s": draw(st.floats(0.05, 1.0)),
               "rate_hz": draw(st.one_of(st.just(0.0), st.floats(5.0, 400.0)))}
              for i in range(draw(st.integers(1, 3)))]
    faults = draw(st.lists(st.sampled_from([
        {"kind": "reset", "every_messages": 5},
        {"kind": "truncate", "probability": 0.1, "fraction": 0.5},
        {"kind": "stall", "every_s": 0.3, "duration_ms": 50},
        {"kind": "duplicate", "probability": 0.2},
        {"kind": "corrupt", "at_message": 2},
        {"kind": "slow_close", "at_message": 4, "duration_ms": 10},
    ]), max_size=3))
    return profile(
        seed=draw(st.integers(0, 1000)),
        transport={"sndhwm": draw(st.integers(1, 6)), "ranks": draw(st.integers(1, 2))},
        network={"latency_ms": draw(st.floats(0, 20)), "jitter_ms": draw(st.floats(0, 5)),
                 "bandwidth_mbps": draw(st.one_of(st.none(), st.floats(1, 100)))},
        timeline={"repeat": True, "phases": phases},
        faults=faults,
        stop={"messages": draw(st.integers(1, 25))})


@given(paced_profiles(), st.one_of(st.none(), st.floats(1e5, 1e8)))
def test_every_planned_attempt_ends_in_exactly_one_record(prof: Any, link: float | None) -> None:
    records, _, _ = emit(prof, transport=FakeTransport(link_bytes_per_s=link),
                         nbytes=2000, drain_timeout_s=None)
    for rank in range(prof.transport.ranks):
        sched = Schedule(prof, rank)
        planned = [(p.seq, p.duplicate) for p in iter(sched.next, None)]
        mine = [r for r in records if r["rank"] == rank]
        got = [(r["seq"], "duplicate" in r["faults"]) for r in mine]
        assert got == planned  # nothing lost, nothing twice, nothing reordered
        for r in mine:
            assert r["outcome"] in ("delivered", "cut")
            assert r["t_first_byte"] >= r["t_sched"] - 1e-9
            assert (r["outcome"] == "cut") == bool({"reset", "truncate"} & set(r["faults"]))


def test_url_spread_message_round_robins_one_rank_over_every_url() -> None:
    # LCLStreamer: one PUSH socket connected to two urls sends 8 messages 4 and 4
    urls = ["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"]
    prof = profile(transport={"urls": urls, "url_spread": "message"}, stop={"messages": 8})
    records, _, transport = emit(prof)
    assert [u for _, _, u in transport.opened] == urls
    by_seq = {r["seq"]: r["url"] for r in records}
    assert [by_seq[s] for s in range(8)] == urls * 4
    assert [len(s.sent) for s in transport.senders] == [4, 4]


@pytest.mark.parametrize("close", ["abrupt", "graceful"])
def test_end_of_stream_close_abrupt_drops_the_tail_graceful_drains_it(close: str) -> None:
    # 10 messages produced at once over a link that takes 10 ms each, SNDHWM 3
    prof = profile(transport={"sndhwm": 3, "close": close}, stop={"messages": 10})
    records, out, transport = emit(prof, transport=FakeTransport(link_bytes_per_s=100_000),
                                   nbytes=1000 - OVERHEAD)
    assert sorted(r["seq"] for r in records) == list(range(10))
    result = out["result"]
    if close == "graceful":
        assert all(r["outcome"] == "delivered" and r["at_close"] is None for r in records)
        assert result.ranks[0].tail == []
        return
    tail = {r["seq"]: r["at_close"] for r in records if r["at_close"] is not None}
    # the producer's last put leaves one being written and SNDHWM queued: all dropped
    assert tail == {6: "in_flight", 7: "queued", 8: "queued", 9: "queued"}
    assert all(r["outcome"] == "lost" for r in records if r["seq"] in tail)
    assert all(r["outcome"] == "delivered" for r in records if r["seq"] not in tail)
    assert result.ranks[0].lost_at_tail == 4 and len(transport.senders[0].sent) == 6
    assert out["end"] == pytest.approx(0.06)  # closed as the last message was queued


def test_abrupt_close_loses_nothing_when_the_peer_keeps_up() -> None:
    # LINGER 0 drops only what would have to wait: a link that takes every message
    # at once (a fast reader, room in the kernel) gets them all, as LCLStreamer's do
    prof = profile(transport={"sndhwm": 3, "close": "abrupt"}, stop={"messages": 10})
    records, out, _ = emit(prof)
    assert sorted(r["seq"] for r in records) == list(range(10))
    assert all(r["outcome"] == "delivered" and r["at_close"] is None for r in records)
    assert out["result"].ranks[0].lost_at_tail == 0
