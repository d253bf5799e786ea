"""Capture and verify: synthetic captures (exact rates, every framing, reordering,
holes, gaps) and a real capture of a tbf-shaped link in the testbed."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from simstream.errors import UsageError
from simstream.profile import parse_profile
from simstream.testbed import capture as cap_mod
from simstream.testbed import detect
from simstream.testbed import verify as ver
from simstream.wire import lenprefix, nng, zmtp

PY = sys.executable
PROD = ("10.213.0.1", 40000)
CONS = ("10.213.0.2", 12321)
HDR = 14 + 20 + 20  # Ethernet + IPv4 + TCP without options
MSS = 1448


def _frame(src: tuple[str, int], dst: tuple[str, int], seq: int, payload: bytes,
           flags: int = 0x18) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(payload), 0, 0x4000, 64, 6, 0,
                     bytes(int(x) for x in src[0].split(".")),
                     bytes(int(x) for x in dst[0].split(".")))
    tcp = struct.pack("!HHIIHHHH", src[1], dst[1], seq, 0, (5 << 12) | flags, 65535, 0, 0)
    return eth + ip + tcp + payload


def _write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        for ts, data in packets:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, round((ts - sec) * 1e9), len(data), len(data)))
            f.write(data)


def _stream_packets(data: bytes, rate_mbps: float, t0: float, *, src: tuple[str, int] = PROD,
                    dst: tuple[str, int] = CONS, isn: int = 1000,
                    pauses: dict[int, float] | None = None) -> list[tuple[float, bytes]]:
    """SYN, then ``data`` in MSS segments paced to exactly ``rate_mbps`` on the wire."""
    out = [(t0, _frame(src, dst, isn, b"", flags=0x02))]
    t = t0 + 0.001
    per_byte = 8 / (rate_mbps * 1e6)
    for k, off in enumerate(range(0, len(data), MSS)):
        if pauses and k in pauses:
            t += pauses[k]
        chunk = data[off:off + MSS]
        out.append((t, _frame(src, dst, isn + 1 + off, chunk)))
        t += (len(chunk) + HDR) * per_byte
    return out


def _zmtp_stream(sizes: list[int]) -> bytes:
    ready = zmtp.command_frame("READY", zmtp.encode_properties({"Socket-Type": b"PUSH"}))
    body = b"".join(zmtp.frame_header(n) + bytes([k % 251]) * n for k, n in enumerate(sizes))
    return zmtp.greeting() + ready + body


def _profile(cap: float | None, kind: str = "zmq", **extra: object) -> object:
    d: dict[str, object] = {"name": "v", "transport": {"kind": kind, "url": "tcp://10.213.0.2:12321"},
                            "network": {"bandwidth_mbps": cap}}
    d.update(extra)
    return parse_profile(d)


def _emit_log(path: Path, starts: list[float], sizes: list[int], blocked_s: float = 0.0) -> None:
    with open(path, "w") as f:
        for seq, (t, n) in enumerate(zip(starts, sizes, strict=True)):
            f.write(json.dumps({"rank": 0, "seq": seq, "phase": "steady", "t_sched": t,
                                "t_first_byte": t, "t_last_byte": t + 0.001, "nbytes": n,
                                "wire_bytes": n + 2, "events": 8, "blocked_s": blocked_s,
                                "faults": [], "outcome": "delivered",
                                "url": "tcp://10.213.0.2:12321"}) + "\n")


def _messages_first_times(pkts: list[tuple[float, bytes]], stream: bytes,
                          offsets: list[int]) -> list[float]:
    # the time of the segment carrying each offset
    out = []
    for off in offsets:
        k = off // MSS
        out.append(pkts[1 + k][0])
    return out


# --------------------------------------------------------------------------
# pure parts


def test_bpf_program_shape_and_python_match() -> None:
    prog = cap_mod.bpf_tcp_port(12321)
    assert len(prog) == 20
    for pc, (code, jt, jf, _k) in enumerate(prog):
        if code in (0x15, 0x45):  # jumps stay inside the program
            assert pc + 1 + jt < len(prog) and pc + 1 + jf < len(prog)
    assert prog[-2] == (0x06, 0, 0, 262144) and prog[-1] == (0x06, 0, 0, 0)
    assert cap_mod.tcp_port_matches(_frame(PROD, CONS, 1, b"x"), 12321)
    assert cap_mod.tcp_port_matches(_frame(CONS, PROD, 1, b"x"), 12321)
    assert not cap_mod.tcp_port_matches(_frame(PROD, ("10.213.0.2", 80), 1, b"x"), 12321)
    with pytest.raises(ValueError, match="port 0"):
        cap_mod.bpf_tcp_port(0)


def test_capture_argv_wraps_in_netns() -> None:
    argv = cap_mod.capture_argv("ssb-prod", 12321, "/tmp/x.pcap", 3.0, netns="ssb-a-prod")
    assert argv[:4] == ["ip", "netns", "exec", "ssb-a-prod"]
    assert argv[4:7] == [PY, "-m", "simstream.testbed.capture"]


@pytest.mark.parametrize(("args", "msg"), [
    (["--port", "0"], "--port 0 is not in 1..65535"),
    (["--duration", "0"], "--duration 0"),
    (["--count", "0"], "--count 0"),
])
def test_capture_usage_errors(tmp_path: Path, args: list[str], msg: str) -> None:
    base = {"--iface": "lo", "--port": "1", "--out": str(tmp_path / "x.pcap")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    r = CliRunner().invoke(cap_mod.capture, [x for kv in base.items() for x in kv])
    assert isinstance(r.exception, UsageError) and msg in str(r.exception)


def test_zmtp_messages_rate_and_latency_exact(tmp_path: Path) -> None:
    sizes = [20_000 + 1000 * k for k in range(40)]
    stream = _zmtp_stream(sizes)
    pkts = _stream_packets(stream, 10.0, 1000.0)
    head = len(stream) - sum(2 + n if n < 256 else 9 + n for n in sizes)
    offsets = []
    off = head
    for n in sizes:
        offsets.append(off)
        off += (2 if n < 256 else 9) + n
    firsts = _messages_first_times(pkts, stream, offsets)
    # the consumer's own greeting comes back the other way; it is not data
    pkts.append((1000.0005, _frame(CONS, PROD, 5000, zmtp.greeting(as_server=True))))
    pkts.sort()
    pcap = tmp_path / "z.pcap"
    _write_pcap(pcap, pkts)
    log = tmp_path / "emit.jsonl"
    _emit_log(log, [t - 0.002 for t in firsts], sizes)
    rep = ver.verify_capture(pcap, _profile(10.0), emit_log=ver.load_emit_log(log))
    by = {c.name: c for c in rep.checks}
    assert by["rate"].status == "PASS" and by["rate"].note == "at the cap"
    assert by["rate"].measured in ("10.00 Mbit/s", "9.99 Mbit/s", "10.01 Mbit/s")
    assert by["messages"].status == "PASS"
    assert by["messages"].measured == "40 messages, 20000-59000 B"
    assert rep.facts["latency_ms"]["median"] == pytest.approx(2.0, abs=1e-3)
    assert not rep.failed


def test_above_the_cap_fails_with_exit_1(tmp_path: Path) -> None:
    pkts = _stream_packets(_zmtp_stream([50_000] * 30), 20.0, 50.0)
    pcap = tmp_path / "fast.pcap"
    _write_pcap(pcap, pkts)
    prof = tmp_path / "p.yaml"
    prof.write_text("name: p\ntransport: {kind: zmq, url: 'tcp://10.213.0.2:12321'}\n"
                    "network: {bandwidth_mbps: 10}\n")
    r = CliRunner().invoke(ver.verify, [str(pcap), "--profile", str(prof)])
    assert r.exit_code == 1, r.output
    assert "above the cap: the shaping did not happen" in r.output
    assert "verify: FAIL" in r.output


def test_nng_and_lenprefix_framing(tmp_path: Path) -> None:
    sizes = [3000, 10, 70_000, 0, 5]
    body = b"".join(lenprefix.length_header(n) + b"\x01" * n for n in sizes)
    for kind, data in (("nng", nng.connection_header("PUSH") + body), ("tcp", body)):
        pcap = tmp_path / f"{kind}.pcap"
        _write_pcap(pcap, _stream_packets(data, 1.0, 10.0))
        rep = ver.verify_capture(pcap, _profile(None, kind=kind))
        msgs = next(c for c in rep.checks if c.name == "messages")
        assert msgs.measured == "5 messages, 0-70000 B", (kind, msgs)
        assert next(c for c in rep.checks if c.name == "rate").status == "INFO"


def test_reordered_and_retransmitted_segments_give_the_same_messages(tmp_path: Path) -> None:
    sizes = [4000 * (k + 1) for k in range(12)]
    pkts = _stream_packets(_zmtp_stream(sizes), 50.0, 5.0)
    rng = random.Random(3)
    body = pkts[1:]
    dup = [body[i] for i in rng.sample(range(len(body)), 10)]
    # reorder neighbours and replay some segments later (retransmissions)
    for i in range(0, len(body) - 1, 7):
        body[i], body[i + 1] = (body[i + 1][0], body[i][1]), (body[i][0], body[i + 1][1])
    mixed = [pkts[0], *body, *[(t + 0.0005, f) for t, f in dup]]
    pcap = tmp_path / "mixed.pcap"
    _write_pcap(pcap, sorted(mixed, key=lambda p: p[0]))
    rep = ver.verify_capture(pcap, _profile(None))
    assert next(c for c in rep.checks if c.name == "messages").measured == \
        "12 messages, 4000-48000 B"
    assert rep.facts["retransmitted_bytes"] >= 10 * 1000
    assert rep.facts["missing_bytes"] == 0


def test_hole_in_the_capture_is_reported(tmp_path: Path) -> None:
    pkts = _stream_packets(_zmtp_stream([10_000] * 10), 50.0, 5.0)
    del pkts[30]
    pcap = tmp_path / "hole.pcap"
    _write_pcap(pcap, pkts)
    rep = ver.verify_capture(pcap, _profile(None))
    hole = next(c for c in rep.checks if c.name == "capture")
    assert hole.status == "WARN" and hole.measured == "1448 bytes missing"
    # messages before the hole are still found
    assert rep.facts["messages"] == 4


def test_gap_explained_by_a_zero_rate_phase_and_unexplained_gap_fails(tmp_path: Path) -> None:
    sizes = [10_000] * 40
    stream = _zmtp_stream(sizes)
    # a 0.6 s silence after segment 100 (~1.2 s in at 10 Mbit/s)
    pkts = _stream_packets(stream, 10.0, 100.0, pauses={100: 0.6})
    pcap = tmp_path / "gap.pcap"
    _write_pcap(pcap, pkts)
    t_silence = pkts[100][0]  # last packet before the pause
    t0 = pkts[1][0]
    phases = {"timeline": {"repeat": False, "phases": [
        {"name": "burst", "duration_s": round(t_silence - t0 + 0.05, 3), "rate_hz": 100},
        {"name": "stall", "duration_s": 0.5, "rate_hz": 0},
        {"name": "burst2", "rate_hz": 100}]}}
    rep = ver.verify_capture(pcap, _profile(None, **phases))
    assert rep.facts["gaps"] and not rep.failed
    stall = next(c for c in rep.checks if c.name == "stall")
    assert stall.status == "PASS" and stall.measured == "silence on the wire"
    # the same capture with an emit log saying the emitter was blocked in the gap
    offsets, off = [], len(stream) - sum(9 + n for n in sizes)
    for n in sizes:
        offsets.append(off)
        off += 9 + n
    firsts = _messages_first_times(pkts, stream, offsets)
    log = tmp_path / "emit.jsonl"
    with open(log, "w") as f:
        for seq, t in enumerate(firsts):
            f.write(json.dumps({"rank": 0, "seq": seq, "phase": "steady", "t_sched": t,
                                "t_first_byte": t, "t_last_byte": t + 1.0, "nbytes": 10_000,
                                "wire_bytes": 10_009, "events": 8, "blocked_s": 0.7,
                                "faults": [], "outcome": "delivered", "url": "x"}) + "\n")
    rep2 = ver.verify_capture(pcap, _profile(None), emit_log=ver.load_emit_log(log))
    gap = next(c for c in rep2.checks if c.name == "gap")
    assert gap.status == "FAIL" and "the emitter was blocked" in gap.note
    assert rep2.failed


def test_no_traffic_on_the_port_fails(tmp_path: Path) -> None:
    pcap = tmp_path / "other.pcap"
    _write_pcap(pcap, _stream_packets(b"x" * 5000, 10.0, 1.0, dst=("10.213.0.2", 80)))
    rep = ver.verify_capture(pcap, _profile(10.0))
    assert rep.failed and rep.checks[0].measured == "no TCP payload"


def test_verify_usage_errors(tmp_path: Path) -> None:
    r = CliRunner().invoke(ver.verify, [str(tmp_path / "none.pcap"), "--profile", "steady"])
    assert isinstance(r.exception, UsageError) and "no such file" in str(r.exception)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\x00" * 40)
    r = CliRunner().invoke(ver.verify, [str(bad), "--profile", "steady"])
    assert isinstance(r.exception, UsageError) and "pcapng is not read" in str(r.exception)
    log = tmp_path / "e.jsonl"
    log.write_text('{"rank": 0}\n')
    with pytest.raises(UsageError, match="e.jsonl:1: not an emit-log record"):
        ver.load_emit_log(log)


# --------------------------------------------------------------------------
# the real thing


@pytest.mark.netns
@pytest.mark.integration
def test_real_capture_of_a_tbf_link_verifies(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    offer = detect.probe()
    if not offer.netns_ok or "tbf" not in offer.kinds:
        pytest.skip(f"needs ip netns and tbf: {offer.netns_detail or sorted(offer.kinds)}")
    from simstream.testbed.netns import Testbed, leftovers

    prof_path = tmp_path / "p.yaml"
    prof_path.write_text("name: tbfcheck\ntransport: {kind: tcp, url: 'tcp://10.213.0.2:5001'}\n"
                         "network: {bandwidth_mbps: 20}\nstop: {duration_s: 3}\n")
    from simstream.profile import load_profile

    pcap = tmp_path / "link.pcap"
    log = tmp_path / "emit.jsonl"
    with Testbed.up("capv", load_profile(prof_path), offer=offer) as tb:
        capture = subprocess.Popen(
            [PY, "-m", "simstream", "capture", "--iface", tb.producer_iface,
             "--port", "5001", "--out", str(pcap), "--duration", "15", "--netns",
             str(tb.producer_ns)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert capture.stderr is not None
        assert "capturing on ssb-prod port 5001" in capture.stderr.readline()
        procs = []
        for port in (5001, 5002):  # 5002 must not reach the pcap
            r = subprocess.Popen(tb.argv_in("consumer", [
                PY, "-m", "simstream.testbed.traffic", "recv", "--bind",
                f"{tb.consumer_addr}:{port}", "--duration", "8"]), stdout=subprocess.PIPE,
                text=True)
            assert r.stdout is not None and "listening" in r.stdout.readline()
            procs.append(r)
        other = subprocess.Popen(tb.argv_in("producer", [
            PY, "-m", "simstream.testbed.traffic", "send", "--to", f"{tb.consumer_addr}:5002",
            "--duration", "1", "--rate-mbps", "1"]), stdout=subprocess.PIPE, text=True)
        sent = subprocess.run(tb.argv_in("producer", [
            PY, "-m", "simstream.testbed.traffic", "send", "--to", f"{tb.consumer_addr}:5001",
            "--duration", "3", "--message-bytes", "50000", "--log", str(log)]),
            capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        other.communicate(timeout=20)
        got = json.loads(procs[0].communicate(timeout=20)[0].strip().splitlines()[-1])
        procs[1].communicate(timeout=20)
        capture.terminate()
        out, err = capture.communicate(timeout=20)
        assert capture.returncode == 0, err
    assert not leftovers("capv")
    assert "captured" in out and "(0 dropped by the kernel)" in out
    assert 20 * 0.88 <= got["rate_mbps"] <= 20 * 1.02
    n_sent = json.loads(sent.stdout)["messages"]
    r = CliRunner().invoke(ver.verify, [str(pcap), "--profile", str(prof_path), "--emit-log",
                                        str(log), "--json", str(tmp_path / "v.json")])
    assert r.exit_code == 0, r.output
    checks = json.loads((tmp_path / "v.json").read_text())["checks"]
    rate = next(c for c in checks if c["name"] == "rate")
    assert rate["status"] == "PASS" and rate["note"] == "at the cap"
    assert abs(float(rate["measured"].split()[0]) - 20) <= 2
    msgs = next(c for c in checks if c["name"] == "messages")
    assert msgs["status"] == "PASS" and msgs["measured"].startswith(f"{n_sent} messages")
    ports = {struct.unpack("!HH", f[34:38]) for _, f, _ in ver.read_pcap(pcap)}
    assert all(5001 in p for p in ports) and ports
    # a claim of a tighter cap than the link had is caught
    tight = tmp_path / "tight.yaml"
    tight.write_text(prof_path.read_text().replace("bandwidth_mbps: 20", "bandwidth_mbps: 10"))
    r2 = CliRunner().invoke(ver.verify, [str(pcap), "--profile", str(tight)])
    assert r2.exit_code == 1 and "above the cap" in r2.output


def test_truncated_capture_still_gives_the_rate(tmp_path: Path) -> None:
    pkts = _stream_packets(_zmtp_stream([30_000] * 40), 8.0, 20.0)
    pcap = tmp_path / "snap.pcap"
    _write_pcap(pcap, [(t, f[:96]) for t, f in pkts])
    rep = ver.verify_capture(pcap, _profile(8.0))
    by = {c.name: c for c in rep.checks}
    assert by["capture"].measured == "packets truncated (snaplen)"
    assert by["rate"].status == "PASS" and by["rate"].measured in ("8.00 Mbit/s", "7.99 Mbit/s")
    assert "messages" not in by
    r = CliRunner().invoke(cap_mod.capture, ["--iface", "lo", "--port", "1", "--out",
                                             str(tmp_path / "x.pcap"), "--snaplen", "40"])
    assert isinstance(r.exception, UsageError) and "--snaplen 40 is below 96" in str(r.exception)


_PULL = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.PULL); s.bind(sys.argv[1]); s.RCVTIMEO = 10000
print("bound", flush=True)
n = 0
for _ in range(int(sys.argv[2])):
    s.recv(); n += 1
print(n, flush=True); s.close(0); ctx.term()
"""
_PUSH = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.PUSH); s.connect(sys.argv[1])
for k in range(int(sys.argv[2])):
    s.send(bytes([k % 256]) * (100_000 + k))
s.close(linger=10000); ctx.term()
"""


@pytest.mark.netns
@pytest.mark.integration
def test_real_libzmq_stream_is_walked_message_by_message(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    offer = detect.probe()
    if not offer.netns_ok:
        pytest.skip(f"needs ip netns: {offer.netns_detail}")
    from simstream.testbed.netns import Testbed

    n = 60
    pcap = tmp_path / "zmq.pcap"
    url = "tcp://10.213.0.2:12321"
    with Testbed.up("zmqv", None, offer=offer) as tb:
        capture = subprocess.Popen(
            cap_mod.capture_argv(tb.consumer_iface, 12321, pcap, 30, netns=tb.consumer_ns),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert capture.stderr is not None and "capturing" in capture.stderr.readline()
        pull = subprocess.Popen(tb.argv_in("consumer", [PY, "-c", _PULL, "tcp://0.0.0.0:12321",
                                                        str(n)]), stdout=subprocess.PIPE, text=True)
        assert pull.stdout is not None and pull.stdout.readline().strip() == "bound"
        subprocess.run(tb.argv_in("producer", [PY, "-c", _PUSH, url, str(n)]), check=True,
                       timeout=60)
        assert pull.communicate(timeout=30)[0].strip() == str(n)
        capture.terminate()
        capture.communicate(timeout=20)
    rep = ver.verify_capture(pcap, _profile(None, kind="zmq"))
    msgs = next(c for c in rep.checks if c.name == "messages")
    assert msgs.measured == f"{n} messages, 100000-{100_000 + n - 1} B", rep.checks
    assert not any(c.name == "framing" for c in rep.checks)


@pytest.mark.integration
def test_loopback_capture_sees_each_packet_once(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (AF_PACKET)")
    import socket as _socket

    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pcap, log = tmp_path / "lo.pcap", tmp_path / "emit.jsonl"
    capture = subprocess.Popen(cap_mod.capture_argv("lo", port, pcap, 20), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert capture.stderr is not None and "capturing" in capture.stderr.readline()
    recv = subprocess.Popen([PY, "-m", "simstream.testbed.traffic", "recv", "--bind",
                             f"127.0.0.1:{port}", "--duration", "5"], stdout=subprocess.PIPE,
                            text=True)
    assert recv.stdout is not None and "listening" in recv.stdout.readline()
    subprocess.run([PY, "-m", "simstream.testbed.traffic", "send", "--to", f"127.0.0.1:{port}",
                    "--duration", "1", "--rate-mbps", "20", "--message-bytes", "20000",
                    "--log", str(log)], check=True, capture_output=True, timeout=30)
    recv.communicate(timeout=20)
    capture.terminate()
    capture.communicate(timeout=20)
    prof = _profile(20.0, kind="tcp", transport={"kind": "tcp", "url": f"tcp://127.0.0.1:{port}"})
    rep = ver.verify_capture(pcap, prof, emit_log=ver.load_emit_log(log))
    by = {c.name: c for c in rep.checks}
    assert by["messages"].status == "PASS", rep.checks
    assert rep.facts["retransmitted_bytes"] == 0  # no second copy of anything
    assert by["rate"].status == "PASS", by["rate"]


_PULL_UNTIL_IDLE = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.PULL); s.bind(sys.argv[1]); s.RCVTIMEO = 3000
print("bound", flush=True)
n = 0
for _ in range(100000):
    try:
        s.recv()
    except zmq.Again:
        break
    n += 1
print(n, flush=True); s.close(0); ctx.term()
"""


@pytest.mark.netns
@pytest.mark.integration
def test_simstream_emit_over_a_tbf_link_verifies_against_its_emit_log(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    offer = detect.probe()
    if not offer.netns_ok or "tbf" not in offer.kinds:
        pytest.skip(f"needs ip netns and tbf: {offer.netns_detail or sorted(offer.kinds)}")
    for extra in ("zmq", "scapy"):
        pytest.importorskip(extra, reason=f"the optional package {extra} is not installed")
    import simstream.emitter.cli  # noqa: F401  (a broken import here is a failure, not a skip)
    from simstream.profile import load_profile
    from simstream.testbed.netns import Testbed

    base = ("name: e2e\nseed: 2\nsource: {batch_size: 8, shape: [1, 64, 64], content: constant,"
            " total_events: null, pool: 4}\ntransport: {kind: zmq, url: "
            "'tcp://10.213.0.2:12321'}\ntimeline: {phases: [{name: saturate, rate_hz: null}]}\n"
            "stop: {duration_s: 2}\n")
    emit_prof = tmp_path / "emit.yaml"  # no cap: the emitter sends as fast as it can
    emit_prof.write_text(base)
    link_prof = tmp_path / "link.yaml"  # the cap the kernel applies, and verify checks
    link_prof.write_text(base + "network: {bandwidth_mbps: 20}\n")
    pcap, log = tmp_path / "e2e.pcap", tmp_path / "emit.jsonl"
    with Testbed.up("e2e", load_profile(link_prof), offer=offer) as tb:
        capture = subprocess.Popen(
            cap_mod.capture_argv(tb.producer_iface, 12321, pcap, 40, netns=tb.producer_ns),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert capture.stderr is not None and "capturing" in capture.stderr.readline()
        pull = subprocess.Popen(tb.argv_in("consumer", [PY, "-c", _PULL_UNTIL_IDLE,
                                                        "tcp://0.0.0.0:12321"]),
                                stdout=subprocess.PIPE, text=True)
        assert pull.stdout is not None and pull.stdout.readline().strip() == "bound"
        em = subprocess.run(tb.argv_in("producer", [PY, "-m", "simstream", "emit", "--profile",
                                                    str(emit_prof), "--log", str(log),
                                                    "--no-progress"]),
                            capture_output=True, text=True, timeout=60)
        received = int(pull.communicate(timeout=30)[0].strip())
        capture.terminate()
        capture.communicate(timeout=20)
    assert em.returncode == 0, em.stderr
    r = CliRunner().invoke(ver.verify, [str(pcap), "--profile", str(link_prof), "--emit-log",
                                        str(log), "--json", str(tmp_path / "v.json")])
    checks = json.loads((tmp_path / "v.json").read_text())["checks"]
    by = {c["name"]: c for c in checks}
    assert by["rate"]["status"] == "PASS" and by["rate"]["note"] == "at the cap", r.output
    assert by["messages"]["status"] == "PASS", r.output
    assert by["messages"]["measured"].startswith(f"{received} messages")
    assert r.exit_code == 0, r.output


def test_rate_is_checked_phase_by_phase(tmp_path: Path) -> None:
    # 1 s at 20 Mbit/s then 1 s at 5 Mbit/s on the wire
    fast = _stream_packets(b"\x00" * int(20e6 / 8 * 0.96), 20.0, 0.0)
    t_switch = fast[-1][0] + (len(fast[-1][1]) - 14 - 40 + HDR) * 8 / 20e6
    end_seq = 1001 + int(20e6 / 8 * 0.96)
    slow = [(t - 0.001 + t_switch, _frame(PROD, CONS, seq_off, f[54:]))
            for (t, f), seq_off in zip(
                _stream_packets(b"\x01" * int(5e6 / 8 * 0.96), 5.0, 0.0)[1:],
                range(end_seq, 10**9, MSS), strict=False)]
    pcap = tmp_path / "phases.pcap"
    _write_pcap(pcap, fast + slow)
    d = round(t_switch - fast[1][0], 4)

    def prof(a: float, b: float) -> object:
        return _profile(None, kind="tcp", timeline={"repeat": False, "phases": [
            {"name": "wide", "duration_s": d, "network": {"bandwidth_mbps": a}},
            {"name": "narrow", "network": {"bandwidth_mbps": b}}]})

    rep = ver.verify_capture(pcap, prof(20, 5), framing="none")
    rates = [c for c in rep.checks if c.name == "rate"]
    assert [(c.where.split()[0], c.status) for c in rates] == [("wide", "PASS"), ("narrow", "PASS")]
    assert [c.note for c in rates] == ["at the cap", "at the cap"]
    swapped = ver.verify_capture(pcap, prof(5, 20), framing="none", saturated=True)
    rates = [c for c in swapped.checks if c.name == "rate"]
    assert [c.status for c in rates] == ["FAIL", "FAIL"]
    assert rates[0].note == "above the cap: the shaping did not happen"
    assert rates[1].note.startswith("below the cap while the sender had more")
