"""The compose testbed for real: `simstream testbed docker up` runs the consumer and
two emitter containers (ranks 0 and 1) on a bridge network, each emitter shaping
its own eth0 with tbf, with the three container faults in one bring-up: a link cut
on emitter-1, then emitter-0 paused, then emitter-1 killed and started again; then
the run directory, the accounting per (rank, epoch), the verdict, the qdisc read
back from inside a container and the cleanup are checked.

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
# (AT, FOR) seconds after both emitters' first message
CUT = (1.0, 2.0)  # emitter-1's link is cut
PAUSE = (3.0, 2.0)  # emitter-0's container is frozen (docker pause / unpause)
KILL = (6.0, 1.0)  # emitter-1's container is killed and started again (a new epoch)


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
           "--profile", "bandwidth-capped", "--duration", "8", "--idle-timeout", "6",
           "--transport", "tcp", "--fault", f"cut:emitter-1:{CUT[0]:g}:{CUT[1]:g}",
           "--fault", f"pause:emitter-0:{PAUSE[0]:g}:{PAUSE[1]:g}",
           "--fault", f"kill:emitter-1:{KILL[0]:g}:{KILL[1]:g}",
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
    # emitter-1's restart is a new epoch: its sequence numbers from 0 again are a new
    # stream, not duplicates
    assert summary["duplicated"] == 0 and summary["accounting_ok"]
    assert summary["per_rank"]["0"]["lost"] == 0
    assert len(summary["per_rank"]["0"]["epochs"]) == 1
    epochs = [e["epoch"] for e in summary["per_rank"]["1"]["epochs"]]
    assert len(epochs) == 2 and epochs[0] < epochs[1], summary["per_rank"]["1"]
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "network", report["verdict"]
    # the diagnosis read both emitters' logs (merged), not the consumer's records alone
    sources = report["data_sources"]
    assert sources["emit_log"] and sorted(sources["emit_log_hosts"]) == [
        "emit-rank0.jsonl", "emit-rank1.jsonl"], sources

    steps = json.loads((out / "docker.json").read_text())["faults"]
    assert all(s["error"] is None for s in steps), steps
    at = {(s["kind"], s["step"]): s for s in steps}
    assert set(at) == {(k, w) for k in ("cut", "pause", "kill") for w in ("apply", "undo")}
    t_cut, t_back, t_up = (at["cut", "apply"]["t_done"], at["cut", "undo"]["t"],
                           at["cut", "undo"]["t_done"])
    t_kill = at["kill", "apply"]["t_done"]
    t_pause, t_thaw = at["pause", "apply"]["t_done"], at["pause", "undo"]["t"]

    # each emitter's own log, merged by the diagnosis; emitter-1's holds both lives
    # (--append-log), each under its epoch. Every message arrived at most once, and
    # only rank 1's messages in flight at the cut or at the kill are missing
    logs = {r: [json.loads(x) for x in (out / f"emit-rank{r}.jsonl").read_text().splitlines()
                if x.startswith("{") and x.endswith("}")] for r in (0, 1)}
    assert (out / "emit.jsonl").is_file()
    assert {x["epoch"] for x in logs[1]} == set(epochs), "emitter-1's log lost a life"
    with (out / "messages.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in (0, 1):
        assert {x["rank"] for x in logs[r]} == {r}
        for e in {x["epoch"] for x in logs[r]}:
            log = [x for x in logs[r] if x["epoch"] == e]
            got = [int(row["seq"]) for row in rows
                   if row["rank"] == str(r) and row["epoch"] == str(e)]
            assert len(got) == len(set(got)), f"rank {r} epoch {e}: a message counted twice"
            delivered = {x["seq"]: x for x in log if x["outcome"] == "delivered"}
            assert set(got) <= set(delivered), f"rank {r}: received what was never sent whole"
            missing = [delivered[q] for q in set(delivered) - set(got)]
            old_life = r == 1 and e == epochs[0]
            if r == 0 or not old_life:
                assert not missing, (r, e, missing)
            # handed to emitter-1's kernel just before or during the cut, gone with the
            # link; or the old life's last ones, gone with the killed container
            assert all(t_cut - 2.0 < x["t_last_byte"] < t_up
                       or t_kill - 2.0 < x["t_last_byte"] < t_kill for x in missing), missing
            # the consumer's losses (sequence gaps below the stream's highest): at the
            # cut, messages the emitter lost part-way through (its log says lost) or
            # those just above
            gaps = set(range(max(got) + 1)) - set(got) if got else set()
            stream = next(x for x in summary["per_rank"][str(r)]["epochs"] if x["epoch"] == e)
            assert stream["lost"] == len(gaps) and stream["max_seq"] == max(got)
            by_seq = {x["seq"]: x for x in log}
            for q in gaps:
                x = by_seq[q]
                assert x["outcome"] == "lost" or q in {m["seq"] for m in missing}, x
                assert x["t_first_byte"] is None or t_cut - 2.0 < x["t_first_byte"] < t_up, x
            if old_life:
                # the old life's tail (logged, above its highest arrival): reported as
                # lost at the tail by the diagnosis, in its own epoch
                tail = sorted(q for q in by_seq if q > max(got))
                reported = sorted(m["seq"] for m in report["lost_at_tail"]["messages"]
                                  if m["rank"] == 1 and m["epoch"] == e)
                assert reported == tail, (reported, tail)
                print(f"rank 1, killed life: {len(got)} received, {len(gaps)} lost in gaps, "
                      f"{len(tail)} logged and lost at the kill")

    # the cut was a real TCP disconnect and reconnect: emitter-1 found its peer silent
    # and connected again, the consumer found the old connection dead; the kill ended
    # the restarted container's connection and its new life opened another: four in
    # all (emitter-0's, emitter-1's three); every connection ended
    rx = summary["receiver"]
    print(f"receiver: {rx['connections']} connections, {rx['disconnects']} disconnects; cut took "
          f"{t_cut - at['cut', 'apply']['t']:.1f} s, reconnect {t_up - t_back:.1f} s")
    assert rx["connections"] >= 4 and rx["disconnects"] == rx["connections"], rx

    # rank 1 went silent across the cut, then resumed (in its first life)
    arr1 = [(float(row["t_arrival"]), row["epoch"]) for row in rows if row["rank"] == "1"]
    during = [t for t, _ in arr1 if t_cut + 0.5 < t < t_back]
    after = [t for t, e in arr1 if t_back < t < t_kill and e == str(epochs[0])]
    assert not during, f"{len(during)} rank-1 messages arrived while its link was cut"
    assert after, "rank 1 never resumed after the link came back"
    # and its new interface got the profile's tbf again (the old one went with the cut)
    back = [q for t, q in cut_qdiscs if t_up < t < t_kill]
    assert any("tbf" in q and "rate 400Mbit" in q for q in back), (
        [(round(t - t_up, 1), "tbf" in q) for t, q in cut_qdiscs])
    # the killed host's new life sent after the restart
    assert any(e == str(epochs[1]) and t > at["kill", "undo"]["t"] for t, e in arr1)

    # the paused host: rank 0 went silent while frozen (bytes already in its socket
    # buffer may still land just after the freeze), resumed after, lost nothing
    arr0 = sorted(float(row["t_arrival"]) for row in rows if row["rank"] == "0")
    frozen = [t for t in arr0 if t_pause + 0.7 < t < t_thaw]
    assert not frozen, f"{len(frozen)} rank-0 messages arrived while its host was paused"
    assert any(t > t_thaw for t in arr0), "rank 0 never resumed after the pause"

    # the shaped rate at the consumer, rank 0, against the cap (stdout for the record):
    # before the pause, and over its whole stream less the paused time
    sized = sorted((float(row["t_arrival"]), int(row["nbytes"])) for row in rows
                   if row["rank"] == "0")
    before = [(t, n) for t, n in sized if t < t_pause]
    if len(before) > 2:  # bytes after the first arrival over the time they took
        rate = sum(n for _, n in before[1:]) * 8 / (before[-1][0] - before[0][0]) / 1e6
        print(f"rank 0: {rate:.0f} Mbit/s at the consumer before the pause, cap {CAP_MBPS}")
        assert rate <= CAP_MBPS * 1.1
    span = sized[-1][0] - sized[0][0] - (t_thaw - t_pause)
    rate = sum(n for _, n in sized[1:]) * 8 / span / 1e6
    print(f"rank 0: {rate:.0f} Mbit/s at the consumer over its stream less the pause, "
          f"cap {CAP_MBPS}")
    assert rate <= CAP_MBPS * 1.1

    # nothing of the project is left
    assert _labelled(project) == [] and not _docker("ps", "-aq", "--filter",
                                                    f"label=com.docker.compose.project={project}"
                                                    ).stdout.split()
    for kind in ("network", "volume"):
        left = _docker(kind, "ls", "-q", "--filter",
                       f"label=com.docker.compose.project={project}").stdout.split()
        assert left == [], (kind, left)
