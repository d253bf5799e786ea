"""report.json, report.md and a self-contained report.html (plots embedded as
base64 PNG, no network access needed), plus the random-vs-socket comparison
that ``simstream investigate`` asks for (``compare_report``).

``diagnose_run(dir)`` is the one entry point for a run directory: load ->
evidence -> verdict -> files. It returns the report (the dict written to
report.json). Raises NotARunDir (exit status 2 on the command line).
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from simstream.diagnose.cause import network_cause
from simstream.diagnose.evidence import Evidence, compute_evidence, ks_statistic, pct
from simstream.diagnose.figures import EmitterFigures, Figures, LoopTime
from simstream.diagnose.load import RunData, load_run
from simstream.diagnose.verdict import decide, recommendations, summary_text
from simstream.records.contract import busy_label
from simstream.records.tail import tail_loss

__all__ = ["build_report", "compare_report", "diagnose_run", "key_evidence"]

VERDICT_COLOURS = {"network": "#9467bd", "parse": "#8c564b", "queue": "#7f7f7f", "consumer": "#2ca02c"}
PLOT_TITLES = {
    "q1_occupancy": "Q1 occupancy over time (30 % and 80 % bands)",
    "rates": "Producer arrival rate vs consumer processing rate",
    "gpu_timeline": "Inference device timeline (H2D, compute, D2H per buffer) around the longest "
                    "compute idle gap",
    "stages": "Per-batch stage breakdown",
    "idle_gaps": "Inference device compute idle-gap distribution",
}


def _pc(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.0f} %"


def _num(x: Any, unit: str = "", nd: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{float(x):.{nd}f}{unit}"


def _loop_split(lt: LoopTime) -> str:
    busy = lt.busy or 0.0
    if busy <= 0:
        return ""
    return (f", of which parsing {_pc((lt.parse or 0) / busy)}, Q1 get "
            f"{_pc((lt.q1_get_overhead or 0) / busy)}, inference stage "
            f"{_pc((lt.inference or 0) / busy)}")


def _emitter_line(em: EmitterFigures) -> str:
    sd = em.sending
    rate = sd.emitted_byte_rate_Bps if sd else None
    line = (f"emitter: {_num(rate / 1e6 if rate else None, ' MB/s')} "
            f"emitted, achieved/emitted {_num(sd.achieved_vs_emitted_bytes if sd else None)}, sending "
            f"{_pc(sd.sending_share if sd else None)}, blocked by backpressure "
            f"{_pc(sd.blocked_share if sd else None)} of its time")
    lg = em.long_gaps
    if lg is not None:
        line += (f"; long arrival gaps while the emitter was silent {_pc(lg.share_emitter_silent)}, "
                 f"blocked {_pc(lg.share_emitter_blocked)}, bytes in flight {_pc(lg.share_bytes_in_flight)}")
    return line


def key_evidence(f: Figures) -> list[str]:
    """The handful of figures shown next to the verdict."""
    q1, pb, dev, arr = f.q1, f.costs.per_batch_ms, f.device, f.arrivals
    gaps = dev.idle_gaps
    lines = [
        f"Q1 occupancy: mean {_pc(q1.mean_occupancy)} of {q1.maxsize}; empty "
        f"{_pc(q1.share_empty)}, under 30 % {_pc(q1.share_under_30pct)}, over 80 % "
        f"{_pc(q1.share_over_80pct)} of the time",
        f"arrival rate {_num(arr.rate_bps, '/s', 1)} vs consumer capacity "
        f"{_num(f.capacity.bps, '/s', 1)} (processed {_num(arr.throughput_bps, '/s', 1)})",
        f"{busy_label('loop_busy')} {_pc(f.loop.busy_share)} (waited on an empty Q1 the rest)"
        + _loop_split(f.loop.time_s)
        + f"; receiver side busy {_pc(f.upstream.busy_share)} (putting into Q1 alone "
        f"{_pc(f.upstream.put_busy_share)})",
        f"{busy_label('device_busy', dev.id)} {_pc(dev.busy_any_stream_share)} "
        f"({busy_label('device_compute_busy')} {_pc(dev.busy_compute_share)}); "
        f"compute idle gaps p50 {_num(gaps.p50_ms, ' ms')}, p90 {_num(gaps.p90_ms, ' ms')}, "
        f"max {_num(gaps.max_ms, ' ms')} ({gaps.count} gaps); "
        f"{_pc(dev.idle_share_waiting_on_empty_q1)} of idle time waiting on an empty Q1",
        f"per batch: parse {_num(pb.parse, ' ms')} ({f.parse.location}), Q1 put+get "
        f"overhead {_num(pb.q1_op_overhead, ' ms')}, H2D {_num(pb.h2d, ' ms')}, compute "
        f"{_num(pb.compute, ' ms')}, D2H {_num(pb.d2h, ' ms')}",
        f"arrival burstiness: inter-arrival CV {_num(arr.interarrival_cv)}; "
        f"{arr.long_gaps.count} long gaps, longest {_num(arr.long_gaps.longest_s, ' s')}",
    ]
    if f.emitter is not None:
        lines.append(_emitter_line(f.emitter))
    else:
        lines.append("no emit log: verdict from consumer-side data only"
                     + ("" if f.counts.sequence_numbers else " (no sequence numbers either)"))
    return lines


def lost_at_tail(run: RunData) -> dict[str, Any] | None:
    """Messages the emit log has that never arrived after each rank's last arrival
    (simstream.records.tail), apart from the consumer's mid-stream ``lost``; null
    without an emit log, messages.csv or sequence numbers."""
    if run.emit is None or run.messages is None or "at_close" not in run.emit:
        return run.summary.get("lost_at_tail")
    return tail_loss(run.emit["rank"], run.emit["seq"], run.emit["at_close"],
                     run.messages.get("rank", ()), run.messages.get("seq", ()),
                     emit_epoch=run.emit.get("epoch"), recv_epoch=run.messages.get("epoch"))


def build_report(run: RunData, ev: Evidence) -> dict[str, Any]:
    """The report.json dict."""
    f = ev.figures
    verdict, confidence, reasons = decide(f)
    cause = network_cause(f) if verdict == "network" else None
    if cause is not None:
        reasons = [*reasons, f"cause {cause.cause}: {cause.why}"]
    tail = lost_at_tail(run)
    evidence = key_evidence(f)
    if tail and tail["count"]:
        shown = ", ".join(f"rank {m['rank']} seq {m['seq']}"
                          + (f" ({m['at_close']})" if m["at_close"] else "")
                          for m in tail["messages"][:5])
        more = f", ... ({tail['count'] - 5} more)" if tail["count"] > 5 else ""
        evidence.append(f"lost at the tail: {tail['count']} messages in the emit log never "
                        f"arrived, each after its rank's last arrival ({shown}{more}); "
                        f"{tail['logged_at_close']} logged as lost when the stream closed")
    return {
        "verdict": verdict,
        "confidence": confidence,
        "cause": cause.cause if cause else None,
        "cause_evidence": cause.to_json() if cause else None,
        "network_detail": f"{cause.cause}: {cause.why}" if cause else None,
        "summary": ("The run was cut short (no summary.json): figures rebuilt from the "
                    "CSV files the consumer flushed. " if run.cut_short else "")
        + summary_text(f, verdict, confidence, cause),
        "cut_short": run.cut_short,
        "reasons": reasons,
        "key_evidence": evidence,
        "recommendations": recommendations(f, verdict, cause),
        "lost_at_tail": tail,
        "evidence": ev.to_json(),
        "data_sources": {**run.sources, "profile_read": False},
        "run_dir": str(run.root),
    }


def _img_b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        out.append((prefix, d))
    return out


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.badge{display:inline-block;padding:.2em .7em;border-radius:.4em;color:#fff;font-weight:bold}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}code,pre{background:#f6f6f6}
.key li{margin:.2em 0}.muted{color:#777}"""


def _html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_md(report: dict[str, Any], plots: dict[str, Path], path: Path) -> Path:
    r = report
    lines = [
        f"# Diagnosis: **{r['verdict']}** (confidence {r['confidence']:.2f})",
        "",
        r["summary"],
        "",
        "## Key evidence",
        "",
        *[f"- {x}" for x in r["key_evidence"]],
        "",
        "## Why",
        "",
        *[f"- {x}" for x in r["reasons"]],
        "",
        "## Recommendations",
        "",
        *[f"- {x}" for x in r["recommendations"]],
        "",
        *_extras_md(r),
    ]
    if plots:
        lines += ["## Plots", ""]
        for name, p in plots.items():
            lines += [f"### {PLOT_TITLES.get(name, name)}", "", f"![{name}]({p.relative_to(path.parent).as_posix()})", ""]
    lines += ["## All evidence", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in _flatten(r["evidence"])]
    lines += ["", "## Data sources", "", *[f"- {k}: {v}" for k, v in r["data_sources"].items()], ""]
    path.write_text("\n".join(lines))
    return path


def write_html(report: dict[str, Any], plots: dict[str, Path], path: Path) -> Path:
    r = report
    e = html.escape
    colour = VERDICT_COLOURS.get(r["verdict"], "#333")
    parts = [
        f"<h1>Diagnosis: <span class=\"badge\" style=\"background:{colour}\">{e(r['verdict'])}</span> "
        f"<span class=\"muted\">confidence {r['confidence']:.2f}</span></h1>",
        f"<p>{e(r['summary'])}</p>",
        "<h2>Key evidence</h2><ul class=\"key\">" + "".join(f"<li>{e(x)}</li>" for x in r["key_evidence"]) + "</ul>",
        "<h2>Why</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in r["reasons"]) + "</ul>",
        "<h2>Recommendations</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in r["recommendations"]) + "</ul>",
        _extras_html(r),
    ]
    for name, p in plots.items():
        parts.append(f"<h3>{e(PLOT_TITLES.get(name, name))}</h3><img alt=\"{e(name)}\" src=\"{_img_b64(p)}\">")
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in _flatten(r["evidence"]))
    parts.append(f"<details><summary>All evidence</summary><table><tr><th>figure</th><th>value</th></tr>{rows}</table></details>")
    src = "".join(f"<li>{e(k)}: {e(str(v))}</li>" for k, v in r["data_sources"].items())
    parts.append(f"<details><summary>Data sources</summary><ul>{src}</ul></details>")
    parts.append("<p class=\"muted\">trace.json in the run directory opens in Perfetto (ui.perfetto.dev).</p>")
    path.write_text(_html_page(f"simstream diagnosis: {r['verdict']}", "\n".join(parts)))
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _run_extras(root: Path) -> dict[str, Any]:
    """shaping.json and verify.json of a run (``simstream run``), when present: shown
    in the report as they are; the verdict never reads them."""
    out: dict[str, Any] = {}
    for key, name in (("shaping", "shaping.json"), ("verify", "verify.json")):
        try:
            out[key] = json.loads((root / name).read_text())
        except (OSError, ValueError):
            continue
    return out


def _extras_md(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    sh = r.get("shaping")
    if isinstance(sh, dict):
        mode = sh.get("mode", "?")
        head = f"kernel ({sh.get('layout')} on {sh.get('interface')})" if mode == "kernel" else mode
        lines += ["## Shaping", "", f"Shaping: **{head}**", ""]
        lines += [f"- applied: {x}" for x in sh.get("applied") or []]
        lines += [f"- NOT applied: {x}" for x in sh.get("not_applied") or []] or ["- not applied: nothing"]
        changes = sh.get("phase_changes") or []
        if changes:
            lines += ["", "| phase | at (s) | late (ms) | tc command (ms) | took effect (ms) |",
                      "| --- | --- | --- | --- | --- |"]
            lines += [f"| {c.get('phase')} | {_num(c.get('at_s'), '', 3)} | {_num((c.get('late_s') or 0) * 1e3, '', 1)} | "
                      f"{_num((c.get('command_s') or 0) * 1e3, '', 1)} | "
                      f"{'n/a' if c.get('took_effect_s') is None else _num(c['took_effect_s'] * 1e3, '', 1)} |"
                      for c in changes]
        lines.append("")
    ver = r.get("verify")
    if isinstance(ver, dict):
        lines += ["## Capture verification", "", f"Verification: **{ver.get('verdict', '?')}** "
                  f"({len(ver.get('checks') or [])} checks, {ver.get('failed_checks', 0)} failed)"
                  + (f"; {ver['capture']}" if ver.get("capture") else ""), "",
                  "| check | where | measured | expected | status | note |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c.get('name')} | {c.get('where')} | {c.get('measured')} | {c.get('expected')} | "
                  f"{c.get('status')} | {c.get('note', '')} |" for c in ver.get("checks") or []]
        lines.append("")
    return lines


def _extras_html(r: dict[str, Any]) -> str:
    e = html.escape
    parts = []
    sh = r.get("shaping")
    if isinstance(sh, dict):
        items = [f"<li>applied: {e(str(x))}</li>" for x in sh.get("applied") or []]
        items += [f"<li><b>NOT applied</b>: {e(str(x))}</li>" for x in sh.get("not_applied") or []]
        rows = "".join(
            f"<tr><td>{e(str(c.get('phase')))}</td><td>{_num(c.get('at_s'), '', 3)}</td>"
            f"<td>{'n/a' if c.get('took_effect_s') is None else _num(c['took_effect_s'] * 1e3, '', 1)}</td></tr>"
            for c in sh.get("phase_changes") or [])
        parts.append(f"<h2>Shaping: {e(str(sh.get('mode')))}</h2><ul>{''.join(items)}</ul>"
                     + (f"<table><tr><th>phase</th><th>at s</th><th>took effect ms</th></tr>{rows}</table>"
                        if rows else ""))
    ver = r.get("verify")
    if isinstance(ver, dict):
        rows = "".join("<tr>" + "".join(f"<td>{e(str(c.get(k, '')))}</td>" for k in
                                        ("name", "where", "measured", "expected", "status", "note")) + "</tr>"
                       for c in ver.get("checks") or [])
        parts.append(f"<h2>Capture verification: {e(str(ver.get('verdict')))}</h2><table><tr><th>check</th>"
                     f"<th>where</th><th>measured</th><th>expected</th><th>status</th><th>note</th></tr>{rows}</table>")
    return "\n".join(parts)


def diagnose_run(run_dir: str | Path, *, plots: bool = True, trace: bool = True) -> dict[str, Any]:
    """Diagnose a run directory and write report.json/.md/.html, trace.json and
    plots/*.png into it. Returns the report dict. Raises NotARunDir."""
    t_begin = time.perf_counter()
    root = Path(run_dir)
    run = load_run(root)
    ev = compute_evidence(run)
    report = build_report(run, ev)
    report.update(_run_extras(root))
    plot_files: dict[str, Path] = {}
    if plots:
        try:
            from simstream.diagnose.plots import write_plots
        except ModuleNotFoundError as e:  # matplotlib is the optional `report` extra
            report["data_sources"]["plots"] = (
                f"skipped: {e.name} is not installed (pip install 'simstream[report]')")
        else:
            plot_files = write_plots(ev, root / "plots")
    files = {"report.json": root / "report.json", "report.md": root / "report.md",
             "report.html": root / "report.html"}
    if trace:
        from simstream.diagnose.trace import write_trace

        files["trace.json"] = write_trace(ev, root / "trace.json")
    report["files"] = {k: str(v) for k, v in files.items()} | {
        f"plots/{p.name}": str(p) for p in plot_files.values()}
    write_md(report, plot_files, files["report.md"])
    write_html(report, plot_files, files["report.html"])
    report["diagnose_seconds"] = round(time.perf_counter() - t_begin, 3)
    files["report.json"].write_text(json.dumps(report, indent=2, default=_json_default))
    return report


# --------------------------------------------------------------------------
# random vs socket


# practical equivalence of a stage's times in the two modes: the medians may differ
# by the larger of MEDIAN_ABS_MS and MEDIAN_REL of random mode's median, the p90s by
# the larger of P90_ABS_MS and P90_REL (tails vary more); KS is reported, not decisive
MARGINS = {"median_abs_ms": 0.05, "median_rel": 0.10, "p90_abs_ms": 0.10, "p90_rel": 0.25}


def _within(a_ms: float | None, b_ms: float | None, abs_ms: float, rel: float) -> tuple[bool, float | None]:
    if a_ms is None or b_ms is None:
        return False, None
    margin = max(abs_ms, rel * abs(a_ms))
    return abs(b_ms - a_ms) <= margin, round(margin, 4)


def _stage_compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    ma, mb = pct(a, 50), pct(b, 50)
    pa, pb = pct(a, 90), pct(b, 90)
    ks = ks_statistic(a, b)
    rel = (mb - ma) / ma if ma and mb is not None and ma > 0 else None

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1e3, 4)

    same_p50, margin = _within(ms(ma), ms(mb), MARGINS["median_abs_ms"], MARGINS["median_rel"])
    same_p90, margin90 = _within(ms(pa), ms(pb), MARGINS["p90_abs_ms"], MARGINS["p90_rel"])
    return {
        "random_p50_ms": ms(ma),
        "socket_p50_ms": ms(mb),
        "random_p90_ms": ms(pa),
        "socket_p90_ms": ms(pb),
        "median_change": None if rel is None else round(rel, 4),
        "median_margin_ms": margin,
        "p90_margin_ms": margin90,
        "ks": None if ks is None else round(ks, 4),
        "same": bool(same_p50 and same_p90),
    }


def _mean_ms(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean() * 1e3) if x.size else 0.0


_WHERE_LABELS = {
    "parse_ms": "parsing", "q1_wait_empty_ms": "waiting on an empty Q1 (data not there yet)",
    "q1_get_op_ms": "Q1 get overhead", "q1_put_op_ms": "Q1 put overhead",
    "h2d_ms": "H2D", "compute_ms": "compute", "d2h_ms": "D2H",
}


def _run_line(run_dir: str | Path, ev: Evidence) -> dict[str, Any]:
    """One mode's verdict and headline figures for compare.json."""
    v, c, _ = decide(ev.figures)
    f = ev.figures
    return {
        "run_dir": str(run_dir), "verdict": v, "confidence": c,
        "throughput_bps": f.arrivals.throughput_bps, "capacity_bps": f.capacity.bps,
        "gpu_busy_share": f.device.busy_any_stream_share,
        "q1_mean_occupancy": f.q1.mean_occupancy,
        "loop_busy_share": f.loop.busy_share,
    }


def _per_batch(ev: Evidence) -> dict[str, float]:
    """Mean ms per batch in each place the loop's time goes."""
    s = ev.series
    cs, ce = s["compute_union"]
    gaps = cs[1:] - ce[:-1] if cs.size > 1 else np.empty(0)
    n = max(s["parse"].size, 1)
    return {
        "parse_ms": _mean_ms(s["parse"]),
        "q1_wait_empty_ms": _mean_ms(s["get_wait_in_run"]),
        "q1_get_op_ms": _mean_ms(s["get_over"]),
        "q1_put_op_ms": _mean_ms(s["put_over"]),
        "h2d_ms": _mean_ms(s["h2d"]),
        "compute_ms": _mean_ms(s["compute"]),
        "d2h_ms": _mean_ms(s["d2h"]),
        "gpu_idle_per_batch_ms": float(gaps[gaps > 0].sum() * 1e3 / n) if gaps.size else 0.0,
    }


def _gap(where: dict[str, dict[str, float]], verdicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where the socket run loses the most time per batch against random mode."""
    deltas = {k: where["socket"][k] - where["random"][k] for k in _WHERE_LABELS}
    gap_key = max(deltas, key=lambda k: deltas[k])
    thr_r = verdicts["random"]["throughput_bps"] or 0.0
    thr_s = verdicts["socket"]["throughput_bps"] or 0.0
    return {
        "stage": gap_key,
        "description": _WHERE_LABELS[gap_key],
        "extra_ms_per_batch": round(deltas[gap_key], 4),
        "deltas_ms_per_batch": {k: round(v, 4) for k, v in deltas.items()},
        "throughput_ratio_socket_vs_random": round(thr_s / thr_r, 4) if thr_r else None,
        # a gap smaller than 0.05 ms or 5 % of random mode's per-batch time is noise
        "found": deltas[gap_key] > max(0.05, 0.05 * sum(where["random"][k] for k in _WHERE_LABELS)),
    }


def _compare_texts(stages: dict[str, dict[str, Any]], same: bool, gap: dict[str, Any],
                   verdicts: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The answer (same inference stage?) and the summary paragraph."""
    rule = (f"same = medians within max({MARGINS['median_abs_ms']} ms, {MARGINS['median_rel']:.0%}) and "
            f"p90s within max({MARGINS['p90_abs_ms']} ms, {MARGINS['p90_rel']:.0%}) of random mode's")
    if same:
        answer = ("Yes: the buffered inference stage is the same in both modes (H2D/compute/D2H "
                  + ", ".join(f"{k} median {v['random_p50_ms']} vs {v['socket_p50_ms']} ms"
                              for k, v in stages.items()) + f"; {rule}).")
    else:
        diff = [k for k, v in stages.items() if not v["same"]]
        answer = ("No: the buffered inference stage differs between the modes in "
                  + ", ".join(f"{k} (median {stages[k]['random_p50_ms']} vs {stages[k]['socket_p50_ms']} ms, "
                              f"margin {stages[k]['median_margin_ms']} ms; p90 {stages[k]['random_p90_ms']} vs "
                              f"{stages[k]['socket_p90_ms']} ms, margin {stages[k]['p90_margin_ms']} ms)"
                              for k in diff) + f"; {rule}.")
    thr_r = verdicts["random"]["throughput_bps"] or 0.0
    thr_s = verdicts["socket"]["throughput_bps"] or 0.0
    ratio = gap["throughput_ratio_socket_vs_random"]
    summary = (
        f"Socket mode processed {thr_s:.1f} batches/s against {thr_r:.1f}/s in random mode"
        + (f" ({ratio:.0%})" if ratio else "")
        + (f". The socket run loses most time in {gap['description']}: {gap['extra_ms_per_batch']:+.2f} ms per "
           "batch over random mode" if gap["found"] else ". No stage costs the socket run measurably more per batch")
        + f". Socket-mode verdict: {verdicts['socket']['verdict']} "
        f"(confidence {verdicts['socket']['confidence']:.2f}); random mode: {verdicts['random']['verdict']}."
    )
    return answer, summary


_STAGE_HEADINGS = ("stage", "random median (ms)", "socket median (ms)", "median change (socket vs random)",
                   "median margin (ms)", "random p90 (ms)", "socket p90 (ms)", "p90 margin (ms)",
                   "KS distance (shown, not deciding)", "same within the margins")
_COMPARE_RULE = (f"A stage counts as the same in both modes when its socket-mode median is within "
                 f"max({MARGINS['median_abs_ms']} ms, {MARGINS['median_rel']:.0%} of random mode's) and its p90 "
                 f"within max({MARGINS['p90_abs_ms']} ms, {MARGINS['p90_rel']:.0%}); the KS distance between the "
                 "two distributions is shown for reference.")


def _stage_row(k: str, v: dict[str, Any]) -> list[Any]:
    change = "n/a" if v["median_change"] is None else f"{v['median_change']:+.1%}"
    return [k, v["random_p50_ms"], v["socket_p50_ms"], change, v["median_margin_ms"], v["random_p90_ms"],
            v["socket_p90_ms"], v["p90_margin_ms"], v["ks"], "yes" if v["same"] else "no"]


def _write_compare_md(result: dict[str, Any], plots: dict[str, Path], out: Path) -> None:
    stages, where, verdicts = result["stages"], result["where_time_goes"], (result["random"], result["socket"])
    md = ["# Random vs socket mode", "", f"**{result['answer']}**", "", result["summary"], "",
          "## Buffered inference stage", "", _COMPARE_RULE, "",
          "| " + " | ".join(_STAGE_HEADINGS) + " |", "|" + " --- |" * len(_STAGE_HEADINGS)]
    md += ["| " + " | ".join(str(c) for c in _stage_row(k, v)) + " |" for k, v in stages.items()]
    md += ["", "## Where the time goes (mean ms per batch)", "", "| where the loop's time goes | random (ms per batch) | socket (ms per batch) | socket - random (ms) |",
           "| --- | --- | --- | --- |"]
    md += [f"| {_WHERE_LABELS.get(k, k)} | {where['random'][k]} | {where['socket'][k]} | "
           f"{where['socket'][k] - where['random'][k]:+.3f} |" for k in where["random"]]
    md += ["", "## Runs", "", "| figure | random | socket |", "| --- | --- | --- |"]
    md += [f"| {k} | {verdicts[0][k]} | {verdicts[1][k]} |" for k in verdicts[0]]
    md += ["", "## Plots", ""] + [f"![{n}]({p.relative_to(out).as_posix()})" for n, p in plots.items()] + [""]
    (out / "compare.md").write_text("\n".join(md))


def _write_compare_html(result: dict[str, Any], plots: dict[str, Path], out: Path) -> None:
    e = html.escape
    stages, where = result["stages"], result["where_time_goes"]
    trs = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in _stage_row(k, v)) + "</tr>"
                  for k, v in stages.items())
    heads = "".join(f"<th>{e(h)}</th>" for h in _STAGE_HEADINGS)
    wrows = "".join(
        f"<tr><td>{e(_WHERE_LABELS.get(k, k))}</td><td>{where['random'][k]}</td><td>{where['socket'][k]}</td>"
        f"<td>{where['socket'][k] - where['random'][k]:+.3f}</td></tr>" for k in where["random"])
    body = (f"<h1>Random vs socket mode</h1><p><b>{e(result['answer'])}</b></p><p>{e(result['summary'])}</p>"
            f"<h2>Buffered inference stage</h2><p>{e(_COMPARE_RULE)}</p><table><tr>{heads}</tr>{trs}</table>"
            "<h2>Where the time goes (mean ms per batch)</h2><table><tr><th>where the loop's time goes</th><th>random (ms per batch)</th><th>socket (ms per batch)</th>"
            f"<th>socket - random</th></tr>{wrows}</table>"
            + "".join(f"<h3>{e(n)}</h3><img alt=\"{e(n)}\" src=\"{_img_b64(p)}\">" for n, p in plots.items()))
    (out / "compare.html").write_text(_html_page("simstream: random vs socket", body))


def compare_report(random_dir: str | Path, socket_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Random vs socket side by side: is the buffered inference stage the same in
    both modes, and where does the socket run lose time? Writes compare.json,
    compare.md, compare.html and plots/compare_*.png into out_dir; returns the
    compare.json dict (keys ``answer``, ``summary``, ``same_inference_stage``,
    ``stages``, ``where_time_goes``, ``gap``, ``random``, ``socket``).
    Raises NotARunDir for either directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dirs = {"random": random_dir, "socket": socket_dir}
    evs = {mode: compute_evidence(load_run(d)) for mode, d in dirs.items()}
    verdicts = {mode: _run_line(dirs[mode], ev) for mode, ev in evs.items()}
    stages = {st: _stage_compare(evs["random"].series[st], evs["socket"].series[st])
              for st in ("h2d", "compute", "d2h")}
    same = all(s["same"] for s in stages.values())
    where = {m: {k: round(v, 4) for k, v in _per_batch(ev).items()} for m, ev in evs.items()}
    gap = _gap(where, verdicts)
    answer, summary = _compare_texts(stages, same, gap, verdicts)
    result: dict[str, Any] = {
        "answer": answer, "summary": summary, "same_inference_stage": same, "margins": MARGINS, "stages": stages,
        "where_time_goes": where, "gap": gap, "random": verdicts["random"], "socket": verdicts["socket"],
    }
    from simstream.diagnose.plots import write_compare_plots

    plots = write_compare_plots(evs, out / "plots")
    result["files"] = {"compare.json": str(out / "compare.json"), "compare.md": str(out / "compare.md"),
                       "compare.html": str(out / "compare.html")} | {f"plots/{p.name}": str(p) for p in plots.values()}
    (out / "compare.json").write_text(json.dumps(result, indent=2, default=_json_default))
    _write_compare_md(result, plots, out)
    _write_compare_html(result, plots, out)
    return result
