"""Loss at the end of a stream: messages the emitter sent (or queued) that never
reached the consumer and came after the last one that did.

The consumer alone cannot see them: its ``lost`` counts only the gaps below the
highest sequence number each rank delivered. The emit log knows every sequence
number each rank produced, and which ones were still queued or being written when
the end of the stream closed the socket (``at_close``). Reconciling the two, by
(rank, epoch, seq), gives ``lost_at_tail`` (docs/formats.md), kept apart from
``lost``. A stream is one (rank, epoch): a restarted emitter's earlier life has its
own tail (the messages in flight when it was killed, as far as its log has them).
Where either side carries no epoch, streams are ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from simstream.records.contract import LOST_AT_TAIL_KEYS, LOST_AT_TAIL_LISTED

__all__ = ["tail_loss"]


def tail_loss(emit_rank: Any, emit_seq: Any, emit_at_close: Sequence[str | None],
              recv_rank: Any, recv_seq: Any, *, listed: int = LOST_AT_TAIL_LISTED,
              emit_epoch: Any = None, recv_epoch: Any = None) -> dict[str, Any] | None:
    """The ``lost_at_tail`` block from the emit log's (rank, seq, at_close) columns and
    the consumer's received (rank, seq) columns (NaN or None where a message carried
    no number). A message is lost at the tail when the emit log has it and its rank's
    highest received sequence number is below it (a rank nothing arrived from loses
    every message). ``emit_epoch``/``recv_epoch``: the epoch columns (NaN or None
    where absent); a stream is then (rank, epoch). None when the emit log carries no
    sequence numbers.
    """
    er = np.asarray(emit_rank, dtype=np.float64)
    es = np.asarray(emit_seq, dtype=np.float64)
    ac = list(emit_at_close)
    if not (er.size == es.size == len(ac)):
        raise ValueError("emit log columns differ in length")
    ok = np.isfinite(er) & np.isfinite(es)
    if not ok.any():
        return None
    rr = np.asarray(recv_rank, dtype=np.float64)
    rs = np.asarray(recv_seq, dtype=np.float64)
    rok = np.isfinite(rr) & np.isfinite(rs)

    def epochs(col: Any, n: int) -> np.ndarray:
        if col is None:
            return np.full(n, np.nan)
        a = np.asarray(col, dtype=np.float64)  # None becomes NaN
        if a.size != n:
            raise ValueError("epoch column differs in length")
        return a

    ee, re_ = epochs(emit_epoch, er.size), epochs(recv_epoch, rr.size)
    if not (np.isfinite(ee).any() and np.isfinite(re_).any()):
        ee, re_ = np.full(er.size, np.nan), np.full(rr.size, np.nan)

    def stream(rank: float, epoch: float) -> tuple[int, int | None]:
        return int(rank), None if math.isnan(epoch) else int(epoch)

    highest: dict[tuple[int, int | None], int] = {}
    rkey = np.where(np.isfinite(re_), re_, -1.0)  # -1: no epoch (epochs are >= 0)
    for r in np.unique(rr[rok]):
        in_rank = rok & (rr == r)
        for e in np.unique(rkey[in_rank]):
            highest[stream(r, np.nan if e < 0 else e)] = int(rs[in_rank & (rkey == e)].max())
    # (rank, seq) -> at_close; an attempt of a duplicated message may say null while
    # another says queued: the close's word wins
    # (rank, epoch, seq) -> at_close
    tail: dict[tuple[int, int | None, int], str | None] = {}
    logged: set[tuple[int, int | None, int]] = set()
    for i in np.flatnonzero(ok):
        r, e = stream(er[i], ee[i])
        key = (r, e, int(es[i]))
        if ac[i] is not None:
            logged.add(key)
        if key[2] > highest.get((r, e), -1):
            tail[key] = tail.get(key) or ac[i]
    order = sorted(tail, key=lambda k: (k[0], -1 if k[1] is None else k[1], k[2]))
    by_rank: dict[str, int] = {}
    for r, _, _ in order:
        by_rank[str(r)] = by_rank.get(str(r), 0) + 1
    out = {
        "count": len(order),
        "by_rank": by_rank,
        "messages": [{"rank": r, "seq": s, "at_close": tail[(r, e, s)], "epoch": e}
                     for r, e, s in order[:listed]],
        "logged_at_close": len(logged),
        "not_logged": sum(tail[k] is None for k in order),
        "logged_not_at_tail": len(logged - set(tail)),
    }
    assert tuple(out) == LOST_AT_TAIL_KEYS
    return out
