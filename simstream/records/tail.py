"""Loss at the end of a stream: messages the emitter sent (or queued) that never
reached the consumer and came after the last one that did.

The consumer alone cannot see them: its ``lost`` counts only the gaps below the
highest sequence number each rank delivered. The emit log knows every sequence
number each rank produced, and which ones were still queued or being written when
the end of the stream closed the socket (``at_close``). Reconciling the two, by
(rank, seq), gives ``lost_at_tail`` (docs/formats.md), kept apart from ``lost``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simstream.records.contract import LOST_AT_TAIL_KEYS, LOST_AT_TAIL_LISTED

__all__ = ["tail_loss"]


def tail_loss(emit_rank: Any, emit_seq: Any, emit_at_close: Sequence[str | None],
              recv_rank: Any, recv_seq: Any, *, listed: int = LOST_AT_TAIL_LISTED
              ) -> dict[str, Any] | None:
    """The ``lost_at_tail`` block from the emit log's (rank, seq, at_close) columns and
    the consumer's received (rank, seq) columns (NaN or None where a message carried
    no number). A message is lost at the tail when the emit log has it and its rank's
    highest received sequence number is below it (a rank nothing arrived from loses
    every message). None when the emit log carries no sequence numbers.
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
    highest: dict[int, int] = {}
    for r in np.unique(rr[rok]).astype(np.int64):
        highest[int(r)] = int(rs[rok & (rr == r)].max())
    # (rank, seq) -> at_close; an attempt of a duplicated message may say null while
    # another says queued: the close's word wins
    tail: dict[tuple[int, int], str | None] = {}
    logged: set[tuple[int, int]] = set()
    for i in np.flatnonzero(ok):
        key = (int(er[i]), int(es[i]))
        if ac[i] is not None:
            logged.add(key)
        if key[1] > highest.get(key[0], -1):
            tail[key] = tail.get(key) or ac[i]
    order = sorted(tail)
    by_rank: dict[str, int] = {}
    for r, _ in order:
        by_rank[str(r)] = by_rank.get(str(r), 0) + 1
    out = {
        "count": len(order),
        "by_rank": by_rank,
        "messages": [{"rank": r, "seq": s, "at_close": tail[(r, s)]} for r, s in order[:listed]],
        "logged_at_close": len(logged),
        "not_logged": sum(tail[k] is None for k in order),
        "logged_not_at_tail": len(logged - set(tail)),
    }
    assert tuple(out) == LOST_AT_TAIL_KEYS
    return out
