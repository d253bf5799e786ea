"""Run records and the accounting: lost / duplicated / reordered, files and their columns."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from simstream.pipeline.records import (
    BATCH_COLUMNS,
    GPU_COLUMNS,
    MESSAGE_COLUMNS,
    Q1_COLUMNS,
    BatchTimes,
    RunRecords,
    SequenceLedger,
    UnionTracker,
)


def reference(arrivals: list[tuple[int, int]]) -> dict[str, int]:
    """The definitions, spelt out with sets."""
    seen: set[tuple[int, int]] = set()
    top: dict[int, int] = {}
    dup = reord = 0
    for r, s in arrivals:
        if (r, s) in seen:
            dup += 1
            continue
        if s < top.get(r, -1):
            reord += 1
        seen.add((r, s))
        top[r] = max(top.get(r, -1), s)
    lost = sum(1 for r, m in top.items() for s in range(m + 1) if (r, s) not in seen)
    return {"lost": lost, "duplicated": dup, "reordered": reord}


def arrivals() -> st.SearchStrategy[list[tuple[int, int]]]:
    return st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), max_size=120)


@given(arrivals())
def test_ledger_matches_the_definitions(arr: list[tuple[int, int]]) -> None:
    led = SequenceLedger()
    for r, s in arr:
        led.see(r, s)
    if arr:
        assert led.counts() == reference(arr)
    else:
        assert led.counts() == {"lost": None, "duplicated": None, "reordered": None}


@given(st.lists(st.integers(0, 60), min_size=1, max_size=80, unique=True), st.randoms())
def test_any_order_of_a_complete_stream_loses_nothing(seqs: list[int], rnd) -> None:
    full = list(range(max(seqs) + 1))
    rnd.shuffle(full)
    led = SequenceLedger()
    for s in full:
        led.see(0, s)
    c = led.counts()
    assert c["lost"] == 0 and c["duplicated"] == 0


def test_crafted_sequences() -> None:
    led = SequenceLedger()
    for s in [0, 1, 3, 2, 2, 6, 5]:
        led.see(7, s)
    # 4 never came; the second 2 is a duplicate; 2 and 5 came late
    assert led.counts() == {"lost": 1, "duplicated": 1, "reordered": 2}
    assert led.ranks() == {"7": {"max_seq": 6, "lost": 1, "epochs": []}}


def test_first_message_late_counts_the_earlier_ones_lost() -> None:
    led = SequenceLedger()
    led.see(0, 3)
    assert led.lost == 3


def test_a_huge_gap_costs_no_memory() -> None:
    led = SequenceLedger(window=10**13)
    led.see(0, 0)
    led.see(0, 10**12)
    led.see(0, 5)
    assert led.lost == 10**12 - 2
    assert led.reordered == 1


def test_no_sequence_numbers_gives_null_not_zero() -> None:
    led = SequenceLedger()
    for _ in range(3):
        assert led.see(None, None) == "unknown"
    assert led.counts() == {"lost": None, "duplicated": None, "reordered": None}


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10)), max_size=40))
def test_union_tracker_on_sorted_intervals(spans: list[tuple[float, float]]) -> None:
    ivs = sorted((a, a + d) for a, d in spans)
    u = UnionTracker()
    for a, b in ivs:
        u.add(a, b)
    # reference: merge
    total, cur = 0.0, None
    for a, b in ivs:
        if cur is None or a > cur[1]:
            if cur:
                total += cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    if cur:
        total += cur[1] - cur[0]
    assert abs(u.value() - total) < 1e-9


@dataclass
class Fin:
    index: int
    events: int
    buffer: int
    t_h2d_start: float
    t_h2d_end: float
    t_compute_start: float
    t_compute_end: float
    t_d2h_start: float
    t_d2h_end: float
    meta: object = None


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_run_directory_files_and_summary(tmp_path: Path) -> None:
    rec = RunRecords(tmp_path)
    t = 1000.0
    # three messages: two processed (rank 0 seqs 0 and 2), one corrupt
    for i in range(3):
        rec.arrival(t + i)
    rec.sequence(1, None, None)  # fed out of order: held until index 0 is known
    rec.sequence(0, 0, 0)
    rec.sequence(2, 0, 2)
    rec.quarantine(1, b"\x00garbage", "codec: not an HDF5, npz", nbytes=8, t_arrival=t + 1)
    for i, seq in ((0, 0), (2, 2)):
        host = BatchTimes(i, 0, seq, 4, 100, t + i, t + i + 0.01, t + i + 0.02, t + i + 0.02,
                          t + i + 0.03, t + i + 0.03, t + i + 0.5)
        c0 = t + i + 0.6
        rec.batch_done(host, Fin(i, 4, i % 2, c0 - 0.1, c0, c0, c0 + 0.4, c0 + 0.4, c0 + 0.5))
    for k, depth in enumerate([0, 2, 4, 4]):
        rec.q1_sample(t + k, depth, 4)
    s = rec.close({"wall_s": 4.0, "mode": "socket", "q1": {"backpressure_events": 3}})

    assert (s["received"], s["processed"], s["quarantined"]) == (3, 2, 1)
    assert s["received"] == s["processed"] + s["quarantined"]
    assert (s["lost"], s["duplicated"], s["reordered"]) == (1, 0, 0)  # seq 1 never came
    assert s["quarantine_reasons"] == {"codec": 1}
    assert s["batches"] == 2 and s["samples"] == 8 and s["bytes"] == 200
    # compute 0.4 s twice, first arrival t, last finish t+2+1.1
    assert abs(s["gpu_busy_fraction"] - 0.8 / 3.1) < 1e-9
    assert abs(s["stage_median_ms"]["compute"] - 400.0) < 1e-6
    assert abs(s["stage_median_ms"]["q1_wait"] - 470.0) < 1e-6
    q = s["q1"]
    assert q["mean_occupancy"] == (0 + 0.5 + 1 + 1) / 4
    assert (q["share_empty"], q["share_under_30"], q["share_over_80"]) == (0.25, 0.25, 0.5)
    assert q["backpressure_events"] == 3
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(s))

    for name, cols in (("messages", MESSAGE_COLUMNS), ("batches", BATCH_COLUMNS),
                       ("q1", Q1_COLUMNS), ("gpu", GPU_COLUMNS)):
        with (tmp_path / f"{name}.csv").open() as f:
            assert next(csv.reader(f)) == list(cols)
    msgs = _csv(tmp_path / "messages.csv")
    assert [m["status"] for m in msgs] == ["quarantined", "processed", "processed"]
    assert msgs[0]["rank"] == "" and msgs[0]["reason"] == "codec: not an HDF5, npz"
    assert len(_csv(tmp_path / "batches.csv")) == 2
    gpu = _csv(tmp_path / "gpu.csv")
    assert [g["stream"] for g in gpu] == ["h2d", "compute", "d2h"] * 2
    meta = json.loads((tmp_path / "quarantine" / "000001.json").read_text())
    assert meta["reason"].startswith("codec") and meta["nbytes"] == 8 and meta["rank"] is None
    assert (tmp_path / "quarantine" / "000001.bin").read_bytes() == b"\x00garbage"


def test_rows_are_on_disk_before_close(tmp_path: Path) -> None:
    rec = RunRecords(tmp_path)
    rec.arrival(1.0)
    rec.quarantine(0, b"x", "codec: bad", nbytes=1, t_arrival=1.0)
    rec.q1_sample(1.0, 0, 4)
    assert len(_csv(tmp_path / "messages.csv")) == 1
    assert len(_csv(tmp_path / "q1.csv")) == 1
    rec.close({})


def test_oversize_keeps_only_the_head(tmp_path: Path) -> None:
    from simstream.pipeline.records import QUARANTINE_HEAD_BYTES

    rec = RunRecords(tmp_path)
    rec.arrival(1.0)
    rec.quarantine(0, bytes(QUARANTINE_HEAD_BYTES + 10), "oversize: big", nbytes=10**10, t_arrival=1.0)
    assert (tmp_path / "quarantine" / "000000.bin").stat().st_size == QUARANTINE_HEAD_BYTES
    s = rec.close({})
    assert s["quarantined"] == 1 and s["lost"] is None


def test_reservoir_is_exact_below_its_cap_and_bounded_above() -> None:
    import random
    import statistics

    from simstream.pipeline.records import Reservoir

    r = Reservoir(cap=100, rng=random.Random(1))
    for v in range(100):
        r.append(float(v))
    assert sorted(r) == [float(v) for v in range(100)]
    for v in range(100, 100_000):
        r.append(float(v))
    assert len(r) == 100 and r.seen == 100_000
    # a uniform sample of 0..99999: its median lies near the middle
    assert 30_000 < statistics.median(r) < 70_000


def test_busy_figures_one_definition_in_records_log_and_report(tmp_path: Path) -> None:
    """The three busy figures (contract.BUSY_FIGURES) on a hand-made run: the records'
    summary, the live snapshot's log words and the diagnosis's evidence agree."""
    from simstream.diagnose.evidence import compute_evidence
    from simstream.diagnose.load import load_run
    from simstream.pipeline.inference import busy_words

    rec = RunRecords(tmp_path)
    rec.device = "cpu"
    rec.arrival(0.0)
    rec.arrival(1.15)
    for i in range(2):
        rec.sequence(i, 0, i)
    # A: the loop asked for it at -1 (before anything arrived: counted from 0), put at 1.0
    a = BatchTimes(0, 0, 0, 4, 100, 0.0, 0.9, 0.95, 0.95, 1.0, -1.0, 1.0)
    rec.batch_done(a, Fin(0, 4, 0, 1.0, 1.1, 1.1, 1.5, 1.5, 1.6))
    # B: the loop waited from 1.1 until it was put at 1.2; computed after A
    b = BatchTimes(1, 0, 1, 4, 100, 1.15, 1.16, 1.18, 1.18, 1.2, 1.1, 1.2)
    rec.batch_done(b, Fin(1, 4, 1, 1.2, 1.3, 1.5, 1.9, 1.9, 2.0))
    rec.q1_sample(0.5, 0, 4)
    snap = rec.snapshot()
    s = rec.close({"wall_s": 2.0, "device": "cpu"})
    # active span 0..2.0; waits [0, 1.0] and [1.1, 1.2]; any stream [1.0, 2.0];
    # compute [1.1, 1.9]
    expect = {"loop_busy": 0.45, "device_busy": 0.5, "device_compute_busy": 0.4}
    for key, value in expect.items():
        assert abs(s[key] - value) < 1e-9, key
        assert abs(snap[key] - value) < 1e-9, key
    assert s["gpu_busy_fraction"] == s["device_compute_busy"]  # the older name, kept
    assert busy_words(snap, snap["device"]) == \
        "inference loop busy 45%  device busy (cpu) 50%  device compute busy 40%"
    ev = compute_evidence(load_run(tmp_path)).to_json()
    for key, value in expect.items():
        assert abs(ev[key] - value) < 1e-3, (key, ev[key])
    assert ev["device_id"] == "cpu" and ev["device"] == "CPU"


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0.001, 5)), max_size=300),
       st.integers(2, 16))
def test_late_union_is_exact_for_intervals_reordered_within_its_window(
        spans: list[tuple[float, float]], jitter: int) -> None:
    """A buffered pipeline hands its intervals over out of start order; within the
    window the union is exact."""
    from simstream.records.run import LateUnion

    ivs = sorted((a, a + d) for a, d in spans)
    # reorder within blocks of ``jitter`` (far less than the window)
    shuffled = [iv for k in range(0, len(ivs), jitter) for iv in reversed(ivs[k:k + jitter])]
    u = LateUnion(window=32)
    for a, b in shuffled:
        u.add(a, b)
    total, cur = 0.0, None
    for a, b in ivs:
        if cur is None or a > cur[1]:
            total += 0.0 if cur is None else cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    total += 0.0 if cur is None else cur[1] - cur[0]
    assert abs(u.value() - total) < 1e-6
