"""Producer side: aggregate throughput vs number of ranks, in one emitter process or
several, on loopback.

    .venv/bin/python bench/bench_ranks.py [--ranks 1,2,4] [--batch 8] [--shape 1,512,512]
        [--total 256] [--repeats 3] [--json FILE]

Every case sends ``--total`` uncompressed HDF5 messages of ``--batch`` x ``--shape``
float32 (LCLStreamer's layout, as fast as the emitter can: no rate, no cap) over
zmq PUSH to one pyzmq PULL sink in its own process, which counts messages and
bytes and stamps the first and last arrival. Three layouts per rank count N > 1:

- ``one process``: ``simstream emit --ranks N`` (N connections, one process);
- ``N processes``: N ``simstream emit --ranks 1 --rank-offset i`` started together,
  as N MPI ranks (rank ids 0..N-1);
- ``--processes N``: one ``simstream emit --ranks N --processes N`` (it starts the N
  emitter processes itself and merges their logs).

Figure: MB/s = bytes / (last arrival - first arrival) at the sink (the emitters'
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
from simstream.runner.procs import free_port  # noqa: E402

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


def case(profile_path: Path, ranks: int, layout: str, total: int) -> dict[str, Any]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sink = subprocess.Popen([sys.executable, "-c", SINK, url, str(total), "120"],
                            stdout=subprocess.PIPE, text=True, env=env)
    emitters: list[subprocess.Popen[bytes]] = []
    logdir = tempfile.TemporaryDirectory(prefix="bench-ranks-")
    logs: list[Path] = []
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        per = total // ranks

        def start(*extra: str) -> None:
            log = Path(logdir.name) / f"emit{len(logs)}.jsonl"
            logs.append(log)
            emitters.append(subprocess.Popen(
                [sys.executable, "-m", "simstream", "emit", "--profile", str(profile_path),
                 "--url", url, "--role", "client", "--count", str(per), "--no-progress",
                 "--log", str(log), *extra],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        if layout == "N processes":
            for i in range(ranks):
                start("--ranks", "1", "--rank-offset", str(i))
        elif layout == "--processes N":
            start("--ranks", str(ranks), "--processes", str(ranks))
        else:
            start("--ranks", str(ranks))
        out, _ = sink.communicate(timeout=150)
        r = json.loads(out.strip().splitlines()[-1])
        for e in emitters:
            e.wait(timeout=60)
        span = (r["last"] - r["first"]) if r["first"] is not None else 0.0
        name = {"one process": "one process", "N processes": f"{ranks} processes",
                "--processes N": f"--processes {ranks}"}[layout]
        return {"ranks": ranks, "layout": name,
                "messages": r["messages"], "expected": per * ranks, "bytes": r["bytes"],
                "ids": delivered_ids(logs),
                "span_s": span, "mb_per_s": r["bytes"] / span / 1e6 if span > 0 else None,
                "emitter_rc": [e.returncode for e in emitters]}
    finally:
        for p in [sink, *emitters]:
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
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ranks.yaml"
        path.write_text(dump_profile(prof))
        for n in (int(x) for x in args.ranks.split(",")):
            for layout in (LAYOUTS if n > 1 else LAYOUTS[:1]):
                runs = []
                for _ in range(args.repeats):
                    runs.append(case(path, n, layout, args.total))
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
          f"uncompressed ({nbytes:,} bytes each), zmq over loopback to one PULL sink.\n")
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
