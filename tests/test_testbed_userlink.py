"""The user-space link emulator in a testbed: choosing it, mapping the profile onto it,
and (root, netns, TUN) the round trips and TCP window limit that plain sockets see
through it, phase changes, and nothing left after the owner is SIGKILLed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from simstream.profile import parse_profile
from simstream.testbed import detect, tc, userlink
from simstream.testbed.detect import KernelOffer, QdiscProbe, run_cmd
from simstream.testbed.link import DeliveryTrace, GilbertElliott, LinkParams
from simstream.testbed.netns import Testbed, leftovers

PY = sys.executable
SOCKBUF = 256 * 1024


def _profile(phases: list[dict[str, object]] | None = None, **network: object) -> object:
    d: dict[str, object] = {"name": "t", "transport": {"kind": "tcp", "url": "tcp://10.213.0.2:5001"},
                            "network": network, "stop": {"duration_s": 3}}
    if phases:
        d["timeline"] = {"repeat": False, "phases": phases}
    return parse_profile(d)


def _offer(*kinds: str) -> KernelOffer:
    return KernelOffer(root=True, cap_net_admin=True, tools={}, netns_ok=True, netns_detail="",
                       qdiscs={k: QdiscProbe(k, True, "") for k in kinds})


@pytest.mark.parametrize(("network", "kinds", "want", "why"), [
    ({"latency_ms": 20}, ("tbf", "htb"), "user-link", "netem is missing"),
    ({"latency_ms": 20}, ("netem", "tbf"), "tc", "netem is available"),
    ({"bandwidth_mbps": 50}, ("tbf",), "tc", "no latency, jitter or loss"),
    ({"loss_pct": 1}, ("tbf",), "user-link", "netem is missing"),
    ({"queue_packets": 50, "bandwidth_mbps": 10}, ("netem", "tbf"), "user-link", "queue_packets"),
    ({"latency_ms": 20, "emulator": "tc"}, ("tbf",), "tc", "emulator: tc"),
    ({"emulator": "user-link"}, ("netem",), "user-link", "emulator: user-link"),
])
def test_auto_picks_the_user_link_when_netem_cannot_do_what_is_asked(
        network: dict[str, object], kinds: tuple[str, ...], want: str, why: str) -> None:
    got, reason = userlink.choose_emulator(_profile(**network), _offer(*kinds))  # type: ignore[arg-type]
    assert got == want and why in reason


def test_a_phase_asking_latency_counts_too() -> None:
    prof = _profile([{"name": "a", "duration_s": 1}, {"name": "b", "network": {"jitter_ms": 3}}])
    assert userlink.choose_emulator(prof, _offer("tbf"))[0] == "user-link"  # type: ignore[arg-type]


def test_profile_maps_onto_both_directions(tmp_path: Path) -> None:
    trace = tmp_path / "cell.trace"
    trace.write_text("1\n1\n3\n")
    prof = _profile(latency_ms=20, jitter_ms=2, jitter_distribution="pareto", loss_pct=1,
                    loss_burst={"p_pct": 1, "r_pct": 30}, bandwidth_mbps=100,
                    queue_bytes=200_000, trace=str(trace))
    net = prof.network  # type: ignore[attr-defined]
    shaping = tc.shaping_from_network(net)
    assert shaping.netem.loss_pct == 1  # the tc path gets the loss too (netem's)
    p2c, c2p = userlink.link_params(shaping, net)
    assert p2c == LinkParams(delay_ms=20, jitter_ms=2, distribution="pareto", loss_pct=1,
                             loss_burst=GilbertElliott(1, 30), rate_mbps=100,
                             trace=DeliveryTrace((1, 1, 3)), queue_bytes=200_000)
    # acknowledgements: delayed like the data, neither dropped nor rate-capped
    assert c2p == LinkParams(delay_ms=20, jitter_ms=2, distribution="pareto")
    lines = userlink.describe(p2c, c2p)
    assert lines[0] == "latency 20 ms, jitter 2 ms (pareto, order kept) (user-link, producer -> consumer)"
    assert any(ln.startswith("burst loss (Gilbert-Elliott") for ln in lines)
    assert any("mahimahi trace (3 opportunities per 0.003 s" in ln for ln in lines)


def test_a_missing_trace_is_named() -> None:
    prof = _profile(latency_ms=1, trace="/nonexistent/x.csv")
    net = prof.network  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"network.trace '/nonexistent/x.csv' cannot be read"):
        userlink.link_params(tc.shaping_from_network(net), net)


# --------------------------------------------------------------------------
# the real thing


@pytest.fixture(scope="module")
def offer() -> KernelOffer:
    if os.geteuid() != 0 and not detect.has_cap_net_admin():
        pytest.skip("needs root or CAP_NET_ADMIN")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun: TUN devices are not available")
    o = detect.probe()
    if not o.netns_ok:
        pytest.skip(f"ip netns does not work here: {o.netns_detail}")
    return o


def _json_line(p: subprocess.Popen[str], timeout_s: float) -> dict[str, object]:
    out = p.communicate(timeout=timeout_s)[0]
    return json.loads(out.strip().splitlines()[-1])


def _udp_rtts(tb: Testbed, count: int) -> dict[str, object]:
    echo = subprocess.Popen(tb.argv_in("consumer", [
        PY, "-m", "simstream.testbed.traffic", "udp-echo", "--bind", f"{tb.consumer_addr}:5002",
        "--duration", "30"]), stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and "listening" in echo.stdout.readline()
        cp = subprocess.run(tb.argv_in("producer", [
            PY, "-m", "simstream.testbed.traffic", "udp-probe", "--to", f"{tb.consumer_addr}:5002",
            "--count", str(count), "--interval", "0.01"]), capture_output=True, text=True,
            timeout=60)
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout)
    finally:
        echo.kill()
        echo.communicate(timeout=5)


def _tcp_mbps(tb: Testbed, seconds: float) -> float:
    recv = subprocess.Popen(tb.argv_in("consumer", [
        PY, "-m", "simstream.testbed.traffic", "recv", "--bind", f"{tb.consumer_addr}:5001",
        "--duration", str(seconds + 5), "--sockbuf", str(SOCKBUF)]), stdout=subprocess.PIPE,
        text=True)
    try:
        assert recv.stdout is not None and "listening" in recv.stdout.readline()
        send = subprocess.run(tb.argv_in("producer", [
            PY, "-m", "simstream.testbed.traffic", "send", "--to", f"{tb.consumer_addr}:5001",
            "--duration", str(seconds), "--sockbuf", str(SOCKBUF)]), capture_output=True,
            text=True, timeout=seconds + 30)
        assert send.returncode == 0, send.stderr
        return float(_json_line(recv, seconds + 30)["rate_mbps"])  # type: ignore[arg-type]
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.communicate(timeout=5)


def _nothing_left(name: str) -> None:
    assert not leftovers(name).namespaces
    assert "ssb-" not in run_cmd(["ip", "-o", "link", "show"]).stdout
    procs = run_cmd(["ps", "-eo", "args"]).stdout
    assert f"--peer-ns ssb-{name}-cons" not in procs


@pytest.mark.netns
@pytest.mark.integration
def test_plain_sockets_see_the_round_trip_and_tcp_is_held_to_window_over_rtt(
        offer: KernelOffer) -> None:
    prof = _profile(latency_ms=20, jitter_ms=2, emulator="user-link")
    with Testbed.up("ulink", prof, offer=offer) as tb:  # type: ignore[arg-type]
        assert tb.emulator == "user-link" and tb.plan is not None and tb.plan.layout == "user-link"
        assert tb.applied[0].startswith("latency 20 ms, jitter 2 ms (normal, order kept) "
                                        "(user-link, producer -> consumer) on ssb-prod")
        # this kernel takes TSO and checksum offload on TUN devices
        assert tb.applied[-2:] == ["TUN devices: MTU 65000, TCP segmentation and checksum "
                                   "offload (no loss asked for: large packets, the least "
                                   "forwarder CPU per byte)", "forwarder niceness -10"]
        probe = _udp_rtts(tb, 40)
        mbps = _tcp_mbps(tb, 3.0)
        # a phase change reaches the packets at once
        took = tb.set_phase(tc.Shaping(netem=tc.Netem(delay_ms=5)))
        fast = _udp_rtts(tb, 20)
        stats = tb.forwarder.stats() if tb.forwarder else {}
    median = float(probe["median_ms"])  # type: ignore[arg-type]
    # 2 x 20 ms, each way N(20, 2): median 40 ms; a loaded 2-core machine wakes
    # the forwarder late by a few ms, never early
    assert 38.0 <= median <= 55.0, probe
    assert min(probe["rtts_ms"]) >= 28.0, probe  # type: ignore[call-overload]
    assert probe["lost"] == 0
    # unshaped, this stream moves ~2000 Mbit/s. The window is bounded by the
    # buffers: the kernel doubles SO_RCVBUF and advertises about half to 3/4 of it
    rtt_s = median / 1000
    window_over_rtt = SOCKBUF * 8 / rtt_s / 1e6  # Mbit/s
    assert 0.5 * window_over_rtt <= mbps <= 2.0 * window_over_rtt * 1.1, (mbps, window_over_rtt)
    assert 0 < took < 2.0
    assert 9.5 <= float(fast["median_ms"]) <= 25.0, fast  # type: ignore[arg-type]
    p2c = stats["p2c"]
    assert p2c["delivered"] > 0 and p2c["lost"] == 0 and p2c["queue_drops"] == 0
    assert tb.link_stats["p2c"]["delivered"] >= p2c["delivered"]
    _nothing_left("ulink")


@pytest.mark.netns
@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killing_the_owner_takes_forwarder_and_namespaces_with_it(
        offer: KernelOffer, tmp_path: Path, sig: int) -> None:
    # SIGINT: the owner's teardown ends the forwarder; SIGKILL: the forwarder sees its
    # control pipe close and removes the namespaces itself
    prof = tmp_path / "p.yaml"
    prof.write_text("name: k\nnetwork: {latency_ms: 5, emulator: user-link}\n")
    p = subprocess.Popen([PY, "-m", "simstream", "testbed", "up", "--name", "ulkill",
                          "--profile", str(prof), "--duration", "60"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        lines = []
        for line in p.stdout:
            lines.append(line)
            if line.strip() == "up":
                break
        assert "layout: user-link\n" in lines, lines
        assert leftovers("ulkill").namespaces
        p.send_signal(sig)
        p.wait(timeout=20)
        deadline = time.monotonic() + 10
        while leftovers("ulkill").namespaces and time.monotonic() < deadline:
            time.sleep(0.1)
        _nothing_left("ulkill")
        assert not list(Path(tempfile.gettempdir()).glob("ssb-ulkill-*"))
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=5)
        run_cmd([PY, "-m", "simstream", "testbed", "down", "ulkill"])


@pytest.mark.netns
@pytest.mark.integration
def test_a_detached_link_is_ended_by_testbed_down(offer: KernelOffer, tmp_path: Path) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text("name: d\nnetwork: {latency_ms: 5, emulator: user-link}\n")
    pid = None
    try:
        up = subprocess.run([PY, "-m", "simstream", "testbed", "up", "--name", "uldown",
                             "--profile", str(prof), "--detach"], capture_output=True, text=True,
                            timeout=60)
        assert up.returncode == 0, up.stdout + up.stderr
        [pid] = userlink.forwarder_pids("ssb-uldown-prod")
    finally:
        down = subprocess.run([PY, "-m", "simstream", "testbed", "down", "uldown"],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr

    def alive(p: int) -> bool:  # a zombie waiting for init to reap it is gone
        try:
            return Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    _nothing_left("uldown")


def test_a_tun_capture_is_written_as_ethernet_and_filtered_by_port() -> None:
    from simstream.testbed.capture import ethernet_framed, tcp_port_matches

    ip4 = bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 213, 0, 1, 10, 213, 0, 2])
    tcp = (12321).to_bytes(2, "big") + (40000).to_bytes(2, "big") + b"\0" * 16
    frame = ethernet_framed(ip4 + tcp)
    assert frame[12:14] == b"\x08\x00" and frame[14:] == ip4 + tcp
    assert tcp_port_matches(frame, 12321) and not tcp_port_matches(frame, 5001)
    assert ethernet_framed(b"\x60" + b"\0" * 39)[12:14] == b"\x86\xdd"


def _ts_frame(src: tuple[str, int], dst: tuple[str, int], seq: int, payload: bytes,
              tsval: int, tsecr: int) -> bytes:
    import struct

    from simstream.testbed.capture import ethernet_framed

    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, tsecr)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 32 + len(payload), 0, 0x4000, 64, 6, 0,
                     bytes(int(x) for x in src[0].split(".")),
                     bytes(int(x) for x in dst[0].split(".")))
    tcp = struct.pack("!HHIIHHHH", src[1], dst[1], seq, 0, (8 << 12) | 0x10, 65535, 0, 0)
    return ethernet_framed(ip + tcp + opts + payload)


def _write_pcap(path: Path, pkts: list[tuple[float, bytes]]) -> Path:
    import struct

    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        for ts, data in sorted(pkts, key=lambda p: p[0]):
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, round((ts - sec) * 1e9), len(data), len(data)))
            f.write(data)
    return path


PROD, CONS = ("10.213.0.1", 40000), ("10.213.0.2", 12321)


def test_verify_reads_round_trips_from_tcp_timestamps(tmp_path: Path) -> None:
    from simstream.testbed.verify import receiver_rtts, tcp_flows

    pkts = []
    # the consumer ACKs with TSval k at t = k * 0.1; the producer's next segment echoes it
    # 40 ms later (the round trip), except the third, which the sender held 60 ms more
    for k in range(1, 6):
        t = k * 0.1
        pkts.append((t, _ts_frame(CONS, PROD, 1, b"", tsval=k, tsecr=0)))
        extra = 0.06 if k == 3 else 0.0
        pkts.append((t + 0.04 + extra, _ts_frame(PROD, CONS, 1 + k * 100, b"x" * 100,
                                                 tsval=1000 + k, tsecr=k)))
    path = _write_pcap(tmp_path / "ts.pcap", pkts)
    data, acks = sorted(tcp_flows(path, 12321), key=lambda f: -f.payload_bytes)
    got = receiver_rtts(data, acks, ack_clocked=False)
    assert [round(r, 6) for _, r in got] == [0.04, 0.04, 0.1, 0.04, 0.04]
    # one packet in flight: no data arrives between an ACK and its echo, so none of
    # these is known to be ACK-clocked (the sender may have waited for its application)
    assert receiver_rtts(data, acks) == []


def _simulated_tcp(n: int, lost: set[int], *, idle_after: int | None = None, d: float = 0.02,
                   window: int = 8, size: int = 1000,
                   sender: list[tuple[float, bytes]] | None = None) -> list[tuple[float, bytes]]:
    """What a capture at the consumer sees of an ACK-clocked sender: one-way delay ``d``
    both ways, ``window`` packets in flight, the packets in ``lost`` dropped on their
    first sending and resent on the third ACK after, a 0.5 s application pause before packet
    ``idle_after``. The consumer ACKs each packet at once, TSval its millisecond clock.
    ``sender`` collects what a capture on the producer's side sees of the data."""
    import heapq

    ev: list[tuple[float, int, str, int, int]] = []  # (time, order, kind, index or TSval, TSecr)
    order = iter(range(10**6))
    out: list[tuple[float, bytes]] = []
    dropped: set[int] = set()
    retx: list[list[int]] = []  # [index, ACKs to wait before resending it]
    st = {"next": 0, "held": 0, "paused": 0, "idled": 0, "latest": 0}

    def send(t: float, i: int, tsecr: int) -> None:
        if sender is not None:
            sender.append((t, _ts_frame(PROD, CONS, 1 + i * size, b"x" * size,
                                        tsval=10**6 + i + (i in dropped), tsecr=tsecr)))
        if i in lost and i not in dropped:
            dropped.add(i)
            retx.append([i, 3])  # resent on the third duplicate ACK
            return
        heapq.heappush(ev, (t + d, next(order), "data", i, tsecr))

    def send_next(t: float, tsecr: int) -> None:
        for r in retx:
            r[1] -= 1
        if retx and retx[0][1] <= 0:
            send(t, retx.pop(0)[0], tsecr)
            return
        if st["next"] >= n:
            return
        if st["next"] == idle_after and not st["idled"]:
            st["idled"] = st["paused"] = 1
            heapq.heappush(ev, (t + 0.5, next(order), "resume", 0, 0))
        if st["paused"]:
            st["held"] += 1
            return
        send(t, st["next"], tsecr)
        st["next"] += 1

    for k in range(window):  # the first window, 1 ms apart (a 1000-byte packet at 8 Mbit/s)
        send_next(k * 0.001, 0)
    for _ in range(100 * n):
        if not ev:
            break
        t, _, kind, a, b = heapq.heappop(ev)
        if kind == "data":
            out.append((t, _ts_frame(PROD, CONS, 1 + a * size, b"x" * size,
                                     tsval=10**6 + a + (a in dropped), tsecr=b)))
            tsval = int(t * 1000)
            out.append((t, _ts_frame(CONS, PROD, 1, b"", tsval=tsval, tsecr=10**6 + a)))
            heapq.heappush(ev, (t + d, next(order), "ack", tsval, 0))
        elif kind == "ack":
            st["latest"] = a
            send_next(t, a)
        else:  # the application resumes: the held sends go out at once
            held, st["held"], st["paused"] = st["held"], 0, 0
            for _ in range(held):
                send_next(t, st["latest"])
    return out


def test_round_trips_and_losses_of_a_simulated_stream(tmp_path: Path) -> None:
    from simstream.testbed.verify import reassemble, receiver_losses, receiver_rtts, tcp_flows

    lost = {50, 51, 120, 300}
    path = _write_pcap(tmp_path / "sim.pcap", _simulated_tcp(400, lost, idle_after=200))
    data, acks = sorted(tcp_flows(path, 12321), key=lambda f: -f.payload_bytes)
    assert reassemble(data).contiguous == 400 * 1000  # every byte arrived in the end
    rtts = [r for _, r in receiver_rtts(data, acks)]
    # ACK-clocked echoes: the round trip (2 x 20 ms) plus at most the TSval clock's 1 ms;
    # the echo after the 0.5 s pause is not one of them
    assert len(rtts) > 150 and all(0.04 - 1e-9 <= r <= 0.041 + 1e-9 for r in rtts), rtts
    unfiltered = [r for _, r in receiver_rtts(data, acks, ack_clocked=False)]
    assert max(unfiltered) > 0.5
    losses, never_filled = receiver_losses(data)
    # 50 and 51 are one hole of two packets
    assert [(x.packets, x.nbytes) for x in losses] == [(2, 2000), (1, 1000), (1, 1000)]
    assert never_filled == 0
    # a packet the capture missed is never resent: not a loss of the link
    missed = [p for p in _simulated_tcp(100, set()) if b"x" * 1000 not in p[1]
              or p[1].find((1 + 70 * 1000).to_bytes(4, "big")) != 38]
    flows = tcp_flows(_write_pcap(tmp_path / "missed.pcap", missed), 12321)
    d2 = max(flows, key=lambda f: f.payload_bytes)
    assert receiver_losses(d2) == ([], 1000)


def test_verify_command_judges_a_simulated_link_from_both_sides(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from simstream.errors import UsageError
    from simstream.testbed.verify import verify

    sender: list[tuple[float, bytes]] = []
    lost = {50, 51, 120, 300}
    got = _write_pcap(tmp_path / "consumer.pcap", _simulated_tcp(400, lost, sender=sender))
    sent = _write_pcap(tmp_path / "producer.pcap", sender)

    def run(latency: float, *extra: str) -> tuple[int, dict[str, dict[str, str]]]:
        prof = tmp_path / f"p{latency:g}.yaml"
        prof.write_text("name: v\ntransport: {kind: tcp, url: 'tcp://10.213.0.2:12321'}\n"
                        f"network: {{latency_ms: {latency}, loss_pct: 1, emulator: user-link}}\n")
        out = tmp_path / "v.json"
        r = CliRunner().invoke(verify, [str(got), "--profile", str(prof), "--framing", "none",
                                        "--json", str(out), *extra])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return r.exit_code, {c["name"]: c for c in json.loads(out.read_text())["checks"]}

    rc, checks = run(20, "--sender-pcap", str(sent))
    assert rc == 0, checks
    assert checks["rtt"]["status"] == checks["delay"]["status"] == "PASS"
    assert checks["delay"]["measured"].startswith("median 20.00 ms")
    # 4 of the 404 packets sent: every one followed across the link
    assert checks["loss"]["measured"] == "0.99 % (4 of 404 packets)"
    assert checks["loss"]["status"] == "PASS"
    rc, checks = run(40, "--sender-pcap", str(sent))
    assert rc == 1 and checks["rtt"]["status"] == checks["delay"]["status"] == "FAIL"
    # told it was tc: round trips and losses are reported, not judged
    rc, checks = run(40, "--emulator", "tc")
    assert rc == 0 and checks["rtt"]["status"] == checks["loss"]["status"] == "INFO"
    with pytest.raises(UsageError, match="--sender-pcap .*: no such file"):
        run(20, "--sender-pcap", str(tmp_path / "nope.pcap"))
    other = _write_pcap(tmp_path / "other.pcap", [(0.0, _ts_frame(("10.213.0.1", 40001), CONS, 1,
                                                                   b"x", tsval=1, tsecr=0))])
    with pytest.raises(UsageError, match="not the same link's other side"):
        run(20, "--sender-pcap", str(other))


def test_round_trip_and_loss_checks_have_stated_bounds() -> None:
    from simstream.testbed.verify import Window, _loss_check, _rtt_check, loss_tolerance, rtt_bounds

    w = Window("steady", 0.0, 10.0, None, None, latency_ms=20, jitter_ms=2, loss_pct=1.0)
    low, high = rtt_bounds(w, "user-link")
    assert round(low, 2) == round(40 - 3 * 2 ** 0.5 * 2 - 1, 2) and high == 40 + 8 + 10
    assert rtt_bounds(w, "tc") == (20 - 6 - 1, 20 + 4 + 10)
    ok = _rtt_check("p", w, [0.04] * 20, "user-link")
    assert ok.status == "PASS" and "median 40.00 ms" in ok.measured
    assert _rtt_check("p", w, [0.0002] * 20, "user-link").status == "FAIL"  # not applied
    assert _rtt_check("p", w, [0.09] * 20, "user-link").status == "FAIL"
    capped = Window("c", 0, 10, 80.0, None, latency_ms=20, rate_stage=True)
    assert "bufferbloat" in _rtt_check("p", capped, [0.09] * 20, "user-link").note
    assert _rtt_check("p", w, [0.04] * 5, "user-link").status == "SKIP"
    assert _rtt_check("p", w, [0.0002] * 20, "tc").status == "INFO"
    assert _rtt_check("p", w, [0.04] * 20, None).status == "INFO"
    # 1 % of 10 000 packets: 100 +- (3 x 9.95 + 1)
    assert round(loss_tolerance(10_000, 1.0), 2) == 30.85
    assert _loss_check("p", w, 100, 9900, "user-link").status == "PASS"
    assert _loss_check("p", w, 131, 9869, "user-link").status == "FAIL"
    assert _loss_check("p", w, 69, 9931, "user-link").status == "FAIL"
    assert _loss_check("p", w, 0, 10_000, "user-link").note.startswith("fewer losses")
    assert _loss_check("p", w, 1, 20, "user-link").status == "SKIP"
    assert _loss_check("p", w, 0, 10_000, "tc").status == "INFO"
    queue = Window("q", 0, 10, 10.0, None, loss_pct=1.0, rate_stage=True)
    assert _loss_check("p", queue, 200, 9800, "user-link").status == "WARN"


def test_the_emulator_is_read_from_the_run_or_the_profile(tmp_path: Path) -> None:
    from simstream.testbed.verify import emulator_of

    assert emulator_of(tmp_path, _profile(latency_ms=5)) is None  # type: ignore[arg-type]
    assert emulator_of(tmp_path, _profile(emulator="tc")) == "tc"  # type: ignore[arg-type]
    (tmp_path / "shaping.json").write_text(json.dumps({"emulator": "user-link"}))
    assert emulator_of(tmp_path, _profile(emulator="tc")) == "user-link"  # type: ignore[arg-type]


@pytest.mark.netns
@pytest.mark.integration
def test_verify_judges_round_trip_and_loss_of_an_emulated_link(offer: KernelOffer,
                                                               tmp_path: Path) -> None:
    from simstream.runner.kernel import start_capture
    from simstream.testbed.verify import verify_capture

    prof = _profile(latency_ms=20, jitter_ms=2, loss_pct=1, emulator="user-link")
    pcap, sent = tmp_path / "consumer.pcap", tmp_path / "producer.pcap"
    with Testbed.up("ulverify", prof, offer=offer) as tb:  # type: ignore[arg-type]
        caps: list[Any] = []
        try:
            for iface, out, ns in ((tb.consumer_iface, pcap, tb.consumer_ns),
                                   (tb.producer_iface, sent, tb.producer_ns)):
                start_capture(caps, tmp_path, iface, 5001, 30, netns=ns, name=out.name)
            _tcp_mbps(tb, 3.0)
        finally:
            for cap in caps:
                cap.interrupt(grace_s=20)
                cap.stop()  # reaped already: closes its log
        stats = tb.forwarder.stats() if tb.forwarder else {}
        # loss asked: one TCP segment per packet, so loss falls per segment
        assert (tb.link_mtu, tb.link_offload) == (1500, False), tb.link_devices
        assert tb.forwarder is not None and not tb.forwarder.offload
        assert any(a.startswith("TUN devices: MTU 1500, no offload (loss is asked for")
                   for a in tb.applied), tb.applied
    lost = stats["p2c"]["lost"]
    p2c = stats["p2c"]
    assert p2c["offered_bytes"] <= 1500 * p2c["offered"], p2c
    # at the consumer alone: round trips from TCP timestamps, losses from the holes
    # the retransmissions filled (a lost retransmission or tail packet leaves none)
    rep = verify_capture(pcap, prof, framing="none", emulator="user-link")  # type: ignore[arg-type]
    got = {c.name: c for c in rep.checks}
    assert got["rtt"].status == "PASS", got["rtt"]
    assert got["loss"].status == "PASS", got["loss"]
    assert lost - 3 <= rep.facts["lost_packets"] <= lost + 1, (rep.facts, stats)
    # both sides: every data packet followed across the link. The forwarder's count
    # also has the handshake and closing packets
    both = verify_capture(pcap, prof, framing="none", emulator="user-link",  # type: ignore[arg-type]
                          sender_pcap=sent)
    by = {c.name: c for c in both.checks}
    assert by["delay"].status == "PASS" and by["loss"].status == "PASS", by
    assert lost - 2 <= both.facts["paired_lost_packets"] <= lost, (both.facts, stats)
    # the same captures against a profile asking more than the link did
    more = _profile(latency_ms=40, jitter_ms=2, loss_pct=10, emulator="user-link")
    worse = {c.name: c for c in verify_capture(pcap, more, framing="none",  # type: ignore[arg-type]
                                               emulator="user-link", sender_pcap=sent).checks}
    assert [worse[k].status for k in ("rtt", "delay", "loss")] == ["FAIL"] * 3, worse
    _nothing_left("ulverify")


@pytest.mark.netns
def test_a_bad_trace_is_a_usage_error_before_anything_is_made(offer: KernelOffer,
                                                              tmp_path: Path) -> None:
    from click.testing import CliRunner

    from simstream.errors import UsageError
    from simstream.testbed import cli as tb_cli

    (tmp_path / "bad.csv").write_text("time_s,mbps\n0,ten\n")
    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: t\nnetwork: {{trace: {tmp_path / 'bad.csv'}}}\n")
    r = CliRunner().invoke(tb_cli.testbed, ["up", "--name", "badtrace", "--profile", str(prof),
                                            "--detach"])
    # UsageError: the command line's exit status 2
    assert isinstance(r.exception, UsageError) and "bad.csv line 2" in str(r.exception), r.output
    assert not leftovers("badtrace").namespaces


# --------------------------------------------------------------------------
# loss per TCP segment: the TUN devices the testbed picks


def _devices(prof: object, **asked: object) -> userlink.LinkDevices:
    tb = Testbed("segloss", prof)  # type: ignore[arg-type]  # nothing made before create()
    return userlink.link_devices(tb._link_phases(), large_mtu=65000, **asked)  # type: ignore[arg-type]


def test_loss_anywhere_in_the_timeline_gets_one_segment_packets() -> None:
    plain = _devices(_profile(latency_ms=20))
    assert (plain.mtu, plain.offload) == (65000, True) and "no loss" in plain.why
    for prof in (_profile(latency_ms=20, loss_pct=1),
                 _profile(loss_burst={"p_pct": 1, "r_pct": 30}),
                 # loss only in a later phase: the devices are set once, at bring-up
                 _profile([{"name": "a", "duration_s": 1},
                           {"name": "b", "network": {"loss_pct": 2}}], latency_ms=5)):
        d = _devices(prof)
        assert (d.mtu, d.offload) == (1500, False), d
        assert "per segment" in d.why
    # what the caller asks is kept, and the whole-packet loss said
    kept = _devices(_profile(loss_pct=1), mtu=65000, offload=True)
    assert (kept.mtu, kept.offload) == (65000, True) and "drops whole packets" in kept.why
    assert "drops whole" not in _devices(_profile(loss_pct=1), mtu=1500, offload=False).why


def _stream_losses(devices: userlink.LinkDevices, params: list[LinkParams],
                   segments: int, mss: int = 1448) -> tuple[int, int]:
    """(segments lost, loss events) of a bulk TCP stream of ``segments`` MSS-sized
    segments through a link whose parameters change evenly over ``params`` (phases).
    The stream is packetized as the devices hand it over: a 64 KB GSO packet of
    45 segments with offload, one segment per packet at MTU 1500 without."""
    from simstream.testbed.link import Link

    per_packet = 1 if not devices.offload and devices.mtu <= 1500 else 65536 // mss
    link = Link(params[0], random.Random(19))
    lost = events = 0
    packets = segments // per_packet
    for i in range(packets):
        phase = i * len(params) // packets
        link.set_params(i * 1e-4, params[phase])
        if link.offer(i * 1e-4, per_packet * (mss + 52)) == "loss":
            lost += per_packet
            events += 1
    return lost, events


@pytest.mark.parametrize("loss", [LinkParams(loss_pct=1), LinkParams(loss_pct=10),
                                  LinkParams(loss_burst=GilbertElliott(1, 30, 50))])
def test_at_loss_p_a_stream_loses_about_p_of_its_segments(loss: LinkParams) -> None:
    n = 40_000
    p = (loss.loss_burst.mean_loss_pct if loss.loss_burst else loss.loss_pct) / 100
    dev = userlink.link_devices([(loss, LinkParams())])
    lost, events = _stream_losses(dev, [loss], n)
    # binomial bound: 4 standard deviations (a burst model's losses are correlated:
    # mean burst 100 / r_pct = 3.3 packets, so its spread is wider by about its square root)
    spread = 4 * (n * p * (1 - p)) ** 0.5 * (2 if loss.loss_burst else 1)
    assert abs(lost - n * p) <= spread + 1, (lost, n * p, spread)
    assert events == lost  # every loss event is one segment
    # the devices without loss's choice (64 KB GSO packets, whole-packet loss): as
    # many segments lost, in bursts of 45, 45 times fewer loss events per byte
    gso = userlink.link_devices([(LinkParams(), LinkParams())])
    lost_gso, events_gso = _stream_losses(gso, [loss], n)
    assert lost_gso == 45 * events_gso and events_gso < lost / 10


def test_loss_changes_per_phase_on_the_fly() -> None:
    phases = [LinkParams(), LinkParams(loss_pct=5), LinkParams(loss_pct=1)]
    dev = userlink.link_devices([(p, LinkParams()) for p in phases])
    assert not dev.offload
    n = 30_000
    got = [_stream_losses(dev, [p], n // 3)[0] for p in phases]
    lost, _ = _stream_losses(dev, phases, n)
    assert got[0] == 0
    for seen, p in zip(got[1:], (0.05, 0.01), strict=True):
        k = n // 3
        assert abs(seen - k * p) <= 4 * (k * p * (1 - p)) ** 0.5 + 1, (seen, k * p)
    # one link through the three phases loses what the phases ask, not one rate
    k = n // 3
    want = k * 0.06
    assert abs(lost - want) <= 4 * (k * 0.0595) ** 0.5 + 1, (lost, want)


def test_shaping_json_says_what_the_tun_devices_got_and_why(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from simstream.runner.kernel import shaping_record

    dev = userlink.link_devices([(LinkParams(loss_pct=1), LinkParams())])
    tb = SimpleNamespace(plan=tc.Plan("ssb-prod", "user-link", [], [], []), emulator="user-link",
                         emulator_why="auto", producer_iface="ssb-prod", producer_ns="p",
                         consumer_ns="c", producer_addr="a", consumer_addr="b", offer=None,
                         applied=[], not_applied=[], phases=[], link_devices=dev,
                         forwarder=SimpleNamespace(offload=False, offload_error=""))
    rec = shaping_record(tb, "t", None, tmp_path / "emitter.yaml")
    assert rec["link_devices"]["mtu"] == 1500 and rec["link_devices"]["offload"] is False
    assert "loss is asked for" in rec["link_devices"]["why"]
    tb.emulator = "tc"
    assert shaping_record(tb, "t", None, tmp_path / "emitter.yaml")["link_devices"] is None
