"""The epoch (an emitter run's start id): a restarted emitter's messages are a new
stream of their rank, never duplicates of its earlier life's; messages without an
epoch (an older emitter, a producer mapping rank and seq only) are accounted as
before, one stream per rank. docs/formats.md, "Restarts: the epoch"."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from simstream import codec
from simstream.emitter.log import EmitLog, read_log
from simstream.payload import MessageFactory, wire_fields
from simstream.pipeline.parse import ParseError, Parser
from simstream.profile import Source
from simstream.records.run import BatchTimes, RunRecords, SequenceLedger
from simstream.records.tail import tail_loss

OLD, NEW = 1_700_000_000_000_000, 1_700_000_005_000_000  # two lives of one emitter


def _source(fmt: str, **kw: object) -> Source:
    return Source(batch_size=2, shape=[1, 8, 8], total_events=20, format=fmt, **kw)


@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
@pytest.mark.parametrize("pool", [None, 2])
def test_the_payload_carries_the_epoch_and_the_consumer_reads_it(fmt: str, pool: int | None
                                                                  ) -> None:
    s = _source(fmt, pool=pool)
    parser = Parser(wire_fields(s))
    for epoch in (0, NEW):
        f = MessageFactory(s, rank=3, seed=1, epoch=epoch)
        for seq in (0, 5):
            pb = parser.parse(f.message(seq).payload)
            assert (pb.rank, pb.seq, pb.epoch) == (3, seq, epoch)
    # same source, seed, rank, seq: only the epoch field differs between two lives
    a = codec.decode(MessageFactory(s, rank=3, seed=1, epoch=OLD).message(4).payload,
                     fields=wire_fields(s))
    b = codec.decode(MessageFactory(s, rank=3, seed=1, epoch=NEW).message(4).payload,
                     fields=wire_fields(s))
    assert (a["simstream_epoch"] == OLD).all() and (b["simstream_epoch"] == NEW).all()
    assert a["simstream_epoch"].dtype == np.int64
    assert np.array_equal(a["detector_data"], b["detector_data"])


def test_a_message_without_an_epoch_parses_with_epoch_none() -> None:
    fields = {"detector_data": "/data/data", "simstream_sequence": "/simstream/sequence",
              "simstream_rank": "/simstream/rank"}
    arrays = {"detector_data": np.zeros((2, 1, 4, 4), np.float32),
              "simstream_sequence": np.full(2, 7), "simstream_rank": np.full(2, 1)}
    parser = Parser({"detector_data": "/data/data"})
    pb = parser.parse(codec.encode(arrays, format="hdf5", fields=fields))
    assert (pb.rank, pb.seq, pb.epoch) == (1, 7, None)
    # as the real LCLStreamer sends: no simstream field at all
    pb = parser.parse(codec.encode({"detector_data": arrays["detector_data"]}, format="hdf5",
                                   fields={"detector_data": "/data/data"}))
    assert (pb.rank, pb.seq, pb.epoch) == (None, None, None)
    # a rejected message keeps what could be read, the epoch too
    s = _source("hdf5")
    bad = Parser(wire_fields(s), expected=("detector_data", "wavelength_x"))
    with pytest.raises(ParseError) as e:
        bad.parse(MessageFactory(s, rank=2, epoch=NEW).message(1).payload)
    assert (e.value.rank, e.value.seq, e.value.epoch) == (2, 1, NEW)


def _restart(ledger: SequenceLedger, old: int | None, new: int | None) -> None:
    """Rank 0 sends 0..5 (3 lost), is killed and restarts at 0..3; its old life's 5
    arrives late, after the new life's first messages. Rank 1 runs throughout."""
    for s in (0, 1, 2, 4):
        ledger.see(0, s, old)
        ledger.see(1, s, None)
    for s in (0, 1):
        ledger.see(0, s, new)
    ledger.see(0, 5, old)  # in flight at the kill, delivered after the restart
    for s in (2, 3):
        ledger.see(0, s, new)
    ledger.see(1, 3, None)


def test_a_new_epoch_is_a_new_stream_never_duplicates() -> None:
    ledger = SequenceLedger()
    _restart(ledger, OLD, NEW)
    assert ledger.counts() == {"lost": 1, "duplicated": 0, "reordered": 1}
    ranks = ledger.ranks()
    assert ranks["0"] == {"max_seq": 3, "lost": 1, "epochs": [
        {"epoch": OLD, "max_seq": 5, "lost": 1}, {"epoch": NEW, "max_seq": 3, "lost": 0}]}
    assert ranks["1"] == {"max_seq": 4, "lost": 0, "epochs": []}
    # a true duplicate within one epoch is still one
    assert ledger.see(0, 2, NEW) == "duplicate" and ledger.duplicated == 1


def test_without_an_epoch_a_restart_is_counted_as_before() -> None:
    ledger = SequenceLedger()
    _restart(ledger, None, None)
    # the restarted 0, 1, 2 repeat the old numbers: duplicates; its 3 fills the old
    # life's gap (reordered), hiding that loss
    assert ledger.counts() == {"lost": 0, "duplicated": 3, "reordered": 2}
    assert ledger.ranks()["0"] == {"max_seq": 5, "lost": 0, "epochs": []}


class _Fin:
    def __init__(self, events: int) -> None:
        self.events, self.buffer = events, 0
        self.t_h2d_start = self.t_h2d_end = self.t_compute_start = None
        self.t_compute_end = self.t_d2h_start = self.t_d2h_end = None


def test_run_records_write_the_epoch_and_account_by_stream(tmp_path: Path) -> None:
    rec = RunRecords(tmp_path)
    arrivals = [(0, 0, OLD), (0, 1, OLD), (0, 0, NEW), (0, 2, OLD), (0, 1, NEW), (1, 0, None)]
    for i, (r, s, e) in enumerate(arrivals):
        rec.arrival(1.0 + i)
        rec.sequence(i, r, s, e)
        if i == 3:
            rec.quarantine(i, b"x", "codec: test", nbytes=1, t_arrival=1.0 + i, rank=r, seq=s)
        else:
            rec.batch_done(BatchTimes(i, r, s, 1, 10, 1.0 + i, 1.0 + i, 1.1 + i), _Fin(1))
    summary = rec.close({})
    assert (summary["duplicated"], summary["lost"], summary["accounting_ok"]) == (0, 0, True)
    assert [x["epoch"] for x in summary["per_rank"]["0"]["epochs"]] == [OLD, NEW]
    with (tmp_path / "messages.csv").open() as fh:
        rows = {int(r["index"]): r for r in csv.DictReader(fh)}
    assert [rows[i]["epoch"] for i in range(6)] == [str(OLD), str(OLD), str(NEW), str(OLD),
                                                      str(NEW), ""]
    assert rows[3]["status"] == "quarantined"


def test_tail_loss_per_epoch_and_without() -> None:
    # the old life logged 0..9 and delivered 0..6 before the kill; the new one 0..4, all
    emit = [(0, s, OLD) for s in range(10)] + [(0, s, NEW) for s in range(5)]
    recv = [(0, s, OLD) for s in range(7)] + [(0, s, NEW) for s in range(5)]
    cols = [list(c) for c in zip(*emit, strict=True)]
    rcols = [list(c) for c in zip(*recv, strict=True)]
    out = tail_loss(cols[0], cols[1], [None] * len(emit), rcols[0], rcols[1],
                    emit_epoch=cols[2], recv_epoch=rcols[2])
    assert out is not None and out["count"] == 3 and out["by_rank"] == {"0": 3}
    assert [(m["seq"], m["epoch"]) for m in out["messages"]] == [(7, OLD), (8, OLD), (9, OLD)]
    # by rank alone the old life's tail hides under the new life's numbers: 5..9 look
    # lost, 7..9 cannot be told from the new life's (the compatible reading, no epoch)
    out = tail_loss(cols[0], cols[1], [None] * len(emit), rcols[0], rcols[1])
    assert out is not None and out["count"] == 3 and {m["epoch"] for m in out["messages"]} == {None}
    # an emit log with epochs against a consumer's records without (or the other way)
    # falls back to ranks rather than calling everything lost
    out = tail_loss(cols[0], cols[1], [None] * len(emit), rcols[0], rcols[1],
                    emit_epoch=cols[2], recv_epoch=[None] * len(recv))
    assert out is not None and out["count"] == 3


def test_an_appended_log_keeps_the_earlier_life_and_ends_its_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "emit.jsonl"
    rec = {"rank": 0, "seq": 0, "phase": "p", "t_sched": 1.0, "t_first_byte": 1.0,
           "t_last_byte": 1.1, "nbytes": 1, "wire_bytes": 1, "events": 1, "blocked_s": 0.0,
           "hwm_wait_s": 0.0, "socket_wait_s": 0.0, "faults": [], "outcome": "delivered",
           "url": "tcp://x:1", "at_close": None, "epoch": OLD}
    with EmitLog(path) as log:
        log.write(rec)
    with path.open("a") as fh:
        fh.write(json.dumps(rec)[:20])  # killed mid-write
    with EmitLog(path, append=True) as log:
        log.write({**rec, "epoch": NEW})
    assert [(r["seq"], r["epoch"]) for r in read_log(path)] == [(0, OLD), (0, NEW)]
    with EmitLog(path) as log:  # without append: truncated, as always
        log.write(rec)
    assert len(read_log(path)) == 1
