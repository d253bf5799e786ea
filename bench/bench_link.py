"""The user-space link emulator (``network.emulator: user-link``): how close it gets to
the profile, and where the forwarder stops keeping up.

One testbed with the emulator; each condition is a phase change on the live
forwarder (``Testbed.set_phase``), measured with plain sockets between the
namespaces (``simstream.testbed.traffic`` and a UDP blast), never with the
forwarder's own counters:

1. round trips: latency L each way (jitter J) -> UDP probe median and p99 against 2 L;
2. loss: p % producer -> consumer -> datagrams missing at the receiver;
3. rate: a bulk TCP stream (default buffers) against the cap, up to the ceiling;
4. ceiling: uncapped TCP MB/s and small-datagram packets/s through the forwarder,
   against the same through a plain veth (a tc testbed with nothing to shape),
   measured in the same run; then uncapped TCP through the forwarder with and
   without TSO/checksum offload on the TUN devices (IFF_VNET_HDR, TUNSETOFFLOAD)
   at MTU 65000 and 1500, the configurations interleaved, each --repeats times;
5. TCP with fixed 256 KiB socket buffers against window / RTT, RTT 1-100 ms;
6. the issue's done criterion at latency 20 ms each way, 2 ms jitter: the UDP
   probe's round trip and a 256 KiB-buffer TCP stream against window / RTT;
7. ``simstream verify`` on a capture at the consumer (20 ms each way, 2 ms
   jitter, loss 0.1 / 1 / 10 %): its round trip and loss against the profile and
   its loss count against the forwarder's own;
8. slow start after idle: a 256 KiB message after 1 s of silence over a 40 ms
   round trip, TUN MTU 65000 against 1500 (TCP's segment size sets its initial
   window).

No kernel here has ``sch_netem``: the same profile through tc netem is not
measured (the bench says so in its output).

Needs root, ``ip netns`` and /dev/net/tun. Usage::

    python bench/bench_link.py [--seconds 3] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

from simstream.profile import parse_profile
from simstream.testbed import tc
from simstream.testbed.netns import Testbed, leftovers

PY = sys.executable
SOCKBUF = 256 * 1024
# below the forwarder's small-packet ceiling on a loaded 2-core machine (~24k/s)
LOSS_PPS = 5000.0
LOSS_PACKETS = 20_000

BLAST = r"""
import socket, sys, time, json
mode, addr, n, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
host, port = addr.rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "recv":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((host, int(port))); print("listening", flush=True)
    s.settimeout(3.0); got = 0; t0 = t1 = None
    try:
        while True:
            s.recv(2048); got += 1
            t1 = time.monotonic(); t0 = t0 or t1
    except socket.timeout:
        pass
    print(json.dumps({"received": got, "span_s": (t1 - t0) if t0 else 0.0}))
else:
    s.connect((host, int(port))); pkt = b"\0" * 100; t0 = time.monotonic(); sent = 0
    while sent < n:
        if rate and sent > (time.monotonic() - t0) * rate:
            time.sleep(0.0005); continue
        try:
            s.send(pkt); sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass
    print(json.dumps({"sent": sent, "s": time.monotonic() - t0}))
"""


def machine() -> dict[str, Any]:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": load}


def _profile(emulator: str, **net: Any) -> Any:
    return parse_profile({"name": "bench", "transport": {"kind": "tcp", "url": "tcp://10.213.0.2:5001"},
                          "network": {"emulator": emulator, **net}})


def _run(argv: list[str], timeout: float) -> dict[str, Any]:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError(f"{argv[-6:]} failed: {cp.stderr.strip()[-400:]}")
    out: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return out


def udp_rtts(tb: Testbed, count: int, interval: float) -> dict[str, Any]:
    echo = subprocess.Popen(tb.argv_in("consumer", [
        PY, "-m", "simstream.testbed.traffic", "udp-echo", "--bind", f"{tb.consumer_addr}:5002",
        "--duration", str(count * (interval + 0.5) + 10)]), stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        echo.stdout.readline()
        return _run(tb.argv_in("producer", [
            PY, "-m", "simstream.testbed.traffic", "udp-probe", "--to", f"{tb.consumer_addr}:5002",
            "--count", str(count), "--interval", str(interval)]), count * 2 + 30)
    finally:
        echo.kill()
        echo.communicate(timeout=5)


def tcp_mbps(tb: Testbed, seconds: float, sockbuf: int | None = None) -> float:
    extra = ["--sockbuf", str(sockbuf)] if sockbuf else []
    recv = subprocess.Popen(tb.argv_in("consumer", [
        PY, "-m", "simstream.testbed.traffic", "recv", "--bind", f"{tb.consumer_addr}:5001",
        "--duration", str(seconds + 10), *extra]), stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        recv.stdout.readline()
        _run(tb.argv_in("producer", [
            PY, "-m", "simstream.testbed.traffic", "send", "--to", f"{tb.consumer_addr}:5001",
            "--duration", str(seconds), *extra]), seconds + 60)
        out = json.loads(recv.communicate(timeout=seconds + 30)[0].strip().splitlines()[-1])
        return float(out["rate_mbps"] or 0.0)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.communicate(timeout=5)


def udp_blast(tb: Testbed, n: int, rate: float) -> dict[str, Any]:
    recv = subprocess.Popen(tb.argv_in("consumer", [PY, "-c", BLAST, "recv",
                                                    f"{tb.consumer_addr}:5003", "0", "0"]),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        recv.stdout.readline()
        sent = _run(tb.argv_in("producer", [PY, "-c", BLAST, "send", f"{tb.consumer_addr}:5003",
                                            str(n), str(rate)]), 120)
        got = json.loads(recv.communicate(timeout=60)[0].strip().splitlines()[-1])
        return {**sent, **got}
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.communicate(timeout=5)


def loss_rows(tb: Testbed, res: dict[str, Any], pps: float = LOSS_PPS) -> None:
    """Datagrams missing at the receiver, each loss rate; first with none asked, so
    what the machine itself drops at this packet rate is measured beside it."""
    for loss in (0.0, 0.1, 1.0, 10.0):
        tb.set_phase(shaping(loss=loss))
        b = udp_blast(tb, LOSS_PACKETS, pps)
        row = {"loss_pct": loss, "pps": pps, "sent": b["sent"], "received": b["received"],
               "measured_pct": 100 * (1 - b["received"] / b["sent"])}
        res["loss"].append(row)
        print("loss", row, flush=True)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SLOWSTART = r"""
import socket, sys, time, json
mode, addr, size, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
if mode == "serve":
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port))); srv.listen(1); srv.settimeout(20); print("listening", flush=True)
    c, _ = srv.accept(); c.settimeout(20)
    for _ in range(count):
        got = 0
        while got < size:
            b = c.recv(1 << 20)
            if not b:
                sys.exit(0)
            got += len(b)
        c.sendall(b"k")
else:
    c = socket.create_connection((host, int(port)), timeout=20)
    mss = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    out, msg = [], b"\0" * size
    for _ in range(count):
        time.sleep(1.0)  # idle for longer than the RTO: TCP restarts from its initial window
        t0 = time.monotonic(); c.sendall(msg); c.recv(1); out.append(time.monotonic() - t0)
    print(json.dumps({"mss": mss, "times_s": out}))
"""


def slowstart_rows(res: dict[str, Any]) -> None:
    """A 256 KiB message after 1 s idle over a 40 ms round trip: how many round trips
    slow start takes, with the TUN devices' MTU 65000 and 1500 (offload on both)."""
    for mtu in (65000, 1500):
        with Testbed.up("benchss", _profile("user-link", latency_ms=20), link_mtu=mtu) as tb:
            srv = subprocess.Popen(tb.argv_in("consumer", [PY, "-c", SLOWSTART, "serve",
                                                           f"{tb.consumer_addr}:5004",
                                                           str(SOCKBUF), "6"]),
                                   stdout=subprocess.PIPE, text=True)
            try:
                assert srv.stdout is not None and "listening" in srv.stdout.readline()
                r = _run(tb.argv_in("producer", [PY, "-c", SLOWSTART, "send",
                                                 f"{tb.consumer_addr}:5004", str(SOCKBUF),
                                                 "6"]), 120)
            finally:
                srv.kill()
                srv.communicate(timeout=5)
        times = sorted(r["times_s"][1:])  # the first also opens the window after the handshake
        row = {"mtu": mtu, "mss": r["mss"], "message_bytes": SOCKBUF, "rtt_profile_ms": 40,
               "times_ms": [t * 1e3 for t in r["times_s"]],
               "median_ms": times[len(times) // 2] * 1e3,
               "round_trips": times[len(times) // 2] / 0.040}
        res["slowstart"].append(row)
        print("slowstart", row, flush=True)


def ceiling_rows(res: dict[str, Any], seconds: float, repeats: int) -> None:
    """Uncapped TCP through the forwarder: offload on/off, MTU 65000/1500, interleaved."""
    configs = [(65000, True), (65000, False), (1500, True), (1500, False)]
    for rep in range(repeats):
        for mtu, offload in configs:
            with Testbed.up("benchoff", _profile("user-link"), link_mtu=mtu,
                            link_offload=offload) as tb:
                assert tb.forwarder is not None and tb.forwarder.offload == offload
                cpu0 = _cpu_s(tb.forwarder.pid)
                mbps = tcp_mbps(tb, seconds)
                cpu = _cpu_s(tb.forwarder.pid) - cpu0
                st = tb.forwarder.stats()["p2c"]
            row = {"repeat": rep, "mtu": mtu, "offload": offload, "tcp_mbps": mbps,
                   "packets": st["delivered"],
                   "mean_packet_bytes": st["delivered_bytes"] / max(1, st["delivered"]),
                   "packets_per_s": st["delivered"] / seconds,
                   "forwarder_cpu_s": cpu,
                   "forwarder_cpu_s_per_gb": cpu / max(1e-9, st["delivered_bytes"] / 1e9)}
            res["offload"].append(row)
            print("offload", row, flush=True)


def verify_rows(res: dict[str, Any], seconds: float) -> None:
    """``verify`` on a consumer-side capture of a 256 KiB-buffer TCP stream."""
    from simstream.runner.kernel import start_capture
    from simstream.testbed.verify import verify_capture

    for loss in (0.1, 1.0, 10.0):
        prof = _profile("user-link", latency_ms=20, jitter_ms=2, loss_pct=loss)
        with tempfile.TemporaryDirectory() as d:
            pcap, sent = Path(d) / "c.pcap", Path(d) / "p.pcap"
            with Testbed.up("benchver", prof) as tb:
                caps: list[Any] = []
                try:
                    for iface, out, ns in ((tb.consumer_iface, pcap, tb.consumer_ns),
                                           (tb.producer_iface, sent, tb.producer_ns)):
                        start_capture(caps, Path(d), iface, 5001, seconds + 60, netns=ns,
                                      name=out.name)
                    mbps = tcp_mbps(tb, seconds, SOCKBUF)
                finally:
                    for cap in caps:
                        cap.interrupt(grace_s=30)
                        cap.stop()  # reaped already: closes its log
                st = tb.forwarder.stats()["p2c"] if tb.forwarder else {}
                lost = st.get("lost")
                devices = (tb.link_mtu, tb.forwarder.offload if tb.forwarder else None)
            rep = verify_capture(pcap, prof, framing="none", emulator="user-link")
            both = verify_capture(pcap, prof, framing="none", emulator="user-link",
                                  sender_pcap=sent)
        by = {c.name: c for c in rep.checks}
        pb = {c.name: c for c in both.checks}
        row = {"loss_pct": loss, "tcp_mbps": mbps, "rtt": by["rtt"].measured,
               "rtt_expected": by["rtt"].expected, "rtt_status": by["rtt"].status,
               "loss": by["loss"].measured, "loss_expected": by["loss"].expected,
               "loss_status": by["loss"].status, "verify_lost_packets": rep.facts["lost_packets"],
               "paired_delay": pb["delay"].measured, "paired_delay_status": pb["delay"].status,
               "paired_loss": pb["loss"].measured, "paired_loss_status": pb["loss"].status,
               "paired_lost_packets": both.facts["paired_lost_packets"],
               "forwarder_lost_packets": lost,
               # what the link's loss fell on: TUN packets and their mean size (one TCP
               # segment each at MTU 1500 without offload, up to 45 with it)
               "tun_mtu": devices[0], "tun_offload": devices[1],
               "forwarder_offered_packets": st.get("offered"),
               "mean_packet_bytes": round(st["offered_bytes"] / st["offered"])
               if st.get("offered") else None,
               "loss_events_per_mb": round(lost / (st["offered_bytes"] / 1e6), 3)
               if st.get("offered_bytes") and lost is not None else None}
        res["verify"].append(row)
        print("verify", row, flush=True)


def shaping(latency: float = 0, jitter: float = 0, loss: float = 0,
            rate: float | None = None) -> tc.Shaping:
    return tc.Shaping(rate_mbps=rate, netem=tc.Netem(delay_ms=latency, jitter_ms=jitter,
                                                     distribution="normal", loss_pct=loss))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3, help="ceiling runs per configuration")
    ap.add_argument("--parts", default="all",
                    help="comma-separated: link (RTT, loss, rate, TCP window, done), "
                         "ceiling (offload), verify, slowstart; default all")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    parts = ({"link", "ceiling", "verify", "slowstart"} if a.parts == "all"
             else set(a.parts.split(",")))
    res: dict[str, Any] = {"machine": machine(), "rtt": [], "loss": [], "rate": [],
                           "ceiling": {}, "tcp_window": [], "offload": [], "verify": [],
                           "slowstart": [],
                           "netem": "not measured: no kernel here has sch_netem"}
    print(json.dumps(res["machine"]))
    print("netem: the same profiles through tc netem could not be measured (no kernel here "
          "has sch_netem)", flush=True)

    if "link" in parts:
        link_rows(res, a.seconds)
    if "ceiling" in parts:
        ceiling_rows(res, a.seconds, a.repeats)
    if "verify" in parts:
        verify_rows(res, a.seconds)
    if "slowstart" in parts:
        slowstart_rows(res)
    with open("/proc/loadavg") as f:
        res["machine"]["loadavg_at_end"] = f.read().split()[:3]
    for name in ("benchlink", "benchveth", "benchoff", "benchver", "benchss"):
        assert not leftovers(name).namespaces, name
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))
    return 0


def link_rows(res: dict[str, Any], seconds: float) -> None:
    """Round trips, loss, rate, the ceiling against a veth, TCP window, the done criterion."""
    # the baseline: a plain veth, nothing shaped
    with Testbed.up("benchveth", _profile("tc")) as tb:
        res["ceiling"]["veth_tcp_mbps"] = tcp_mbps(tb, seconds)
        b = udp_blast(tb, 100_000, 0)
        res["ceiling"]["veth_udp_pps"] = b["received"] / b["span_s"] if b["span_s"] else None
    print("veth", res["ceiling"], flush=True)

    with Testbed.up("benchlink", _profile("user-link")) as tb:
        tb.set_phase(shaping())
        res["ceiling"]["link_tcp_mbps"] = tcp_mbps(tb, seconds)
        b = udp_blast(tb, 100_000, 0)
        res["ceiling"]["link_udp_pps"] = b["received"] / b["span_s"] if b["span_s"] else None
        res["ceiling"]["link_udp_sent_pps"] = b["sent"] / b["s"]
        print("link", res["ceiling"], flush=True)

        for lat, jit in ((0, 0), (1, 0), (10, 0), (20, 2), (50, 0), (100, 10)):
            tb.set_phase(shaping(lat, jit))
            r = udp_rtts(tb, 100 if lat < 50 else 50, 0.01)
            rtts = sorted(r["rtts_ms"])
            row = {"latency_ms": lat, "jitter_ms": jit, "expected_rtt_ms": 2 * lat,
                   "median_ms": r["median_ms"], "p99_ms": r["p99_ms"],
                   "min_ms": rtts[0] if rtts else None, "lost": r["lost"]}
            res["rtt"].append(row)
            print("rtt", row, flush=True)

        loss_rows(tb, res)

        for cap in (10, 50, 200, 1000, 2000):
            tb.set_phase(shaping(rate=cap))
            mbps = tcp_mbps(tb, seconds)
            row = {"cap_mbps": cap, "measured_mbps": mbps, "ratio": mbps / cap}
            res["rate"].append(row)
            print("rate", row, flush=True)

        for lat in (0.5, 1, 2.5, 5, 10, 25, 50):
            tb.set_phase(shaping(lat))
            rtt = udp_rtts(tb, 20, 0.01)["median_ms"]
            mbps = tcp_mbps(tb, seconds, SOCKBUF)
            bound = SOCKBUF * 8 / (rtt / 1000) / 1e6
            row = {"rtt_profile_ms": 2 * lat, "rtt_measured_ms": rtt, "mbps": mbps,
                   "window_over_rtt_mbps": bound, "ratio": mbps / bound}
            res["tcp_window"].append(row)
            print("tcp", row, flush=True)

        # the done criterion: 20 ms each way, 2 ms jitter
        tb.set_phase(shaping(20, 2))
        r = udp_rtts(tb, 100, 0.01)
        mbps = tcp_mbps(tb, seconds, SOCKBUF)
        bound = SOCKBUF * 8 / (r["median_ms"] / 1000) / 1e6
        res["done"] = {"latency_ms": 20, "jitter_ms": 2, "udp_median_ms": r["median_ms"],
                       "udp_p99_ms": r["p99_ms"], "tcp_256k_mbps": mbps,
                       "window_over_rtt_mbps": bound, "ratio": mbps / bound}
        print("done", res["done"], flush=True)
        res["forwarder_stats"] = tb.forwarder.stats() if tb.forwarder else {}


if __name__ == "__main__":
    sys.exit(main())
