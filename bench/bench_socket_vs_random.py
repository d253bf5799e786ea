"""Socket mode vs random mode: the same consumer, the same model and batch, fed
by an uncapped emitter on the same host or by batches it makes itself.

The issue's target: socket mode reaches >= 90 % of random-mode throughput. Each
pair of runs is measured back to back in one invocation; the figure is the ratio.

    python bench/bench_socket_vs_random.py --out runs/bench-svr --device cuda \\
        --batch 16 --shape 1,1920,1920 --model peaknet --size production --seconds 30

Writes ``results.json`` and ``results.md`` to --out and prints the table. The
runs themselves (with their reports) stay under --out/<case>/{random,socket}.

``--layouts production,fast`` runs the socket side once per consumer layout
(``consumer.layout``) against the same random run; ``--streams N`` gives the
emitter N ranks in N processes: all on one address for ``production``, one
address each for ``fast`` (one socket and receiver thread per address). The
socket run of the first layout keeps the directory name ``socket``; the others
are ``socket-<layout>``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simstream.profile import dump_profile, find_profile, load_profile  # noqa: E402
from simstream.runner.core import run_profile  # noqa: E402


def _rate(summary: dict[str, Any]) -> float:
    t = summary.get("throughput") or {}
    return float(t.get("samples_per_s") or 0.0)


def _profile(args: argparse.Namespace, model: dict[str, Any], label: str, layout: str) -> Any:
    base = load_profile(find_profile(args.profile))
    shape = [int(x) for x in args.shape.split(",")]
    n = args.streams
    spread = {}
    if layout == "fast" and n > 1:
        # placeholders: the runner binds free ports, one per address, and spreads the ranks
        spread = {"transport.urls": [f"tcp://127.0.0.1:{12321 + i}" for i in range(n)],
                  "transport.url_spread": "rank"}
    return base.with_overrides({
        "name": f"svr-{label}",
        "source.batch_size": args.batch,
        "source.shape": shape,
        "source.dtype": "float32",
        "source.content": "peaks",
        "source.format": args.format,
        "source.compression": "none",
        "source.total_events": None,  # no per-rank cap: the socket run lasts --seconds
        "source.pool": 4,
        "timeline.phases": [{"name": "unpaced", "rate_hz": None}],
        "network.bandwidth_mbps": None,
        "stop.duration_s": args.seconds,
        "transport.ranks": n,
        "transport.processes": n,
        **spread,
        "consumer": {**base.model_dump()["consumer"], "model": model, "buffers": args.buffers,
                     "device": args.device, "queue": {"maxsize": 8}, "layout": layout},
    }, skip_none=False)


def _case(args: argparse.Namespace, model: dict[str, Any], label: str, out: Path) -> list[dict[str, Any]]:
    shape = [int(x) for x in args.shape.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    layouts = args.layouts.split(",")
    path = out / "profile.yaml"
    path.write_text(dump_profile(_profile(args, model, label, layouts[0])))
    rnd = run_profile(path, out / "random", mode="random", duration_s=args.seconds)
    rows = []
    for i, layout in enumerate(layouts):
        if i:
            path = out / f"profile-{layout}.yaml"
            path.write_text(dump_profile(_profile(args, model, label, layout)))
        sock = run_profile(path, out / ("socket" if i == 0 else f"socket-{layout}"),
                           duration_s=args.seconds)
        rows.append(_row(args, model, label, shape, layout, rnd.summary, sock))
    return rows


def _row(args: argparse.Namespace, model: dict[str, Any], label: str, shape: list[int],
         layout: str, rnd_summary: dict[str, Any], sock: Any) -> dict[str, Any]:
    r_rate, s_rate = _rate(rnd_summary), _rate(sock.summary)
    row = {
        "case": label,
        "layout": layout,
        "streams": args.streams,
        "model": model,
        "batch": args.batch,
        "shape": shape,
        "random_samples_per_s": r_rate,
        "socket_samples_per_s": s_rate,
        "ratio": s_rate / r_rate if r_rate else None,
        "random_gpu_busy": rnd_summary.get("gpu_busy_fraction"),
        "socket_gpu_busy": sock.summary.get("gpu_busy_fraction"),
        "socket_verdict": sock.report.get("verdict"),
        "socket_accounting": {k: sock.summary.get(k) for k in
                              ("received", "processed", "quarantined", "lost", "duplicated")},
        "socket_mb_per_s": (sock.summary.get("throughput") or {}).get("mb_per_s"),
        "device": sock.summary.get("device"),
        # host buffers of each run: pinned at warm-up (reserved) or during the run, and
        # the time all pinning took
        "random_host_pool": rnd_summary.get("host_pool"),
        "socket_host_pool": sock.summary.get("host_pool"),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", default="peaknet-1920")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--shape", default="1,1920,1920")
    p.add_argument("--format", choices=("hdf5", "npz"), default="hdf5")
    p.add_argument("--buffers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--size", default="production", help="peaknet size")
    p.add_argument("--synthetic-ms", type=float, nargs="*", default=[],
                   help="also run the synthetic model at these ms per batch")
    p.add_argument("--no-peaknet", action="store_true")
    p.add_argument("--layouts", default="production",
                   help="consumer layouts to run the socket side with, comma-separated "
                        "(production, fast)")
    p.add_argument("--streams", type=int, default=1,
                   help="emitter ranks (one process each); fast: one address each")
    args = p.parse_args()

    cases = []
    if not args.no_peaknet:
        cases.append((f"peaknet-{args.size}", {"kind": "peaknet", "size": args.size}))
    for ms in args.synthetic_ms:
        cases.append((f"synthetic-{ms:g}ms", {"kind": "synthetic", "compute_ms": ms}))
    rows = [r for label, model in cases for r in _case(args, model, label, args.out / label)]

    lines = [
        f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}",
        "",
        f"emitter: {args.streams} rank(s) in as many processes",
        "",
        "| case | layout | batch x shape | random samples/s | socket samples/s | socket / random | GPU busy random / socket | socket MB/s | verdict (socket) |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "n/a"
        busy = f"{(r['random_gpu_busy'] or 0):.1%} / {(r['socket_gpu_busy'] or 0):.1%}"
        lines.append(
            f"| {r['case']} | {r['layout']} | {r['batch']}x{'x'.join(map(str, r['shape']))} | "
            f"{r['random_samples_per_s']:.1f} | {r['socket_samples_per_s']:.1f} | {ratio} | {busy} | "
            f"{(r['socket_mb_per_s'] or 0):.0f} | {r['socket_verdict']} |"
        )
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    (args.out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
