"""Kernel vs user-space shaping: how close does each get to the same cap?

For each cap, a bulk TCP sender in the testbed's producer namespace sends to a
receiver in the consumer namespace for ``--seconds``:

- kernel: tbf on the producer's veth (netem too where the kernel has it: not
  here), the sender writes as fast as the socket takes;
- user space: no qdisc, the sender paces itself with a token bucket
  (``simstream.testbed.traffic --rate-mbps``, the method the emitter's cap uses).

Measured at the receiver (payload bytes over first..last byte) and from a
capture on the producer's veth through ``simstream verify`` (frames with their
headers, as tbf counts them). Then a phase change on live traffic: the time
``tc qdisc change`` takes (control plane) and the time until the receiver sees
the new rate (data plane: the queue behind the old rate drains first).

Needs root and ``ip netns``. Usage::

    python bench/bench_shaping.py [--caps 8,50,200,1000] [--seconds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.profile import parse_profile
from simstream.testbed import detect, tc
from simstream.testbed.capture import capture_argv
from simstream.testbed.netns import Testbed, leftovers
from simstream.testbed.verify import verify_capture

PY = sys.executable
PORT = 5001
# whole packets below this cap; headers only above (a 1 Gbit/s pcap is large)
SNAPLEN_ABOVE_MBPS = 100.0


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version()}


def _profile(cap: float | None) -> Any:
    return parse_profile({"name": "bench", "transport": {"kind": "tcp",
                                                         "url": f"tcp://10.213.0.2:{PORT}"},
                          "network": {"bandwidth_mbps": cap}})


def run_once(tb: Testbed, seconds: float, pace_mbps: float | None, pcap: Path | None,
             snaplen: int = 0, change: tuple[float, tc.Shaping] | None = None) -> dict[str, Any]:
    """One bounded transfer; returns the receiver's and the sender's JSON, change timing."""
    cap_proc = None
    if pcap is not None:
        cap_proc = subprocess.Popen(
            capture_argv(tb.producer_iface, PORT, pcap, seconds + 15, netns=tb.producer_ns,
                         snaplen=snaplen),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert cap_proc.stderr is not None
        cap_proc.stderr.readline()
    recv = subprocess.Popen(
        tb.argv_in("consumer", [PY, "-m", "simstream.testbed.traffic", "recv", "--bind",
                                f"{tb.consumer_addr}:{PORT}", "--duration", str(seconds + 5)]),
        stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    recv.stdout.readline()
    argv = [PY, "-m", "simstream.testbed.traffic", "send", "--to", f"{tb.consumer_addr}:{PORT}",
            "--duration", str(seconds)]
    if pace_mbps:
        argv += ["--rate-mbps", str(pace_mbps)]
    send = subprocess.Popen(tb.argv_in("producer", argv), stdout=subprocess.PIPE, text=True)
    out: dict[str, Any] = {}
    if change is not None:
        time.sleep(change[0])
        from simstream import clock

        out["t_change"] = clock.now()
        out["control_s"] = tb.set_phase(change[1])
    send_out = send.communicate(timeout=seconds + 30)[0]
    recv_out = recv.communicate(timeout=seconds + 30)[0]
    out["send"] = json.loads(send_out.strip().splitlines()[-1])
    out["recv"] = json.loads(recv_out.strip().splitlines()[-1])
    if cap_proc is not None:
        cap_proc.terminate()
        c_out, _ = cap_proc.communicate(timeout=30)
        out["capture"] = c_out.strip()
    return out


def measure(cap: float, method: str, seconds: float, workdir: Path,
            offer: detect.KernelOffer) -> dict[str, Any]:
    pcap = workdir / f"{method}-{cap:g}.pcap"
    snaplen = 128 if cap > SNAPLEN_ABOVE_MBPS else 0
    kernel = method == "kernel-tbf"
    with Testbed.up("bench", _profile(cap if kernel else None), offer=offer) as tb:
        res = run_once(tb, seconds, None if kernel else cap, pcap, snaplen)
    rep = verify_capture(pcap, _profile(cap), framing="none")
    rate = next(c for c in rep.checks if c.name == "rate")
    recv_mbps = res["recv"]["rate_mbps"]
    pcap.unlink(missing_ok=True)
    return {"cap_mbps": cap, "method": method, "receiver_payload_mbps": recv_mbps,
            "receiver_vs_cap": recv_mbps / cap,
            "capture_wire_mbps": float(rate.measured.split()[0]),
            "capture_vs_cap": float(rate.measured.split()[0]) / cap,
            "verify": rate.status, "verify_note": rate.note, "capture": res.get("capture", ""),
            "snaplen": snaplen}


def _emitter_profile(cap: float, seconds: float) -> dict[str, Any]:
    # about 50 messages per second at the cap: enough messages to measure a
    # rate in a few seconds, few enough for a Python emitter on a loaded machine
    side = max(8, int(math.sqrt(cap * 1e6 / 8 / 50 / 8 / 4)))
    return {"name": f"emitter-cap-{cap:g}", "seed": 1,
            "source": {"batch_size": 8, "shape": [1, side, side], "dtype": "float32",
                       "content": "constant", "format": "hdf5", "total_events": None,
                       "pool": 8},
            "transport": {"kind": "tcp", "role": "client", "url": f"tcp://10.213.0.2:{PORT}"},
            "network": {"bandwidth_mbps": cap},
            "timeline": {"phases": [{"name": "saturate", "rate_hz": None}]},
            "stop": {"duration_s": seconds}}


def measure_emitter(cap: float, seconds: float, workdir: Path,
                    offer: detect.KernelOffer) -> dict[str, Any]:
    """``simstream emit`` with the profile's cap (its own token bucket), no qdisc."""
    import yaml

    prof_path = workdir / f"emitter-{cap:g}.yaml"
    prof_dict = _emitter_profile(cap, seconds)
    prof_path.write_text(yaml.safe_dump(prof_dict))
    log = workdir / f"emitter-{cap:g}.jsonl"
    pcap = workdir / f"emitter-{cap:g}.pcap"
    snaplen = 128 if cap > SNAPLEN_ABOVE_MBPS else 0
    with Testbed.up("bench", None, offer=offer) as tb:
        cap_proc = subprocess.Popen(
            capture_argv(tb.producer_iface, PORT, pcap, seconds + 30, netns=tb.producer_ns,
                         snaplen=snaplen), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert cap_proc.stderr is not None
        cap_proc.stderr.readline()
        recv = subprocess.Popen(
            tb.argv_in("consumer", [PY, "-m", "simstream.testbed.traffic", "recv", "--bind",
                                    f"{tb.consumer_addr}:{PORT}", "--duration",
                                    str(seconds + 20)]), stdout=subprocess.PIPE, text=True)
        assert recv.stdout is not None
        recv.stdout.readline()
        em = subprocess.run(tb.argv_in("producer", [PY, "-m", "simstream", "emit", "--profile",
                                                    str(prof_path), "--log", str(log),
                                                    "--no-progress"]),
                            capture_output=True, text=True, timeout=seconds + 60)
        got = json.loads(recv.communicate(timeout=seconds + 30)[0].strip().splitlines()[-1])
        cap_proc.terminate()
        c_out, _ = cap_proc.communicate(timeout=30)
    from simstream.profile import parse_profile as _parse
    from simstream.testbed.verify import load_emit_log

    rep = verify_capture(pcap, _parse(prof_dict), emit_log=load_emit_log(log))
    rate = next(c for c in rep.checks if c.name == "rate")
    msgs = next((c for c in rep.checks if c.name == "messages"), None)
    for f in (pcap, log, prof_path):
        f.unlink(missing_ok=True)
    wire = float(rate.measured.split()[0])
    summary = [ln for ln in em.stdout.splitlines() if ln.startswith("total:")]
    return {"cap_mbps": cap, "method": "simstream-emit", "receiver_payload_mbps": got["rate_mbps"],
            "receiver_vs_cap": got["rate_mbps"] / cap, "capture_wire_mbps": wire,
            "capture_vs_cap": wire / cap, "verify": rate.status, "verify_note": rate.note,
            "messages": None if msgs is None else f"{msgs.status}: {msgs.measured}",
            "capture": c_out.strip(), "emit_rc": em.returncode,
            "emit": summary[0] if summary else em.stderr.strip()[-200:], "snaplen": snaplen}


def phase_change(seconds: float, hi: float, lo: float, offer: detect.KernelOffer,
                 repeats: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(repeats):
        with Testbed.up("bench", _profile(hi), offer=offer) as tb:
            res = run_once(tb, seconds, None, None, change=(seconds / 2, tc.Shaping(rate_mbps=lo)))
        recv = res["recv"]
        bins, bin_s = recv["bins"], recv["bins_s"]
        t_change = res["t_change"] - recv["t_first"]
        first = int(t_change / bin_s)
        data_s = None
        win = max(1, round(0.05 / bin_s))  # 50 ms sliding window: one bin is a few packets
        for i in range(first, len(bins) - win):
            if sum(bins[i:i + win]) * 8 / (win * bin_s) / 1e6 <= lo * 1.2:
                # the window's end: by then the receiver has seen the new rate
                data_s = (i + win) * bin_s - t_change
                break
        out.append({"from_mbps": hi, "to_mbps": lo, "control_s": res["control_s"],
                    "data_s": data_s, "bin_s": bin_s * win})
    return out


def _ms(s: float | None) -> str:
    return "?" if s is None else f"{s * 1e3:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="8,50,200,1000", help="Mbit/s, comma separated")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3, help="phase-change repetitions")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    offer = detect.probe()
    if not offer.privileged or not offer.netns_ok or "tbf" not in offer.kinds:
        print(f"needs root, ip netns and tbf: {offer.netns_detail or sorted(offer.kinds)}",
              file=sys.stderr)
        return 2
    caps = [float(x) for x in a.caps.split(",")]
    info = machine()
    info["qdiscs"] = sorted(offer.kinds)
    print(f"machine: {info}")
    emitter_cli = importlib.util.find_spec("simstream.emitter.cli") is not None
    info["user_space_methods"] = ["traffic.py token-bucket pacer"] + (
        ["simstream emit (its own cap)"] if emitter_cli else [])
    if not emitter_cli:
        print("simstream emit is not available: user space is measured with the traffic.py "
              "pacer only")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for cap in caps:
            methods = ["kernel-tbf", "user-pacer"] + (["simstream-emit"] if emitter_cli else [])
            for method in methods:
                if method == "simstream-emit":
                    row = measure_emitter(cap, a.seconds, Path(d), offer)
                else:
                    row = measure(cap, method, a.seconds, Path(d), offer)
                rows.append(row)
                print(f"{cap:7g} Mbit/s {method:11s} receiver {row['receiver_payload_mbps']:8.2f} "
                      f"({row['receiver_vs_cap']:.3f}) capture {row['capture_wire_mbps']:8.2f} "
                      f"({row['capture_vs_cap']:.3f}) verify {row['verify']} | {row['capture']}"
                      + (f" | messages {row['messages']} | {row['emit']}" if "emit" in row
                         else ""),
                      flush=True)
    changes = phase_change(a.seconds, 200.0, 50.0, offer, a.repeats)
    for c in changes:
        print(f"tbf change {c['from_mbps']:g} -> {c['to_mbps']:g} Mbit/s: control plane "
              f"{c['control_s'] * 1e3:.1f} ms, receiver sees it after "
              f"{_ms(c['data_s'])} ms "
              f"(a {c['bin_s'] * 1e3:.0f} ms window)")
    assert not leftovers("bench")
    result = {"machine": info, "rows": rows, "phase_changes": changes, "seconds": a.seconds}
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
