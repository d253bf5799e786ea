"""Soak: the bursty profile end to end for a long time (default 30 minutes), watching
the emitter's and the consumer's resident memory and open file descriptors.

The consumer (``simstream consume``) and the emitter (``simstream emit``) run as
separate programs on loopback, as ``simstream run`` starts them. The profile is
``profiles/bursty.yaml`` made endless (``source.total_events: null``) and bounded by
``stop.duration_s`` = the soak's length. Every ``--sample-s`` seconds each
process's RSS (``/proc/PID/status`` VmRSS) and open descriptors (``/proc/PID/fd``)
are sampled.

Pass criteria (exit 0 when all hold, 1 otherwise):
- RSS of each process stays within 5 % of its level after warm-up: the level is
  the high-water mark of the samples in the minute after the first
  ``--warmup-share`` of the run, and the largest later sample is compared with it.
  A high-water mark, not a mean: in a bursty run the data a process legitimately
  holds swings with every burst (a full Q1 of 16 batches of 8 MiB is 128 MiB), so
  a mean would call a full queue growth; the mean is reported too;
- no growth in open descriptors (the largest later count is not above the level
  after warm-up);
- every message the emit log calls delivered is received by the consumer
  (``received``), each processed or quarantined, none lost or duplicated.

    .venv/bin/python bench/soak.py --minutes 30           # what ``make soak`` runs
    .venv/bin/python bench/soak.py --minutes 3 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simstream.profile import find_profile, load_profile  # noqa: E402
from simstream.runner.procs import (  # noqa: E402
    Child,
    children,
    free_port,
    is_listening,
    settled,
    simstream_argv,
    wait_until,
)

RSS_TOLERANCE = 0.05


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


def verdict(samples: list[dict[str, Any]], who: str, t_warm: float,
            level_window_s: float) -> dict[str, Any]:
    """Level after warm-up, the largest later value, and whether they pass."""
    rss = [(s["t"], s[f"{who}_rss"]) for s in samples if s.get(f"{who}_rss") is not None]
    fds = [(s["t"], s[f"{who}_fds"]) for s in samples if s.get(f"{who}_fds") is not None]
    level_rss = [v for t, v in rss if t_warm <= t < t_warm + level_window_s]
    level_fds = [v for t, v in fds if t_warm <= t < t_warm + level_window_s]
    later_rss = [v for t, v in rss if t >= t_warm]
    later_fds = [v for t, v in fds if t >= t_warm]
    if not level_rss or not later_rss or not level_fds:
        return {"ok": False, "why": "too few samples after warm-up"}
    base = max(level_rss)
    peak = max(later_rss)
    fd_base = max(level_fds)
    out = {
        "rss_level_mib": round(base / 2**20, 1),
        "rss_level_mean_mib": round(statistics.fmean(level_rss) / 2**20, 1),
        "rss_growth_vs_mean": round(peak / statistics.fmean(level_rss) - 1, 4),
        "rss_max_after_warmup_mib": round(peak / 2**20, 1),
        "rss_final_mib": round(later_rss[-1] / 2**20, 1),
        "rss_growth": round(peak / base - 1, 4),
        "fds_level": fd_base,
        "fds_max_after_warmup": max(later_fds),
        "fds_final": later_fds[-1],
    }
    # the leak signal that does not depend on where a burst fell: the trend of
    # the RSS after warm-up (least squares, MiB per minute) and the high-water
    # mark of each fifth of that time
    ts = [t for t, _ in rss if t >= t_warm]
    if len(ts) >= 2 and max(ts) > min(ts):
        slope = statistics.linear_regression(ts, later_rss).slope
        out["rss_trend_mib_per_min"] = round(slope * 60 / 2**20, 3)
        fifth = (max(ts) - min(ts)) / 5
        out["rss_max_per_fifth_mib"] = [
            round(max((v for t, v in rss if t_warm + i * fifth <= t <= t_warm + (i + 1) * fifth),
                      default=0) / 2**20, 1) for i in range(5)]
    out["rss_ok"] = peak <= base * (1 + RSS_TOLERANCE)
    out["fds_ok"] = max(later_fds) <= fd_base
    out["ok"] = out["rss_ok"] and out["fds_ok"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--profile", default="bursty")
    ap.add_argument("--sample-s", type=float, default=2.0)
    ap.add_argument("--warmup-share", type=float, default=0.2,
                    help="share of the run counted as warm-up (at least 30 s)")
    ap.add_argument("--out", type=Path, default=None, help="run directory")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rcvhwm", type=int, default=16,
                    help="the consumer's zmq read-ahead in messages (default 16; the "
                         "profile's own is production's 1000, which lets a burst pile up "
                         "to 1000 messages of 8 MiB in the consumer: by design, not a leak, "
                         "but it swamps the measure of one)")
    args = ap.parse_args()
    if args.minutes <= 0 or args.sample_s <= 0 or not 0 <= args.warmup_share < 1:
        ap.error("--minutes and --sample-s must be > 0, --warmup-share in [0, 1)")
    duration = args.minutes * 60.0
    out = args.out or Path("runs") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    base = load_profile(find_profile(args.profile))
    data = base.model_dump(mode="json")
    data["source"]["total_events"] = None
    data["stop"] = {"messages": None, "duration_s": duration}
    if args.rcvhwm is not None:
        data.setdefault("consumer", {})["rcvhwm"] = args.rcvhwm
    prof_path = out / "profile.yaml"
    prof_path.write_text(yaml.safe_dump(data, sort_keys=False))
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    samples: list[dict[str, Any]] = []
    t_warm = max(30.0, args.warmup_share * duration)
    with children() as procs:
        consumer = Child("consumer", simstream_argv(
            "consume", "--profile", str(prof_path), "--out", str(out), "--bind", url,
            "--transport", base.transport.kind, "--idle-timeout", "3600"), out / "consumer.log")
        procs.append(consumer)
        wait_until(lambda: is_listening(port), 120, f"the consumer to listen on {url}",
                   alive=consumer)
        emitter = Child("emitter", simstream_argv(
            "emit", "--profile", str(prof_path), "--url", url, "--log",
            str(out / "emit.jsonl")), out / "emitter.log")
        procs.append(emitter)
        t0 = time.monotonic()
        # bounded: the emitter stops itself at the duration; allow it a drain margin
        while emitter.returncode is None and time.monotonic() - t0 < duration + 120:
            t = time.monotonic() - t0
            samples.append({
                "t": round(t, 2),
                "emitter_rss": rss_bytes(emitter.proc.pid),
                "emitter_fds": fd_count(emitter.proc.pid),
                "consumer_rss": rss_bytes(consumer.proc.pid),
                "consumer_fds": fd_count(consumer.proc.pid),
            })
            time.sleep(args.sample_s)
        emitter_rc = emitter.returncode if emitter.returncode is not None else emitter.interrupt()
        quiet = settled(out / "messages.csv", 2.0)
        wait_until(lambda: next(quiet), 300, "the consumer to receive everything", poll_s=0.2,
                   alive=consumer)
        consumer_rc = consumer.interrupt(as_planned=True)
    summary = json.loads((out / "summary.json").read_text())
    delivered = 0
    attempts = 0
    with (out / "emit.jsonl").open() as f:
        for line in f:
            attempts += 1
            delivered += json.loads(line)["outcome"] == "delivered"
    window = min(60.0, max(10.0, duration / 10))
    emitter_v = verdict(samples, "emitter", t_warm, window)
    consumer_v = verdict(samples, "consumer", t_warm, window)
    accounting = {
        "attempts": attempts, "delivered": delivered, "received": summary["received"],
        "processed": summary["processed"], "quarantined": summary["quarantined"],
        "lost": summary["lost"], "duplicated": summary["duplicated"],
    }
    accounting["ok"] = (delivered == summary["received"]
                        == summary["processed"] + summary["quarantined"]
                        and summary["lost"] == 0 and summary["duplicated"] == 0)
    res = {
        "minutes": args.minutes, "profile": args.profile, "out": str(out),
        "warmup_s": t_warm, "samples": len(samples), "emitter_rc": emitter_rc,
        "consumer_rc": consumer_rc, "emitter": emitter_v, "consumer": consumer_v,
        "accounting": accounting,
        "machine": f"{platform.machine()} Python {platform.python_version()}",
    }
    res["ok"] = bool(emitter_v["ok"] and consumer_v["ok"] and accounting["ok"]
                     and emitter_rc == 0 and consumer_rc == 0)
    (out / "soak.json").write_text(json.dumps({**res, "series": samples}, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({**res, "series": samples}, indent=2) + "\n")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
