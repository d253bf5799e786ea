"""Does a report say only what its evidence shows? ``check(report)`` lists every
sentence of report.json (summary, reasons, recommendations, network_detail)
whose claim does not follow from the report's own ``evidence`` and
``cause_evidence``; an empty list means consistent.

Run by ``simstream diagnose --selftest`` on its synthetic run directories and
by the test suite on every report.json it produces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simstream.diagnose.cause import CAUSES, EMITTER_BLOCKED, Q1_FULL, RECEIVER_BUSY
from simstream.diagnose.verdict import (
    LOOP_SATURATED,
    Q1_FULL_SATURATED,
    UPSTREAM_SATURATED,
    VERDICTS,
)

__all__ = ["BUSY_TOLERANCE", "busy_disagreements", "check", "check_file"]

#: the busy figures of summary.json (running unions in the consumer) and of
#: report.json (exact unions from the CSV files) agree to within this
BUSY_TOLERANCE = 0.02

_PCT = r"(\d+)%"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _texts(r: dict[str, Any]) -> Iterator[str]:
    yield r.get("summary") or ""
    yield from r.get("reasons") or []
    yield from r.get("recommendations") or []
    if r.get("network_detail"):
        yield r["network_detail"]


def _pct_claims(text: str, phrase: str) -> list[int]:
    return [int(m) for m in re.findall(re.escape(phrase) + r"\s*" + _PCT, text)]


def _verdict_rules(r: dict[str, Any], ev: dict[str, Any]) -> list[str]:
    out: list[str] = []
    v = r.get("verdict")
    if v not in VERDICTS:
        return [f"verdict {v!r} is not one of {VERDICTS}"]
    loop, up = _num(ev.get("loop_busy_share")), _num(ev.get("upstream_busy_share"))
    if not ev.get("batches_processed") or loop is None or up is None:
        return out
    full = _num((ev.get("q1") or {}).get("share_over_80pct")) or 0.0
    if loop >= LOOP_SATURATED and v == "network":
        out.append(f"verdict network although the inference loop was busy {loop:.0%} (saturated)")
    if full >= Q1_FULL_SATURATED and v == "network":
        out.append(f"verdict network although Q1 was over 80 % full {full:.0%} of the run")
    if v == "network" and up >= UPSTREAM_SATURATED:
        out.append(f"verdict network although the receiver side (parser threads, putting into Q1) was "
                   f"busy {up:.0%} (saturated)")
    if loop < LOOP_SATURATED and up < UPSTREAM_SATURATED and full < Q1_FULL_SATURATED and v != "network":
        out.append(f"verdict {v} although neither the loop ({loop:.0%}) nor the receiver side ({up:.0%}) "
                   "were saturated")
    return out


def _cause_rules(r: dict[str, Any], ev: dict[str, Any]) -> list[str]:
    v, cause, ce = r.get("verdict"), r.get("cause"), r.get("cause_evidence")
    if v != "network":
        return [] if cause is None else [f"a cause ({cause}) on a {v} verdict"]
    if cause not in CAUSES or not isinstance(ce, dict):
        return [f"network verdict without a cause from {CAUSES} and its evidence"]
    out = []
    em, rx, q1 = ev.get("emitter") or {}, ev.get("receiver") or {}, ev.get("q1") or {}
    pairs = (("emitter_blocked_share", em.get("blocked_share")), ("receiver_busy_share", rx.get("busy_share")),
             ("q1_over_80pct_share", q1.get("share_over_80pct")), ("shaping_cap", ev.get("shaping_cap")))
    out += [f"cause_evidence.{k} = {ce.get(k)!r} but the evidence says {want!r}"
            for k, want in pairs if ce.get(k) != want]
    if cause == "receive":
        blocked, busy = _num(ce.get("emitter_blocked_share")), _num(ce.get("receiver_busy_share"))
        q1_full = _num(ce.get("q1_over_80pct_share")) or 0.0
        if not ((blocked is not None and blocked >= EMITTER_BLOCKED) or (busy is not None and busy >= RECEIVER_BUSY)):
            out.append("cause receive without backpressure on the emitter or a busy receiver")
        if q1_full >= Q1_FULL:
            out.append(f"cause receive although Q1 was over 80 % full {q1_full:.0%} of the run")
    if cause == "unknown" and not ce.get("cannot_tell_apart"):
        out.append("cause unknown without saying which causes cannot be told apart")
    detail = r.get("network_detail") or ""
    if not detail.startswith(f"{cause}:"):
        out.append(f"network_detail {detail[:40]!r} does not name the cause {cause}")
    return out


def _sentence_rules(r: dict[str, Any], ev: dict[str, Any]) -> list[str]:
    out = []
    v, cause = r.get("verdict"), r.get("cause")
    sentences = (r.get("summary") or "").split(". ")
    if r.get("cut_short") and sentences[0].startswith("The run was cut short"):
        sentences = sentences[1:]  # the note on a run cut short comes before the verdict
    first = sentences[0] if sentences else ""
    if not first.startswith(f"Verdict {v}"):
        out.append(f"the first sentence does not name the verdict {v}: {first[:60]!r}")
    if v == "network" and f"cause {cause}" not in first:
        out.append(f"the first sentence does not name the cause {cause}: {first[:80]!r}")
    em, rx = ev.get("emitter") or {}, ev.get("receiver") or {}
    pushed_back = ((_num(em.get("blocked_share")) or 0.0) >= EMITTER_BLOCKED
                   or (_num(rx.get("busy_share")) or 0.0) >= RECEIVER_BUSY)
    loop, gpu = _num(ev.get("loop_busy_share")), _num(ev.get("gpu_busy_any_stream_share"))
    for t in _texts(r):
        if "bandwidth cap" in t and not ev.get("shaping_cap"):
            out.append(f"claims a bandwidth cap with no rate cap in the shaping record: {t[:80]!r}")
        if "link is saturated" in t and cause != "link":
            out.append(f"claims a saturated link with cause {cause}: {t[:80]!r}")
        if "nothing in the consumer was saturated" in t and pushed_back:
            out.append(f"says nothing in the consumer was saturated although backpressure was measured: {t[:80]!r}")
        if "not the consumer" in t and cause == "receive":
            out.append(f"blames anything but the consumer with cause receive: {t[:80]!r}")
        for claim in _pct_claims(t, "the inference loop was busy"):
            if loop is not None and abs(claim - round(100 * loop)) > 1:
                out.append(f"loop busy {claim}% in the text, {loop:.0%} in the evidence")
        for claim in re.findall(r"The (?:GPU|CPU|device|inference device \([^)]*\)) was busy " + _PCT, t):
            if gpu is not None and abs(int(claim) - round(100 * gpu)) > 1:
                out.append(f"device busy {claim}% in the text, {gpu:.0%} in the evidence")
    return out


def check(report: dict[str, Any]) -> list[str]:
    """Every claim of the report that its evidence does not back; [] when none."""
    ev = report.get("evidence")
    if not isinstance(ev, dict):
        return ["report.json has no evidence object"]
    return _verdict_rules(report, ev) + _cause_rules(report, ev) + _sentence_rules(report, ev)


def busy_disagreements(report: dict[str, Any], summary: dict[str, Any],
                       tol: float = BUSY_TOLERANCE) -> list[str]:
    """Each busy figure (simstream.records.contract.BUSY_FIGURES) whose value in the
    consumer's summary.json and in the report's evidence differ by more than ``tol``;
    a figure missing on either side is not compared."""
    from simstream.records.contract import BUSY_FIGURES

    ev = report.get("evidence") or {}
    out = []
    for key in BUSY_FIGURES:
        a, b = _num(summary.get(key)), _num(ev.get(key))
        if a is not None and b is not None and abs(a - b) > tol:
            out.append(f"{key} {a:.3f} in summary.json, {b:.3f} in report.json")
    return out


def check_file(path: str | Path) -> list[str]:
    """check() on a report.json file."""
    import json

    return check(json.loads(Path(path).read_text()))
