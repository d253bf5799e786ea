"""The real testbed: namespaces, veth, tbf shaping measured at the receiver, phase
changes, and cleanup under SIGKILL / SIGTERM. Needs root and ``ip netns``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from simstream.errors import UsageError
from simstream.profile import parse_profile
from simstream.testbed import cli as tb_cli
from simstream.testbed import detect, tc
from simstream.testbed.detect import KernelOffer, run_cmd
from simstream.testbed.netns import Testbed, leftovers

PY = sys.executable
CAP_MBPS = 50.0
SEND_S = 3.0


def _offer() -> KernelOffer:
    return detect.probe()


@pytest.fixture(scope="module")
def offer() -> KernelOffer:
    if os.geteuid() != 0 and not detect.has_cap_net_admin():
        pytest.skip("needs root or CAP_NET_ADMIN")
    o = _offer()
    if not o.netns_ok:
        pytest.skip(f"ip netns does not work here: {o.netns_detail}")
    if "tbf" not in o.kinds:
        pytest.skip("the tbf qdisc is not available in this kernel")
    return o


def _profile(**network: object) -> object:
    return parse_profile({"name": "t", "transport": {"kind": "tcp", "url": "tcp://10.213.0.2:5001"},
                          "network": network, "stop": {"duration_s": 3}})


def _send_and_receive(tb: Testbed, seconds: float, port: int = 5001,
                      change_at: tuple[float, tc.Shaping] | None = None) -> dict[str, object]:
    """Bulk TCP from the producer namespace to the consumer's, bounded by ``seconds``."""
    recv = subprocess.Popen(
        tb.argv_in("consumer", [PY, "-m", "simstream.testbed.traffic", "recv", "--bind",
                                f"{tb.consumer_addr}:{port}", "--duration", str(seconds + 3)]),
        stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        assert "listening" in recv.stdout.readline()
        send = subprocess.Popen(
            tb.argv_in("producer", [PY, "-m", "simstream.testbed.traffic", "send", "--to",
                                    f"{tb.consumer_addr}:{port}", "--duration", str(seconds)]),
            stdout=subprocess.PIPE, text=True)
        if change_at is not None:
            time.sleep(change_at[0])
            tb.set_phase(change_at[1])
        send.communicate(timeout=seconds + 20)
        out = json.loads(recv.communicate(timeout=seconds + 20)[0].strip().splitlines()[-1])
    finally:
        for p in (recv,):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
    return out  # type: ignore[no-any-return]


def _nothing_left(name: str | None = None) -> None:
    left = leftovers(name)
    assert not left.namespaces and not left.links, left
    links = run_cmd(["ip", "-o", "link", "show"]).stdout
    assert "ssb-" not in links


@pytest.mark.netns
@pytest.mark.integration
def test_tbf_rate_shaping_measured_at_receiver(offer: KernelOffer) -> None:
    with Testbed.up("ratecap", _profile(bandwidth_mbps=CAP_MBPS), offer=offer) as tb:
        assert tb.plan is not None and tb.plan.layout == "tbf"
        assert tb.applied == ["rate cap 50 Mbit/s (tbf) on ssb-prod (egress, namespace "
                              "ssb-ratecap-prod)"]
        assert tb.not_applied == []
        assert "tbf" in tb.qdisc_show()
        out = _send_and_receive(tb, SEND_S)
    rate = float(out["rate_mbps"])  # type: ignore[arg-type]
    # the receiver counts payload; tbf counts frames with their ~66 header bytes
    # per 1448 of payload (4.5 %), so payload arrives at about 0.955 x the cap
    assert CAP_MBPS * 0.88 <= rate <= CAP_MBPS * 1.02, rate
    _nothing_left("ratecap")


@pytest.mark.netns
@pytest.mark.integration
def test_phase_change_takes_effect_on_the_traffic(offer: KernelOffer) -> None:
    # 200 -> 20 Mbit/s shrinks the token bucket: packets queued under the old
    # bucket must still leave (a bucket smaller than a queued GSO packet stalls
    # tbf for good)
    slow = tc.Shaping(rate_mbps=20.0)
    with Testbed.up("phases", _profile(bandwidth_mbps=200.0), offer=offer) as tb:
        out = _send_and_receive(tb, SEND_S, change_at=(1.5, slow))
        change = tb.last_change
    assert change is not None
    assert change.commands[0][:3] == ["tc", "qdisc", "change"]
    assert change.confirmed_s is not None and 0 < change.confirmed_s < 1.0
    bins: list[int] = out["bins"]  # type: ignore[assignment]
    bin_s = float(out["bins_s"])  # type: ignore[arg-type]

    def mbps(t0: float, t1: float) -> float:
        part = bins[int(t0 / bin_s):int(t1 / bin_s)]
        return sum(part) * 8 / 1e6 / (len(part) * bin_s)

    assert len(bins) * bin_s > SEND_S - 0.3, "the link stalled after the change"
    assert mbps(0.3, 1.2) > 150
    # the receiver's bins are application reads: on a loaded machine a late read moves
    # bytes the bucket let through earlier into a later bin, and the bucket's burst adds
    # its size; 25 is still eight times below the old rate
    assert 15 < mbps(2.0, SEND_S - 0.2) < 25
    _nothing_left("phases")


@pytest.mark.netns
@pytest.mark.integration
def test_foreground_up_follows_the_timeline(offer: KernelOffer) -> None:
    # bursty: burst 2.0 s uncapped, stall 0.5 s at 10 Mbit/s, repeated
    cp = subprocess.run([PY, "-m", "simstream", "testbed", "up", "--name", "fg",
                         "--profile", "bursty", "--duration", "3.2"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    assert "layout: tbf" in lines
    changes = [ln for ln in lines if ln.startswith("phase ")]
    assert [ln.split(":")[0] for ln in changes] == ["phase stall at 2.000 s",
                                                     "phase burst at 2.500 s"]
    assert "rate cap 10 Mbit/s (tbf) (took effect in " in changes[0]
    took = [float(ln.rsplit("took effect in ", 1)[1].split()[0]) for ln in changes]
    assert all(0 < ms < 1000 for ms in took), took
    assert lines[-1] == "testbed down: namespaces, veth and qdiscs removed"
    _nothing_left("fg")


@pytest.mark.netns
@pytest.mark.integration
def test_foreground_timeline_anchored_to_the_emitters_first_message(offer: KernelOffer,
                                                                     tmp_path: Path) -> None:
    log = tmp_path / "emit.jsonl"
    log.write_text('{"t_sched": 1.0}\n')  # a previous run's record: must be ignored
    # a stand-in emitter whose schedule starts 0.7 s after it is launched
    child = ("import json, sys, time; from simstream import clock; t = clock.now() + 0.7;"
             "time.sleep(0.3); open(sys.argv[1], 'w').write(json.dumps({'t_sched': t}) + '\\n');"
             "time.sleep(3.2)")
    t_launch = time.monotonic()
    cp = subprocess.run([PY, "-m", "simstream", "testbed", "up", "--name", "sync",
                         "--profile", "bursty", "--sync-log", str(log), "--", PY, "-c", child,
                         str(log)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    anchored = [ln for ln in lines if ln.startswith("timeline anchored")]
    assert len(anchored) == 1, lines
    after = float(anchored[0].split("(")[1].split()[0])
    assert 0.5 < after < 1.5, anchored  # the child's t_sched, not the stale record's
    assert any(ln.startswith("phase stall at 2.000 s") for ln in lines), lines
    assert time.monotonic() - t_launch < 30
    _nothing_left("sync")


def _start_up(name: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [PY, "-m", "simstream", "testbed", "up", "--name", name,
         "--profile", "bandwidth-capped", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    lines = []
    for _ in range(20):
        line = p.stdout.readline()
        lines.append(line)
        if line.strip() == "up" or not line:
            break
    assert lines[-1].strip() == "up", lines
    assert any("rate cap 400 Mbit/s (tbf)" in ln for ln in lines), lines
    assert leftovers(name).namespaces == [f"ssb-{name}-prod", f"ssb-{name}-cons"] or \
        sorted(leftovers(name).namespaces) == sorted([f"ssb-{name}-prod", f"ssb-{name}-cons"])
    return p


@pytest.mark.netns
@pytest.mark.integration
@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGTERM, 128 + signal.SIGTERM),
                                         (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_midway_cleans_up_by_itself(offer: KernelOffer, sig: int,
                                                      rc: int) -> None:
    p = _start_up("term")
    p.send_signal(sig)
    _, err = p.communicate(timeout=20)
    assert p.returncode == rc, err
    _nothing_left("term")


@pytest.mark.netns
@pytest.mark.integration
def test_exception_inside_the_context_cleans_up(offer: KernelOffer) -> None:
    with pytest.raises(RuntimeError, match="boom"), Testbed.up("exc", None, offer=offer) as tb:
        assert leftovers("exc").namespaces
        assert tb.argv_in("producer", ["true"]) == ["ip", "netns", "exec", "ssb-exc-prod", "true"]
        raise RuntimeError("boom")
    _nothing_left("exc")


@pytest.mark.netns
@pytest.mark.integration
def test_sigkill_midway_then_down_all(offer: KernelOffer) -> None:
    p = _start_up("kill")
    p.kill()
    p.communicate(timeout=20)
    assert leftovers("kill").namespaces  # a SIGKILLed run cannot clean up
    result = CliRunner().invoke(tb_cli.testbed, ["down", "--all"])
    assert result.exit_code == 0, result.output
    assert "removed namespace ssb-kill-prod" in result.output
    _nothing_left()


@pytest.mark.netns
@pytest.mark.integration
def test_cli_detach_exec_status_down(offer: KernelOffer) -> None:
    runner = CliRunner()
    r = runner.invoke(tb_cli.testbed, ["up", "--name", "cli", "--profile", "bandwidth-capped",
                                "--detach"])
    try:
        assert r.exit_code == 0, r.output
        assert "applied: rate cap 400 Mbit/s (tbf)" in r.output
        ex = subprocess.run([PY, "-m", "simstream", "testbed", "exec", "--name", "cli",
                             "consumer", "--", "ip", "-o", "addr", "show", "dev", "ssb-cons"],
                            capture_output=True, text=True, timeout=20)
        assert ex.returncode == 0, ex.stderr
        assert "10.213.0.2/30" in ex.stdout
        st = runner.invoke(tb_cli.testbed, ["status"])
        assert "testbed cli: producer 10.213.0.1" in st.output
        assert "tbf" in st.output
    finally:
        d = runner.invoke(tb_cli.testbed, ["down", "cli"])
    assert d.exit_code == 0 and "removed namespace ssb-cli-prod" in d.output
    _nothing_left("cli")
    gone = runner.invoke(tb_cli.testbed, ["exec", "--name", "cli", "producer", "--", "true"])
    assert isinstance(gone.exception, UsageError)


@pytest.mark.netns
@pytest.mark.integration
def test_named_interface_only_and_restored(offer: KernelOffer) -> None:
    # the "explicit interface" mode is run inside a namespace of ours, on our veth
    with Testbed.up("iface", None, offer=offer) as tb:
        assert tb.plan is not None and tb.plan.layout == "none"
        cp = subprocess.run(
            tb.argv_in("producer", [PY, "-m", "simstream", "testbed", "up",
                                    "--name", "x", "--i-know-iface", "ssb-prod", "--profile",
                                    "bandwidth-capped", "--duration", "0.5"]),
            capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr
        assert "shaping ssb-prod (named by the user)" in cp.stdout
        assert "rate cap 400 Mbit/s (tbf) on ssb-prod (egress, named by the user)" in cp.stdout
        assert "root qdisc removed from ssb-prod" in cp.stdout
        assert "tbf" not in tb.qdisc_show()
        # a command after -- runs under the shaping; its exit ends the run, its status is ours
        cp = subprocess.run(
            tb.argv_in("producer", [PY, "-m", "simstream", "testbed", "up",
                                    "--name", "x", "--i-know-iface", "ssb-prod", "--profile",
                                    "bandwidth-capped", "--", "sh", "-c",
                                    "tc qdisc show dev ssb-prod; exit 3"]),
            capture_output=True, text=True, timeout=30)
        assert cp.returncode == 3, cp.stderr
        assert "qdisc tbf 1: root" in cp.stdout and "rate 400Mbit" in cp.stdout
        assert "tbf" not in tb.qdisc_show()
    _nothing_left("iface")


@pytest.mark.netns
@pytest.mark.integration
def test_kernel_without_netem_says_so(offer: KernelOffer) -> None:
    if "netem" in offer.kinds:
        pytest.skip("this kernel has netem; the no-netem path is covered by the tc unit tests")
    # explicitly tc: left to auto, the user-space link emulator takes over (test_testbed_userlink)
    prof = _profile(latency_ms=20, jitter_ms=10, bandwidth_mbps=100, emulator="tc")
    with Testbed.up("nonetem", prof, offer=offer) as tb:
        assert tb.plan is not None and tb.plan.layout == "tbf"
        assert tb.not_applied == ["netem qdisc not available in this kernel: load sch_netem; "
                                  "jitter and latency not applied"]
        assert "tbf" in tb.qdisc_show()
    _nothing_left("nonetem")


@pytest.mark.netns
@pytest.mark.integration
def test_netem_delay_applied(offer: KernelOffer) -> None:
    if "netem" not in offer.kinds:
        pytest.skip("netem qdisc not available in this kernel (Specified qdisc kind is unknown)")
    prof = _profile(latency_ms=20, bandwidth_mbps=100)
    with Testbed.up("netem", prof, offer=offer) as tb:
        assert tb.plan is not None and tb.plan.layout == "htb+netem"
        assert "netem" in tb.qdisc_show()
        ping = subprocess.run(tb.argv_in("producer", ["ping", "-c", "3", "-i", "0.2",
                                                      tb.consumer_addr]),
                              capture_output=True, text=True, timeout=20)
        assert "time=2" in ping.stdout, ping.stdout
    _nothing_left("netem")


def test_without_privileges_exit_2_and_suggest_user_space(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    fake = KernelOffer(root=False, cap_net_admin=False, tools={"ip": "/x", "tc": "/x"},
                       netns_ok=False, netns_detail="needs root or CAP_NET_ADMIN")
    monkeypatch.setattr("simstream.testbed.netns.probe", lambda: fake)
    r = CliRunner().invoke(tb_cli.testbed, ["up", "--name", "np", "--profile", "bandwidth-capped",
                                     "--detach"])
    assert isinstance(r.exception, UsageError)
    assert "root or CAP_NET_ADMIN" in str(r.exception)
    assert "user-space shaping" in str(r.exception)
    # and through the module's entry point: one line, exit status 2, no traceback
    env = dict(os.environ)
    cp = subprocess.run(
        [PY, "-c", "import simstream.testbed.netns as n, simstream.testbed.detect as d;"
         "d.probe = lambda *a: d.KernelOffer(False, False, {'ip': 'x', 'tc': 'x'}, False, '');"
         "n.probe = d.probe;"
         "from simstream.cli import main; main(['testbed', 'up', '--detach'])"],
        capture_output=True, text=True, env=env, timeout=30)
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.startswith("error: kernel shaping needs root or CAP_NET_ADMIN")
    assert "Traceback" not in cp.stderr


def test_bad_name_is_a_usage_error() -> None:
    r = CliRunner().invoke(tb_cli.testbed, ["up", "--name", "Bad Name!", "--detach"])
    assert isinstance(r.exception, UsageError)
    assert "testbed name 'Bad Name!' is invalid" in str(r.exception)


NETEM_VARIANTS = [
    tc.Netem(delay_ms=20, jitter_ms=10, delay_correlation_pct=25, distribution="normal"),
    tc.Netem(delay_ms=20, jitter_ms=10, distribution="pareto"),
    tc.Netem(delay_ms=20, jitter_ms=10, distribution="paretonormal"),
    tc.Netem(delay_ms=1.5, jitter_ms=0.5),
    tc.Netem(loss_pct=1.5, loss_correlation_pct=30),
    tc.Netem(duplicate_pct=2, duplicate_correlation_pct=5),
    tc.Netem(delay_ms=10, reorder_pct=25, reorder_correlation_pct=50, reorder_gap=5),
    tc.Netem(corrupt_pct=0.1, corrupt_correlation_pct=10),
    tc.Netem(rate_mbps=12.5, limit_packets=5000),
]


@pytest.mark.netns
@pytest.mark.integration
@pytest.mark.parametrize("layout_kinds", [{"netem", "tbf", "htb"}, {"netem", "tbf"}, {"netem"}])
def test_every_command_line_is_accepted_by_this_tc(offer: KernelOffer,
                                                   layout_kinds: set[str]) -> None:
    """iproute2 parses every option before the kernel sees it: each command either
    works or is refused by the kernel for want of netem, never by tc's parser
    (a missing distribution table, a misspelt option)."""
    ns = "ssb-syntax-prod"
    run_cmd(["ip", "netns", "add", ns])
    try:
        run_cmd(["ip", "-n", ns, "link", "add", "ssb-prod", "type", "veth", "peer", "name",
                 "ssb-x"], check=True)
        for n in NETEM_VARIANTS:
            phases = [tc.Shaping(rate_mbps=100, netem=n), tc.Shaping(rate_mbps=10, netem=n)]
            p = tc.plan("ssb-prod", phases, layout_kinds)
            cmds = p.commands + tc.change_commands("ssb-prod", phases[1], p.layout)
            for cmd in cmds:
                cp = run_cmd(["ip", "netns", "exec", ns, *cmd])
                err = cp.stderr.strip()
                if "netem" in offer.kinds or "netem" not in cmd:
                    assert cp.returncode == 0, (cmd, err)
                else:
                    # refused by the kernel (no netem to add, hence none to change),
                    # after tc had parsed every option
                    assert err.startswith(("Error: Specified qdisc kind is unknown",
                                           "Error: Qdisc not found")), (cmd, err)
            run_cmd(["ip", "netns", "exec", ns, *tc.teardown_commands("ssb-prod")[0]])
    finally:
        run_cmd(["ip", "netns", "del", ns])
    _nothing_left("syntax")


@pytest.mark.netns
@pytest.mark.integration
def test_unprobed_kernel_is_found_out_by_trying(offer: KernelOffer) -> None:
    # as in a container with NET_ADMIN only: no namespace to probe kinds in
    blind = KernelOffer(root=offer.root, cap_net_admin=offer.cap_net_admin, tools=offer.tools,
                        netns_ok=True, netns_detail="", qdiscs={})
    prof = _profile(latency_ms=20, bandwidth_mbps=100)
    with Testbed.up("blind", prof, offer=blind) as tb:
        assert tb.plan is not None
        shown = tb.qdisc_show()
        if "netem" in offer.kinds:
            assert tb.plan.layout == "htb+netem" and "netem" in shown
            assert tb.not_applied == []
        else:
            assert tb.plan.layout == "tbf" and "tbf" in shown and "htb" not in shown
            assert tb.not_applied == ["netem qdisc not available in this kernel: load sch_netem; "
                                      "latency not applied"]
        assert tb.applied[0].startswith("rate cap 100 Mbit/s")
    _nothing_left("blind")
