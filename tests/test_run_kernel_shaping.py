"""``simstream run --kernel-shaping --capture``: consumer and emitter in a testbed's
namespaces, the link shaped by the kernel, the capture verified, and nothing
left behind after any kind of exit.

The end-to-end tests need root and ``ip netns`` (CI and this project's
machines have both); the pure helpers are tested everywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simstream.profile import parse_profile
from simstream.runner import kernel
from simstream.testbed.detect import run_cmd
from simstream.testbed.netns import leftovers, validate_name

PY = sys.executable

# 8 x 1x128x128 float32 = 512 KiB a batch: ~9.5 batches/s at 40 Mbit/s, ~4.8 at 20,
# far below what the consumer takes, so the link is the bottleneck.
PROFILE = """\
name: ks-tbf
seed: 4
source: {batch_size: 8, shape: [1, 128, 128], dtype: float32, content: constant,
         format: hdf5, total_events: null, pool: 4}
transport: {kind: zmq, role: client, url: tcp://127.0.0.1:12321, sndhwm: 5}
network: {bandwidth_mbps: 40, latency_ms: 5, emulator: tc}
timeline:
  repeat: false
  phases:
    - {name: fast, duration_s: 2.5, rate_hz: null}
    - {name: slow, duration_s: 2.5, rate_hz: null, network: {bandwidth_mbps: 20}}
stop: {duration_s: %(duration)s}
consumer:
  model: {kind: synthetic, compute_ms: 2}
  queue: {maxsize: 8}
  buffers: 2
"""


def _write_profile(tmp_path: Path, duration: float = 5) -> Path:
    p = tmp_path / "ks.yaml"
    p.write_text(PROFILE % {"duration": duration})
    return p


# --------------------------------------------------------------------------
# pure helpers


def test_testbed_name_is_valid_short_and_per_run() -> None:
    a = kernel.testbed_name("Hypotheses/Network-Bound profile with a long name", 4194303)
    b = kernel.testbed_name("Hypotheses/Network-Bound profile with a long name", 4194302)
    assert validate_name(a) == a and validate_name(b) == b
    assert len(a) <= 24 and a != b
    assert a == "hypotheses_netwo_4194303"
    assert kernel.testbed_name("???", 7) == "run_7"


def test_emitter_profile_has_no_network_but_keeps_the_timeline(tmp_path: Path) -> None:
    from simstream.profile import load_profile

    p = load_profile(_write_profile(tmp_path))
    e = kernel.emitter_profile(p)
    assert e.network.bandwidth_mbps is None and e.network.latency_ms == 0
    assert e.network.jitter_ms == 0
    assert [ph.network for ph in e.timeline.phases] == [None, None]
    assert [(ph.name, ph.duration_s, ph.rate_hz) for ph in e.timeline.phases] == \
        [(ph.name, ph.duration_s, ph.rate_hz) for ph in p.timeline.phases]
    assert (e.source, e.transport, e.stop, e.faults, e.seed) == \
        (p.source, p.transport, p.stop, p.faults, p.seed)
    # the original is untouched
    assert p.network.bandwidth_mbps == 40 and p.timeline.phases[1].network is not None


def test_listening_ports_from_proc_net_tcp() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 020010AC:3021 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000 0\n"
        "   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A"
        " 00000000:00000000 00:00000000 00000000 0\n"
    )
    # 0x3021 = 12321 listening; 0x1F90 = 8080 is an established connection, not a listener
    assert kernel.listening_ports(text) == {12321, 8081}


def test_user_space_shaping_lines() -> None:
    p = parse_profile({"name": "u", "network": {"bandwidth_mbps": 40, "latency_ms": 5},
                       "timeline": {"phases": [
                           {"name": "a", "duration_s": 1},
                           {"name": "b", "duration_s": 1, "network": {"bandwidth_mbps": 20,
                                                                      "jitter_ms": 2}}]}})
    assert kernel.user_space_shaping(p) == [
        "phase a: rate cap 40 Mbit/s (per rank), latency 5 ms (user space, in the emitter)",
        "phase b: rate cap 20 Mbit/s (per rank), latency 5 ms, jitter 2 ms (normal) "
        "(user space, in the emitter)",
    ]
    assert kernel.user_space_shaping(parse_profile({"name": "n"})) == []


def test_report_carries_shaping_and_verification_without_changing_the_verdict(
        tmp_path: Path) -> None:
    from simstream.diagnose import diagnose_run
    from simstream.diagnose.simulate import SCENARIOS, Scenario, write_run_dir

    base = SCENARIOS["bursty-network"]
    d = write_run_dir(Scenario(**{**base.__dict__, "duration_s": 1.0}), tmp_path / "run")
    plain = diagnose_run(d, plots=False, trace=False)
    assert "shaping" not in plain and "verify" not in plain
    assert "## Shaping" not in (d / "report.md").read_text()
    shaping = {"mode": "kernel", "layout": "tbf", "interface": "ssb-prod",
               "applied": ["rate cap 40 Mbit/s (tbf) on ssb-prod"],
               "not_applied": ["netem qdisc not available in this kernel: load sch_netem; "
                               "latency not applied"],
               "phase_changes": [{"phase": "slow", "at_s": 2.5, "late_s": 0.0002,
                                  "command_s": 0.004, "took_effect_s": 0.0268}]}
    verify = {"verdict": "PASS", "passed": True, "failed_checks": 0, "capture": "captured 9",
              "checks": [{"name": "rate", "where": "fast 0.00-2.50 s",
                          "measured": "40.12 Mbit/s", "expected": "<= 40 Mbit/s (+10%)",
                          "status": "PASS", "note": "at the cap"}]}
    (d / kernel.SHAPING_FILE).write_text(json.dumps(shaping))
    (d / kernel.VERIFY_FILE).write_text(json.dumps(verify))
    rep = diagnose_run(d, plots=False, trace=False)
    assert rep["verdict"] == plain["verdict"] and rep["confidence"] == plain["confidence"]
    assert rep["shaping"] == shaping and rep["verify"] == verify
    assert json.loads((d / "report.json").read_text())["shaping"] == shaping
    md = (d / "report.md").read_text()
    assert "Shaping: **kernel (tbf on ssb-prod)**" in md
    assert "- NOT applied: netem qdisc not available in this kernel" in md
    assert "| slow | 2.500 | 0.2 | 4.0 | 26.8 |" in md
    assert "Verification: **PASS** (1 checks, 0 failed); captured 9" in md
    assert "| rate | fast 0.00-2.50 s | 40.12 Mbit/s | <= 40 Mbit/s (+10%) | PASS | at the cap |" in md
    page = (d / "report.html").read_text()
    assert "<h2>Shaping: kernel</h2>" in page and "<h2>Capture verification: PASS</h2>" in page


# --------------------------------------------------------------------------
# the real thing


@pytest.fixture(scope="module")
def offer() -> object:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, tc, packet capture)")
    from simstream.testbed import detect

    o = detect.probe()
    if not o.netns_ok:
        pytest.skip(f"ip netns does not work here: {o.netns_detail}")
    if "tbf" not in o.kinds:
        pytest.skip("the tbf qdisc is not available in this kernel")
    return o


def _nothing_left(name: str, out: Path) -> None:
    """No namespace, host link or qdisc of the testbed, and no child of the run."""
    left = leftovers(name)
    assert not left.namespaces, left
    host_links = run_cmd(["ip", "-o", "link", "show"]).stdout
    assert "ssb-prod" not in host_links and "ssb-cons" not in host_links
    assert "ssb-" not in run_cmd(["tc", "qdisc", "show"]).stdout
    mine = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(out).encode() in cmdline:
            mine.append(cmdline.decode(errors="replace"))
    assert not mine, mine


@pytest.mark.netns
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_kernel_shaped_captured_run_end_to_end(offer: object, tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.monotonic()
    cp = subprocess.run([PY, "-m", "simstream", "run", "--profile", str(_write_profile(tmp_path)),
                         "--out", str(out), "--kernel-shaping", "--capture"],
                        capture_output=True, text=True, timeout=55)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert time.monotonic() - t0 < 55

    # every message accounted for
    s = json.loads((out / "summary.json").read_text())
    assert s["received"] == s["processed"] + s["quarantined"]
    assert s["received"] > 0 and s["quarantined"] == 0
    assert s["lost"] == 0 and s["duplicated"] == 0 and s["reordered"] == 0
    attempts = [json.loads(ln) for ln in (out / "emit.jsonl").read_text().splitlines()]
    assert sum(a["outcome"] == "delivered" for a in attempts) == s["received"]

    # the emitter shaped nothing itself
    emit_prof = (out / "emitter-profile.yaml").read_text()
    assert "bandwidth_mbps: null" in emit_prof and "latency_ms: 0" in emit_prof

    # honest shaping record
    sh = json.loads((out / "shaping.json").read_text())
    assert sh["mode"] == "kernel"
    assert any("rate cap 40 Mbit/s" in a for a in sh["applied"]), sh["applied"]
    if "netem" in offer.kinds:  # type: ignore[attr-defined]
        assert any("latency 5 ms" in a for a in sh["applied"]), sh
    else:
        assert sh["layout"] == "tbf"
        assert any("netem qdisc not available in this kernel" in n and "latency not applied" in n
                   for n in sh["not_applied"]), sh["not_applied"]
        assert "NOT applied: netem qdisc not available" in cp.stdout
    [change] = sh["phase_changes"]
    assert change["phase"] == "slow" and change["at_s"] == 2.5
    assert change["took_effect_s"] is not None and 0 < change["took_effect_s"] < 1.0
    assert abs(change["late_s"]) < 0.5, change
    assert any("rate cap 20 Mbit/s" in a for a in change["applied"])
    assert sh["timeline_anchor"] == min(a["t_sched"] for a in attempts)

    # the capture proves the shaping, phase by phase
    v = json.loads((out / "verify.json").read_text())
    assert v["passed"], v["checks"]
    rates = {c["where"].split()[0]: c for c in v["checks"] if c["name"] == "rate"}
    assert rates["fast"]["status"] == "PASS" and rates["slow"]["status"] == "PASS", rates
    assert "<= 40 Mbit/s" in rates["fast"]["expected"] and "<= 20 Mbit/s" in rates["slow"]["expected"]
    fast = float(rates["fast"]["measured"].split()[0])
    slow = float(rates["slow"]["measured"].split()[0])
    assert 36 <= fast <= 44 and 18 <= slow <= 22, (fast, slow)
    msgs = next(c for c in v["checks"] if c["name"] == "messages")
    assert msgs["status"] == "PASS" and msgs["measured"].startswith(f"{s['received']} messages")

    # the verdict, and the report carries both records
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "network", report["key_evidence"]
    assert report["shaping"]["mode"] == "kernel" and report["verify"]["passed"]
    md = (out / "report.md").read_text()
    assert "## Shaping" in md and "## Capture verification" in md
    assert "| rate | fast" in md
    # printed before the verdict: which shaping, what was not
    assert cp.stdout.index("shaping: kernel (tbf") < cp.stdout.index("verify: PASS") \
        < cp.stdout.index("verdict")
    _nothing_left(sh["testbed"], out)


@pytest.mark.netns
@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGTERM, 128 + signal.SIGTERM),
                                         (signal.SIGINT, 130)])
def test_run_killed_midway_leaves_nothing(offer: object, tmp_path: Path, sig: int,
                                          rc: int) -> None:
    out = tmp_path / "run"
    p = subprocess.Popen([PY, "-m", "simstream", "run", "--profile",
                          str(_write_profile(tmp_path, duration=40)), "--out", str(out),
                          "--kernel-shaping", "--capture"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = None
        deadline = time.monotonic() + 40
        # midway: the testbed is up and the emitter has logged messages
        while time.monotonic() < deadline and p.poll() is None:
            if name is None and (out / "shaping.json").exists():
                name = json.loads((out / "shaping.json").read_text()).get("testbed")
            log = out / "emit.jsonl"
            if name and log.exists() and log.read_text().count("\n") >= 3:
                break
            time.sleep(0.1)
        assert name is not None and p.poll() is None, p.communicate(timeout=10)
        assert leftovers(name).namespaces
        p.send_signal(sig)
        _, err = p.communicate(timeout=40)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
    assert p.returncode == rc, err
    assert "Traceback" not in err
    _nothing_left(name, out)


@pytest.mark.netns
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_failing_consumer_inside_the_testbed_leaves_nothing(offer: object,
                                                              tmp_path: Path) -> None:
    from simstream.runner.core import run_profile

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="consumer exited"):
        run_profile(_write_profile(tmp_path), out, kernel_shaping=True, diagnose=False,
                    consumer_args=["--no-such-flag"])
    name = json.loads((out / "shaping.json").read_text())["testbed"]
    _nothing_left(name, out)
