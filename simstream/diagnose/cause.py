"""Where a ``network`` verdict lies: the producer, the link or the consumer's receive path.

The verdict stays one of network | parse | queue | consumer; for ``network`` this
names the cause (report.json ``cause`` and ``cause_evidence``):

- ``producer``: the emitter sent no faster by itself: it was silent during the
  long arrival gaps (>= SILENT of them) or had bytes on the wire under
  SENDING_LOW of its time, and was not held back by backpressure.
- ``receive``: the consumer's socket/receiver path pushed back: the emitter was
  blocked by backpressure >= EMITTER_BLOCKED of its time while Q1 was not full
  (over 80 % full < Q1_FULL of the run), and the receiver thread was busy
  (not waiting for bytes) >= RECEIVER_BUSY of its time, or on average at least
  RX_BACKLOG_BYTES waited in the consumer's kernel receive queue (bytes that
  crossed the link and were not read: with ZeroMQ the reads happen in
  libzmq's I/O thread, which the receiver thread's own busy share misses).
- ``link``: the bytes could not go faster between them: a rate cap was applied
  (shaping.json) in the phases where most of the backpressure fell, or the emitter had bytes on the wire >= SENDING of its time
  without being blocked, or it was blocked while the receiver mostly waited for
  bytes (busy < RECEIVER_WAITING: they were held in the path).
- ``unknown``: what was measured does not separate them; ``cannot_tell_apart``
  names the causes left and why. Without an emit log (a real LCLStreamer as
  the producer) the producer's pace and the link look alike from the consumer:
  both are bytes that did not arrive sooner.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simstream.diagnose.figures import Figures

__all__ = ["CAUSES", "Cause", "network_cause", "shaping_cap"]

CAUSES = ("producer", "link", "receive", "unknown")
EMITTER_BLOCKED = 0.3
Q1_FULL = 0.3
RECEIVER_BUSY = 0.7
RECEIVER_WAITING = 0.5
SENDING = 0.8
SENDING_LOW = 0.5
SILENT = 0.5
RX_BACKLOG_BYTES = 64 * 1024  # mean bytes waiting in the consumer's kernel receive queue

_CAP = re.compile(r"rate cap|\brate\b|\btbf\b|\bhtb\b|[0-9.]+\s*[kMG]bit", re.IGNORECASE)


@dataclass(frozen=True)
class Cause:
    """One of CAUSES, the sentence that says why, and the figures it rests on."""

    cause: str
    why: str
    figures: dict[str, Any] = field(default_factory=dict)
    cannot_tell_apart: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"why": self.why, "cannot_tell_apart": list(self.cannot_tell_apart), **self.figures}


_PHASE = re.compile(r"^phase ([^:]+):")


def shaping_cap(root: Path) -> tuple[str | None, list[str]]:
    """The rate cap lines a run's shaping record says were applied (user space or
    kernel), joined, and the phases they cover ("*" for a line naming no phase);
    (None, []) when there was none or no record."""
    try:
        rec = json.loads((root / "shaping.json").read_text())
    except (OSError, ValueError):
        return None, []
    if not isinstance(rec, dict):
        return None, []
    lines = [x for x in rec.get("applied") or []
             if isinstance(x, str) and _CAP.search(x) and "nothing to shape" not in x]
    phases = []
    for x in lines:
        m = _PHASE.match(x)
        phases.append(m.group(1).strip() if m else "*")
    return ("; ".join(lines) if lines else None), sorted(set(phases))


def _blocked_behind_cap(f: Figures) -> bool:
    """Most of the emitter's backpressure fell in phases with a rate cap."""
    if not f.shaping_cap:
        return False
    if "*" in f.capped_phases:
        return True
    by = f.emitter.sending.blocked_s_by_phase if f.emitter and f.emitter.sending else {}
    total = sum(by.values())
    return total <= 0 or sum(v for p, v in by.items() if p in f.capped_phases) >= 0.5 * total


def _figures(f: Figures) -> dict[str, Any]:
    em, rx, lg = f.emitter, f.receiver, f.emitter.long_gaps if f.emitter else None
    return {
        "emitter_blocked_share": em.blocked_share if em else None,
        "emitter_sending_share": em.sending_share if em else None,
        "emitter_silent_gap_share": lg.share_emitter_silent if lg else None,
        "q1_over_80pct_share": f.q1.share_over_80pct,
        "receiver_busy_share": rx.busy_share,
        "receiver_bytes_per_wakeup": rx.bytes_per_wakeup,
        "receiver_rx_queue_bytes_max": rx.rx_queue_bytes_max,
        "shaping_cap": f.shaping_cap,
        "capped_phases": list(f.capped_phases),
        "blocked_s_by_phase": dict(em.sending.blocked_s_by_phase) if em and em.sending else None,
    }


def _without_emit_log(f: Figures, figs: dict[str, Any], q1_not_full: bool) -> Cause:
    rx = f.receiver
    if rx.measured and (rx.busy_share or 0.0) >= RECEIVER_BUSY and q1_not_full:
        return Cause("receive", f"the receiver thread was busy {rx.busy_share:.0%} of its time (reading and "
                     "copying, not waiting for bytes) while Q1 was not full: the receive path could not read "
                     "faster", figs)
    left = ["producer", "link"] + ([] if rx.measured else ["receive"])
    why = ("no emit log (e.g. a real LCLStreamer as the producer): the producer's own pace and the link "
           "cannot be told apart from the consumer's side, both are bytes that did not arrive sooner")
    if rx.measured:
        why += f"; the receiver thread waited for bytes {1 - (rx.busy_share or 0.0):.0%} of its time, so not the receive path"
    else:
        why += "; the receiver's own timing was not recorded, so the receive path cannot be excluded either"
    return Cause("unknown", why, figs, left)


def _blocked(f: Figures, figs: dict[str, Any], blocked: float) -> Cause:
    """The emitter was held back while Q1 was not full: the receive path or the link."""
    rx = f.receiver
    head = f"the emitter was blocked by backpressure {blocked:.0%} of its time while Q1 was not full"
    if _blocked_behind_cap(f):
        return Cause("link", f"{head}, behind a rate cap ({f.shaping_cap})", figs)
    if not rx.measured:
        return Cause("unknown", f"{head}; the receiver's own timing was not recorded, so a slow link and a "
                     "slow receive path cannot be told apart", figs, ["link", "receive"])
    busy = rx.busy_share or 0.0
    if busy >= RECEIVER_BUSY:
        return Cause("receive", f"{head}, and the consumer's receiver thread was busy {busy:.0%} of its time "
                     "(socket reads and copies): the receive path pushed back", figs)
    backlog = rx.rx_queue_bytes_mean or 0.0
    if backlog >= RX_BACKLOG_BYTES:
        return Cause("receive", f"{head}, and on average {backlog / 1e6:.2f} MB sat in the consumer's kernel "
                     "receive queue, not yet read: the bytes had crossed the link and the receive path "
                     "(socket reads and copies, here competing for the cores) did not take them", figs)
    if busy < RECEIVER_WAITING:
        return Cause("link", f"{head}, yet the receiver waited for bytes {1 - busy:.0%} of its time: the "
                     "bytes were held between them", figs)
    return Cause("unknown", f"{head}; the receiver was busy {busy:.0%} of its time, between waiting and "
                 "saturated", figs, ["link", "receive"])


def network_cause(f: Figures) -> Cause:
    """The cause of a ``network`` verdict (see the module's docstring)."""
    figs = _figures(f)
    q1_not_full = (f.q1.share_over_80pct or 0.0) < Q1_FULL
    em = f.emitter
    if em is None:
        return _without_emit_log(f, figs, q1_not_full)
    blocked, sending = em.blocked_share, em.sending_share
    silent = (em.long_gaps.share_emitter_silent or 0.0) if em.long_gaps else 0.0
    if blocked >= EMITTER_BLOCKED and q1_not_full:
        return _blocked(f, figs, blocked)
    if sending >= SENDING:
        cap = f" behind a rate cap ({f.shaping_cap})" if f.shaping_cap else ""
        return Cause("link", f"the emitter had bytes on the wire {sending:.0%} of its time{cap}: the bytes "
                     "could not go faster", figs)
    if silent >= SILENT or sending < SENDING_LOW:
        return Cause("producer", f"the emitter itself sent no faster: bytes on the wire {sending:.0%} of its "
                     f"time, silent during {silent:.0%} of the long arrival gaps", figs)
    return Cause("unknown", f"the emitter was partly sending ({sending:.0%} of its time), partly idle, and "
                 f"blocked {blocked:.0%}", figs, ["producer", "link"])
