"""Producer side: aggregate throughput vs number of ranks, in one emitter process or
several, on loopback.

    .venv/bin/python bench/bench_ranks.py [--ranks 1,2,4] [--batch 8] [--shape 1,512,512]
        [--total 256] [--repeats 3] [--json FILE]

Every case sends ``--total`` uncompressed HDF5 messages of ``--batch`` x ``--shape``
float32 (LCLStreamer's layout, as fast as the emitter can: no rate, no cap) over
zmq PUSH to one pyzmq PULL sink in its own process (``--sinks per-rank``: one sink
process per rank, each rank to its own, so the receiving side does not cap the
producers), which counts messages and bytes and stamps the first and last
arrival. Three layouts per rank count N > 1:

- ``one process``: ``simstream emit --ranks N`` (N connections, one process);
- ``N processes``: N ``simstream emit --ranks 1 --rank-offset i`` started together,
  as N MPI ranks (rank ids 0..N-1);
- ``--processes N``: one ``simstream emit --ranks N --processes N`` (it starts the N
  emitter processes itself and merges their logs).

Figure: MB/s = bytes / (last arrival - first arrival) at the sinks (the emitters'
start-up and LCLStreamer's 1 s sleep after connect are outside that window).
Every emitter writes an emit log; the ``ids`` column counts the distinct (rank,
seq) pairs delivered according to the logs (it equals the messages sent when
every rank has its own id). Every case is bounded by ``--total`` messages and a
120 s time-out. Prints a markdown table and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.profile import dump_profile, find_profile, load_profile  # noqa: E402
from simstream.runner.procs import free_ports  # noqa: E402

SINK = """
import json, sys, time, zmq
from simstream.clock import now
url, total, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = zmq.Context(); s = ctx.socket(zmq.PULL); s.setsockopt(zmq.LINGER, 0); s.bind(url)
print("ready", flush=True)
n = nbytes = 0; first = last = None; deadline = time.monotonic() + limit
while n < total and time.monotonic() < deadline:
    if not s.poll(200):
        continue
    m = s.recv(copy=False)
    last = now(); first = first or last
    n += 1; nbytes += len(m.buffer)
print(json.dumps({"messages": n, "bytes": nbytes, "first": first, "last": last}), flush=True)
s.close(); ctx.term()
"""


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


LAYOUTS = ("one process", "N processes", "--processes N")


def delivered_ids(logs: list[Path]) -> int:
    """Distinct (rank, seq) pairs the emit logs call delivered."""
    ids = set()
    for log in logs:
        if not log.exists():
            continue
        with open(log, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("outcome") == "delivered":
                    ids.add((rec["rank"], rec["seq"]))
    return len(ids)


def case(prof: Any, ranks: int, layout: str, total: int, per_rank_sinks: bool) -> dict[str, Any]:
    """One case; with ``per_rank_sinks`` every rank sends to its own sink process
    (so the receiving side cannot be what limits the producer), else all to one."""
    n_sinks = ranks if per_rank_sinks else 1
    ports = free_ports(n_sinks)
    urls = [f"tcp://127.0.0.1:{p}" for p in ports]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    per = total // ranks
    sinks = [subprocess.Popen([sys.executable, "-c", SINK, u, str(per * ranks // n_sinks), "120"],
                              stdout=subprocess.PIPE, text=True, env=env) for u in urls]
    emitters: list[subprocess.Popen[bytes]] = []
    logdir = tempfile.TemporaryDirectory(prefix="bench-ranks-")
    logs: list[Path] = []
    profile_path = Path(logdir.name) / "ranks.yaml"
    # ranks reach urls[rank % len(urls)] in every layout
    profile_path.write_text(dump_profile(prof.with_overrides(
        {"transport.url": urls[0], "transport.urls": urls if n_sinks > 1 else None})))
    try:
        for sink in sinks:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"

        def start(*extra: str) -> None:
            log = Path(logdir.name) / f"emit{len(logs)}.jsonl"
            logs.append(log)
            emitters.append(subprocess.Popen(
                [sys.executable, "-m", "simstream", "emit", "--profile", str(profile_path),
                 "--role", "client", "--count", str(per), "--no-progress",
                 "--log", str(log), *extra],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        if layout == "N processes":
            for i in range(ranks):
                start("--ranks", "1", "--rank-offset", str(i))
        elif layout == "--processes N":
            start("--ranks", str(ranks), "--processes", str(ranks))
        else:
            start("--ranks", str(ranks))
        results = []
        for sink in sinks:
            out, _ = sink.communicate(timeout=150)
            results.append(json.loads(out.strip().splitlines()[-1]))
        for e in emitters:
            e.wait(timeout=60)
        firsts = [r["first"] for r in results if r["first"] is not None]
        lasts = [r["last"] for r in results if r["last"] is not None]
        span = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
        nbytes = sum(r["bytes"] for r in results)
        name = {"one process": "one process", "N processes": f"{ranks} processes",
                "--processes N": f"--processes {ranks}"}[layout]
        return {"ranks": ranks, "layout": name, "sinks": n_sinks,
                "messages": sum(r["messages"] for r in results), "expected": per * ranks,
                "bytes": nbytes, "ids": delivered_ids(logs),
                "span_s": span, "mb_per_s": nbytes / span / 1e6 if span > 0 else None,
                "emitter_rc": [e.returncode for e in emitters]}
    finally:
        for p in [*sinks, *emitters]:
            if p.poll() is None:
                p.kill()
                p.wait()
        logdir.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shape", default="1,512,512")
    ap.add_argument("--total", type=int, default=256, help="messages per case, all ranks together")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case; the median is shown")
    ap.add_argument("--sinks", choices=("one", "per-rank"), default="one",
                    help="one PULL sink for all ranks, or one sink process per rank (so the "
                         "receiving side does not cap what the producers can send)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    base = load_profile(find_profile("steady"))
    prof = base.with_overrides({
        "name": "bench-ranks", "source.batch_size": args.batch,
        "source.shape": [int(x) for x in args.shape.split(",")], "source.content": "random",
        "source.compression": "none", "source.pool": 4, "source.total_events": None,
        "timeline": {"phases": [{"name": "flat-out", "rate_hz": None}]},
        "stop": {"messages": None, "duration_s": None},
    })
    rows = []
    for n in (int(x) for x in args.ranks.split(",")):
        for layout in (LAYOUTS if n > 1 else LAYOUTS[:1]):
            runs = []
            for _ in range(args.repeats):
                runs.append(case(prof, n, layout, args.total, args.sinks == "per-rank"))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            rates = sorted(x["mb_per_s"] or 0.0 for x in runs)
            r = dict(runs[0])
            r.update(mb_per_s=statistics.median(rates), mb_per_s_all=rates,
                     messages=min(x["messages"] for x in runs),
                     ids=min(x["ids"] for x in runs))
            rows.append(r)
    nbytes = rows[0]["bytes"] // max(rows[0]["messages"], 1) if rows else 0
    print(f"Machine: {machine()}\n")
    print(f"{args.total} messages per case of {args.batch} x {args.shape} float32, HDF5 "
          f"uncompressed ({nbytes:,} bytes each), zmq over loopback to "
          f"{'one PULL sink per rank' if args.sinks == 'per-rank' else 'one PULL sink'}.\n")
    print(f"Median of {args.repeats} runs per case (all runs in brackets).\n")
    print("| ranks | layout | messages | ids | MB/s | runs MB/s | vs 1 rank |")
    print("| ---: | --- | ---: | ---: | ---: | --- | ---: |")
    one = rows[0]["mb_per_s"] if rows else None
    for r in rows:
        mb = r["mb_per_s"]
        rel = f"{mb / one:.2f}" if mb and one else "-"
        print(f"| {r['ranks']} | {r['layout']} | {r['messages']}/{r['expected']} | {r['ids']} | "
              f"{'-' if mb is None else f'{mb:.0f}'} | "
              f"{', '.join(f'{x:.0f}' for x in r['mb_per_s_all'])} | {rel} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
