"""The compose testbed for real: `simstream testbed docker up` runs the consumer and
two emitter containers (ranks 0 and 1) on a bridge network, each emitter shaping
its own eth0 with tbf, with a link cut on emitter-1; then the run directory, the
verdict, the qdisc read back from inside a container and the cleanup are checked.

Needs a Docker engine and the simstream image (`make image`; `make test` builds it
when it can); skipped, naming which, where either is missing. Every wait is
bounded.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simstream.errors import UsageError
from simstream.testbed.docker import Fault, engine_problem, parse_fault

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("SIMSTREAM_IMAGE", "simstream:latest")
CAP_MBPS = 400  # profiles/bandwidth-capped.yaml, per rank
CUT = (1.0, 2.0)  # emitter-1's link is cut 1 s after the start, for 2 s


def test_fault_specs() -> None:
    assert parse_fault("cut:emitter-1:3:2") == Fault("cut", "emitter-1", 3.0, 2.0)
    assert parse_fault("pause:consumer:0:0.5").kind == "pause"
    for bad in ("cut:emitter-1:3", "melt:emitter-1:1:1", "cut:db:1:1", "cut:emitter-0:x:1",
                "kill:emitter-0:1:0"):
        with pytest.raises(UsageError):
            parse_fault(bad)


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _labelled(project: str, service: str | None = None) -> list[str]:
    f = ["--filter", f"label=com.docker.compose.project={project}"]
    if service:
        f += ["--filter", f"label=com.docker.compose.service={service}"]
    return _docker("ps", "-q", *f).stdout.split()


@pytest.mark.slow
@pytest.mark.integration
def test_two_emitters_a_shaped_link_and_a_cut(tmp_path: Path) -> None:
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    if _docker("image", "inspect", IMAGE).returncode != 0:
        pytest.skip(f"no image {IMAGE}: `make image` builds it")
    name = f"ci{os.getpid()}"
    project = f"simstream-{name}"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simstream", "testbed", "docker", "up", "--name", name,
           "--profile", "bandwidth-capped", "--duration", "8", "--idle-timeout", "4",
           "--transport", "tcp", "--fault", f"cut:emitter-1:{CUT[0]:g}:{CUT[1]:g}",
           "--out", str(out), "--timeout", "240", "--image", IMAGE]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    qdisc = ""
    cut_qdiscs: list[tuple[float, str]] = []  # emitter-1's eth0 qdiscs: (time, tc output)
    try:
        # the tbf qdisc as the kernel inside emitter-0 has it while it sends, and
        # emitter-1's, read again and again across its cut
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            for service in ("emitter-0", "emitter-1") if "tbf" not in qdisc else ("emitter-1",):
                ids = _labelled(project, service)
                if not ids:
                    continue
                t = time.time()
                # emitter-1's link comes back from the cut as a new device (eth1)
                dev = ["dev", "eth0"] if service == "emitter-0" else []
                cp = _docker("exec", ids[0], "tc", "-s", "qdisc", "show", *dev, timeout=30)
                if service == "emitter-0":
                    qdisc = cp.stdout
                elif cp.returncode == 0:
                    cut_qdiscs.append((t, cp.stdout))
            time.sleep(0.3)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
            subprocess.run([sys.executable, "-m", "simstream", "testbed", "docker", "down",
                            "--name", name], cwd=ROOT, capture_output=True, timeout=180)
    assert proc.returncode == 0, f"{stdout}\n{stderr}"
    assert "tbf" in qdisc and "rate 400Mbit" in qdisc, qdisc

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_rank"]) == {"0", "1"}
    assert summary["received"] == summary["processed"] > 0
    assert summary["duplicated"] == 0 and summary["accounting_ok"]
    assert summary["per_rank"]["0"]["lost"] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "network", report["verdict"]
    # the diagnosis read both emitters' logs (merged), not the consumer's records alone
    sources = report["data_sources"]
    assert sources["emit_log"] and sorted(sources["emit_log_hosts"]) == [
        "emit-rank0.jsonl", "emit-rank1.jsonl"], sources

    steps = json.loads((out / "docker.json").read_text())["faults"]
    assert [(s["step"], s["error"]) for s in steps] == [("apply", None), ("undo", None)]
    t_cut, t_back, t_up = steps[0]["t_done"], steps[1]["t"], steps[1]["t_done"]

    # each emitter's own log, merged by the diagnosis; every message arrived at most
    # once, and only rank 1's messages in flight at the cut are missing
    logs = {r: [json.loads(x) for x in (out / f"emit-rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}
    assert (out / "emit.jsonl").is_file()
    with (out / "messages.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in (0, 1):
        assert {x["rank"] for x in logs[r]} == {r}
        got = [int(row["seq"]) for row in rows if row["rank"] == str(r)]
        assert len(got) == len(set(got)), f"rank {r}: a message counted twice"
        delivered = {x["seq"]: x for x in logs[r] if x["outcome"] == "delivered"}
        assert set(got) <= set(delivered), f"rank {r}: received what was never sent whole"
        missing = [delivered[q] for q in set(delivered) - set(got)]
        if r == 0:
            assert not missing, missing
        # handed to emitter-1's kernel just before or during the cut, gone with the link
        assert all(t_cut - 2.0 < x["t_last_byte"] < t_up for x in missing), missing
        # the consumer's losses (sequence gaps): messages the emitter lost part-way
        # through at the cut (its log says lost) or those just above
        gaps = set(range(max(got) + 1)) - set(got) if got else set()
        assert summary["per_rank"][str(r)]["lost"] == len(gaps)
        by_seq = {x["seq"]: x for x in logs[r]}
        for q in gaps:
            x = by_seq[q]
            assert x["outcome"] == "lost" or q in {m["seq"] for m in missing}, x
            assert x["t_first_byte"] is None or t_cut - 2.0 < x["t_first_byte"] < t_up, x

    # the cut was a real TCP disconnect and reconnect: emitter-1 found its peer silent
    # and connected again (a third connection at the consumer), the consumer found the
    # old connection dead; every connection ended
    rx = summary["receiver"]
    print(f"receiver: {rx['connections']} connections, {rx['disconnects']} disconnects, "
          f"{len(missing)} rank-1 messages lost at the cut; cut took {t_cut - steps[0]['t']:.1f} s,"
          f" reconnect {t_up - t_back:.1f} s")
    assert rx["connections"] >= 3 and rx["disconnects"] == rx["connections"], rx

    # rank 1 went silent across the cut, then resumed
    arrivals = sorted(float(row["t_arrival"]) for row in rows if row["rank"] == "1")
    during = [t for t in arrivals if t_cut + 0.5 < t < t_back]
    after = [t for t in arrivals if t > t_back]
    assert not during, f"{len(during)} rank-1 messages arrived while its link was cut"
    assert after, "rank 1 never resumed after the link came back"
    # and its new interface got the profile's tbf again (the old one went with the cut)
    back = [q for t, q in cut_qdiscs if t > t_up]
    assert any("tbf" in q and "rate 400Mbit" in q for q in back), (
        [(round(t - t_up, 1), "tbf" in q) for t, q in cut_qdiscs])

    # the shaped rate at the consumer, per rank, against the cap (stdout for the record)
    for r in ("0",):
        ts = sorted(float(row["t_arrival"]) for row in rows if row["rank"] == r)
        nbytes = sum(int(row["nbytes"]) for row in rows if row["rank"] == r)
        rate = nbytes * 8 / (ts[-1] - ts[0]) / 1e6
        print(f"rank {r}: {rate:.0f} Mbit/s at the consumer, cap {CAP_MBPS}")
        assert rate <= CAP_MBPS * 1.1

    # nothing of the project is left
    assert _labelled(project) == [] and not _docker("ps", "-aq", "--filter",
                                                    f"label=com.docker.compose.project={project}"
                                                    ).stdout.split()
    for kind in ("network", "volume"):
        left = _docker(kind, "ls", "-q", "--filter",
                       f"label=com.docker.compose.project={project}").stdout.split()
        assert left == [], (kind, left)
