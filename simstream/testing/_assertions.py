"""Assertions over a run: accounting, loss, verdict, starvation.

Each takes a *run*: what ``simstream_run`` returns (a :class:`RunReport`), what
``simstream_consumer`` returns (a ``ConsumerRun``), or a run directory's path.
The emitter's side comes from the run directory's ``emit.jsonl`` when there is
one, else from ``emitter=`` (an ``EmitterHandle`` or a list of records).
Failures raise AssertionError naming the first discrepancy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["assert_accounted", "assert_no_loss", "assert_no_starvation", "assert_verdict",
           "idle_share", "report_of"]


def _consumer(run: Any) -> Any:
    from simstream.testing._consumer import ConsumerRun, read_consumer_run

    if isinstance(run, ConsumerRun):
        return run
    consumer = getattr(run, "consumer", None)
    if isinstance(consumer, ConsumerRun):
        return consumer
    if isinstance(run, (str, Path)):
        return read_consumer_run(run)
    raise TypeError(f"expected a run (simstream_run's or simstream_consumer's result, or a run "
                    f"directory), got {type(run).__name__}")


def _emit_records(run: Any, emitter: Any) -> list[Any] | None:
    from simstream.testing._emitter import EmitRecord, read_emit_records

    if emitter is not None:
        recs = emitter.records if hasattr(emitter, "records") else list(emitter)
        return [r if isinstance(r, EmitRecord) else EmitRecord.from_dict(r) for r in recs]
    own = getattr(run, "emit_records", None)
    if own is not None:
        return list(own)
    path = Path(_consumer(run).run_dir) / "emit.jsonl"
    return read_emit_records(path) if path.exists() else None


def assert_accounted(run: Any, emitter: Any = None) -> dict[str, int]:
    """Every message the emitter delivered was received and then processed or
    quarantined; the consumer's own books balance.

    Checks, in order: ``received == processed + quarantined`` in summary.json;
    one messages.csv row per received message; one batches.csv row per
    processed message; then, where the emit log is known, every attempt it
    calls ``delivered`` matched by a received (rank, seq) (a duplicate's copy
    by a second row; a delivered message too damaged to carry its numbers by a
    quarantined row without them). Returns the counts it compared. Raises
    AssertionError naming the first discrepancy.
    """
    __tracebackhide__ = True
    c = _consumer(run)
    s = c.summary
    for key in ("received", "processed", "quarantined"):
        if not isinstance(s.get(key), int):
            raise AssertionError(f"summary.json in {c.run_dir} has no integer {key!r}")
    if s["received"] != s["processed"] + s["quarantined"]:
        raise AssertionError(f"the consumer's books do not balance: received {s['received']} != "
                             f"processed {s['processed']} + quarantined {s['quarantined']}")
    if len(c.messages) != s["received"]:
        raise AssertionError(f"messages.csv has {len(c.messages)} rows but summary.json says "
                             f"{s['received']} messages were received")
    statuses = Counter(m.get("status") for m in c.messages)
    if statuses["processed"] != s["processed"] or statuses["quarantined"] != s["quarantined"]:
        raise AssertionError(f"messages.csv says processed {statuses['processed']}, quarantined "
                             f"{statuses['quarantined']}; summary.json says {s['processed']} and "
                             f"{s['quarantined']}")
    if len(c.batches) != s["processed"]:
        raise AssertionError(f"batches.csv has {len(c.batches)} rows for {s['processed']} "
                             "processed messages")
    out = {"received": s["received"], "processed": s["processed"],
           "quarantined": s["quarantined"]}
    records = _emit_records(run, emitter)
    if records is None:
        return out
    delivered = [r for r in records if r.outcome == "delivered"]
    got = Counter((m.get("rank"), m.get("seq")) for m in c.messages
                  if m.get("rank") is not None and m.get("seq") is not None)
    unnumbered = sum(1 for m in c.messages
                     if (m.get("rank") is None or m.get("seq") is None)
                     and m.get("status") == "quarantined")
    missing = []
    for r in delivered:
        if got[(r.rank, r.seq)] > 0:
            got[(r.rank, r.seq)] -= 1
        else:
            missing.append(r)
    if len(missing) > unnumbered:
        first = missing[unnumbered] if unnumbered else missing[0]
        faults = f" (faults: {', '.join(first.faults)})" if first.faults else ""
        raise AssertionError(
            f"rank {first.rank} seq {first.seq} was delivered by the emitter{faults} on "
            f"{first.url} but the consumer never received it; {len(missing)} delivered "
            f"message(s) unaccounted for, of {len(delivered)} delivered "
            f"({unnumbered} quarantined without numbers could stand for some)")
    out.update(delivered=len(delivered), attempts=len(records))
    return out


def assert_no_loss(run: Any, emitter: Any = None) -> None:
    """Nothing was lost: no emit attempt ended ``lost`` or ``cut``, and the consumer's
    sequence ledger counts no missing sequence number. Raises AssertionError."""
    __tracebackhide__ = True
    c = _consumer(run)
    records = _emit_records(run, emitter) or []
    bad = [r for r in records if r.outcome != "delivered"]
    if bad:
        r = bad[0]
        raise AssertionError(f"{len(bad)} emit attempt(s) did not complete; the first: rank "
                             f"{r.rank} seq {r.seq} {r.outcome}"
                             + (f" (faults: {', '.join(r.faults)})" if r.faults else ""))
    lost = c.summary.get("lost")
    if lost:
        raise AssertionError(f"the consumer's ledger counts {lost} lost message(s) "
                             f"(sequence numbers that never arrived)")


def report_of(run: Any) -> dict[str, Any]:
    """The diagnosis of a run: its report, computed (without plots) if it has none yet."""
    rep = getattr(run, "report", None)
    if isinstance(rep, dict) and rep:
        return rep
    from simstream.diagnose import diagnose_run

    return diagnose_run(_consumer(run).run_dir, plots=False, trace=False)


def assert_verdict(run: Any, expected: str, *, min_confidence: float = 0.0) -> dict[str, Any]:
    """The diagnosis names ``expected`` (network, parse, queue or consumer) with at
    least ``min_confidence`` (0..1). Returns the report. Raises AssertionError with
    the report's summary and reasons; ValueError for an unknown verdict name."""
    __tracebackhide__ = True
    from simstream.diagnose.verdict import VERDICTS

    if expected not in VERDICTS:
        raise ValueError(f"expected verdict {expected!r} is not one of {', '.join(VERDICTS)}")
    rep = report_of(run)
    verdict, conf = rep.get("verdict"), float(rep.get("confidence") or 0.0)
    why = "; ".join(rep.get("reasons") or [])
    if verdict != expected:
        raise AssertionError(f"verdict {verdict!r} (confidence {conf:.2f}), expected "
                             f"{expected!r}: {rep.get('summary', '')} [{why}]")
    if conf < min_confidence:
        raise AssertionError(f"verdict {verdict!r} as expected, but confidence {conf:.2f} < "
                             f"{min_confidence:.2f}: {why}")
    return rep


def idle_share(run: Any) -> float:
    """The share of the run the inference loop waited on an empty Q1 (0..1), from the
    diagnosis' ``loop_busy_share``. Raises AssertionError when no batch was processed."""
    __tracebackhide__ = True
    ev = report_of(run).get("evidence") or {}
    busy = ev.get("loop_busy_share")
    if busy is None:
        raise AssertionError("the run has no loop_busy_share: no batch was processed")
    return max(0.0, 1.0 - float(busy))


def assert_no_starvation(run: Any, *, max_idle_share: float = 0.15) -> float:
    """The consumer's inference loop waited on an empty Q1 for at most
    ``max_idle_share`` of the run (0.15: the verdict's own starvation line).
    Returns the idle share. Raises AssertionError."""
    __tracebackhide__ = True
    share = idle_share(run)
    if share > max_idle_share:
        rep = report_of(run)
        raise AssertionError(f"the consumer starved: its loop waited on an empty Q1 for "
                             f"{share:.1%} of the run (max {max_idle_share:.1%}); verdict "
                             f"{rep.get('verdict')!r}: {rep.get('summary', '')}")
    return share
