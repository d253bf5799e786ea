"""The user-space link emulator in a testbed: choosing it, mapping the profile onto it,
and (root, netns, TUN) the round trips and TCP window limit that plain sockets see
through it, phase changes, and nothing left after the owner is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
        return json.loads(cp.stdout)  # type: ignore[no-any-return]
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
    assert min(probe["rtts_ms"]) >= 28.0, probe  # type: ignore[type-var]
    assert probe["lost"] == 0
    # unshaped, this stream moves ~2000 Mbit/s. The window is bounded by the
    # buffers: the kernel doubles SO_RCVBUF and advertises about half to 3/4 of it
    rtt_s = median / 1000
    window_over_rtt = SOCKBUF * 8 / rtt_s / 1e6  # Mbit/s
    assert 0.5 * window_over_rtt <= mbps <= 2.0 * window_over_rtt * 1.1, (mbps, window_over_rtt)
    assert 0 < took < 2.0
    assert 9.5 <= float(fast["median_ms"]) <= 25.0, fast  # type: ignore[arg-type]
    p2c = stats["p2c"]  # type: ignore[index]
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


def test_verify_reads_round_trips_from_tcp_timestamps(tmp_path: Path) -> None:
    import struct

    from simstream.testbed.verify import receiver_rtts, tcp_flows

    prod, cons = ("10.213.0.1", 40000), ("10.213.0.2", 12321)
    pkts = []
    # the consumer ACKs with TSval k at t = k * 0.1; the producer's next segment echoes it
    # 40 ms later (the round trip), except the third, which the sender held 60 ms more
    for k in range(1, 6):
        t = k * 0.1
        pkts.append((t, _ts_frame(cons, prod, 1, b"", tsval=k, tsecr=0)))
        extra = 0.06 if k == 3 else 0.0
        pkts.append((t + 0.04 + extra, _ts_frame(prod, cons, 1 + k * 100, b"x" * 100,
                                                 tsval=1000 + k, tsecr=k)))
    path = tmp_path / "ts.pcap"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        for ts, data in pkts:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, round((ts - sec) * 1e9), len(data), len(data)))
            f.write(data)
    data, acks = sorted(tcp_flows(path, 12321), key=lambda f: -f.payload_bytes)
    got = receiver_rtts(data, acks)
    assert [round(r, 6) for _, r in got] == [0.04, 0.04, 0.1, 0.04, 0.04]


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
