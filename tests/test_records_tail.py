"""Loss at the tail: the emit log reconciled with what the consumer received
(simstream.records.tail), in summary.json (`simstream run`) and report.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from simstream.records.contract import (
    BATCH_COLUMNS,
    EMIT_LOG_KEYS,
    LOST_AT_TAIL_KEYS,
    MESSAGE_COLUMNS,
)
from simstream.records.tail import tail_loss

NAN = math.nan


def _emit(rank: int, seq: int, at_close: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = dict.fromkeys(EMIT_LOG_KEYS)
    rec.update(rank=rank, seq=seq, phase="p", t_sched=1.0, nbytes=10, wire_bytes=12, events=1,
               blocked_s=0.0, hwm_wait_s=0.0, socket_wait_s=0.0, faults=[], url="tcp://x:1",
               outcome="lost" if at_close else "delivered", at_close=at_close)
    if not at_close:
        rec.update(t_first_byte=1.0, t_last_byte=1.0)
    return rec


# rank 0 sent 0..5: 2 lost mid-stream, 5 never arrived after 4 (queued at close);
# rank 1 sent 0..3: 3 in flight at close, 2 sent but never arrived;
# rank 2 sent 0..1, nothing arrived: both lost at the tail
EMITTED = [_emit(0, s) for s in range(5)] + [_emit(0, 5, "queued")] + [
    _emit(1, 0), _emit(1, 1), _emit(1, 2), _emit(1, 3, "in_flight"),
    _emit(2, 0), _emit(2, 0), _emit(2, 1)]  # rank 2's seq 0 was duplicated
RECEIVED = [(0, 0), (0, 1), (0, 3), (0, 4), (1, 0), (1, 1), (NAN, NAN)]


def _cols(recs: list[dict[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    return [r["rank"] for r in recs], [r["seq"] for r in recs], [r["at_close"] for r in recs]


def test_the_tail_is_what_never_arrived_after_each_ranks_last_arrival() -> None:
    lost = tail_loss(*_cols(EMITTED), [r for r, _ in RECEIVED], [s for _, s in RECEIVED])
    assert lost is not None and tuple(lost) == LOST_AT_TAIL_KEYS
    assert [(m["rank"], m["seq"], m["at_close"]) for m in lost["messages"]] == [
        (0, 5, "queued"), (1, 2, None), (1, 3, "in_flight"), (2, 0, None), (2, 1, None)]
    assert lost["count"] == 5 and lost["by_rank"] == {"0": 1, "1": 2, "2": 2}
    # rank 0's seq 2 is a mid-stream gap (summary `lost`), never a tail loss
    assert lost["logged_at_close"] == 2 and lost["not_logged"] == 3
    assert lost["logged_not_at_tail"] == 0


def test_a_listed_cap_keeps_the_count_and_no_sequence_numbers_give_none() -> None:
    lost = tail_loss(*_cols(EMITTED), [], [], listed=2)
    assert lost is not None and lost["count"] == len(EMITTED) - 1 and len(lost["messages"]) == 2
    assert tail_loss([NAN], [NAN], [None], [], []) is None
    with pytest.raises(ValueError, match="differ in length"):
        tail_loss([0], [0, 1], [None], [], [])


def _cell(v: float) -> str:
    return "" if v != v else str(int(v))


def _run_dir(root: Path) -> Path:
    root.mkdir()
    (root / "emit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EMITTED))
    rows = [",".join(map(str, MESSAGE_COLUMNS))]
    for i, (r, s) in enumerate(RECEIVED):
        rows.append(f"{i},{_cell(r)},{_cell(s)},10,{1.0 + i},processed,,")
    (root / "messages.csv").write_text("\n".join(rows) + "\n")
    (root / "batches.csv").write_text(",".join(BATCH_COLUMNS) + "\n")
    (root / "summary.json").write_text(json.dumps({"received": 7, "lost": 1}))
    return root


def test_run_writes_it_into_summary_json_and_diagnose_into_report(tmp_path: Path) -> None:
    from simstream.diagnose.load import load_run
    from simstream.diagnose.report import lost_at_tail
    from simstream.runner.core import _add_tail_loss

    out = _run_dir(tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    _add_tail_loss(out, summary)
    written = json.loads((out / "summary.json").read_text())
    assert written["lost"] == 1 and written["lost_at_tail"]["count"] == 5
    assert written["lost_at_tail"]["messages"][0] == {"rank": 0, "seq": 5, "at_close": "queued",
                                                      "epoch": None}
    # the diagnosis reconciles the files itself (a run directory from elsewhere)
    (out / "summary.json").write_text(json.dumps({"received": 7, "lost": 1}))
    assert lost_at_tail(load_run(out)) == written["lost_at_tail"]


def test_run_prints_it_on_the_consumer_line() -> None:
    from simstream.runner.cli import _tail_words

    assert _tail_words(None) == ""
    assert _tail_words({"count": 5, "logged_at_close": 2}) == " lost_at_tail 5 (2 logged at close)"
