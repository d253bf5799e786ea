"""The compose testbed for real: `simstream testbed docker up` runs the consumer and
two emitter containers (ranks 0 and 1) on a bridge network, each emitter shaping
its own eth0 with tbf, with the three container faults in one bring-up: a link cut
on emitter-1 (scripted in the profile: link_cut); emitter-0 paused, then killed and started again (a new epoch); then
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
import yaml

from simstream.errors import UsageError
from simstream.testbed.docker import DockerError, Fault, _FaultRunner, engine_problem, parse_fault

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("SIMSTREAM_IMAGE", "simstream:latest")
CAP_MBPS = 400  # profiles/bandwidth-capped.yaml, per rank
# (AT, FOR) seconds after both emitters' first message
# (each fault on its own thread: a slow docker call delays only its own fault)
CUT = (1.0, 2.0)  # emitter-1's link is cut
PAUSE = (0.5, 1.0)  # emitter-0's container is frozen (docker pause / unpause)
KILL = (3.0, 1.0)  # emitter-0's container is killed and started again (a new epoch)
# each emitter sends this long; long enough that emitter-0 is still sending when the
# kill lands although its first message may come seconds before the fault clock's
# zero (both emitters' first message) and docker calls take seconds on a loaded host
DURATION_S = 12
# how long the consumer waits for the next message before it ends the run: longer than
# a killed emitter's restart takes on a loaded 2-core machine (7.7 s seen at a load
# average of 15, more at 40), or the restarted emitter finds no consumer
IDLE_S = 20


def test_fault_specs() -> None:
    assert parse_fault("cut:emitter-1:3:2") == Fault("cut", "emitter-1", 3.0, 2.0)
    assert parse_fault("pause:consumer:0:0.5").kind == "pause"
    for bad in ("cut:emitter-1:3", "melt:emitter-1:1:1", "cut:db:1:1", "cut:emitter-0:x:1",
                "kill:emitter-0:1:0"):
        with pytest.raises(UsageError):
            parse_fault(bad)


class _SlowStack:
    """A stack whose cut takes 1 s to apply and whose kill fails (the container had
    already exited); records when each call started."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def apply(self, fault: Fault) -> None:
        self.calls.append(("apply", fault.kind, time.time()))
        if fault.kind == "cut":
            time.sleep(1.0)
        if fault.kind == "kill":
            raise DockerError("docker kill: container is not running")

    def undo(self, fault: Fault) -> None:
        self.calls.append(("undo", fault.kind, time.time()))


def test_faults_keep_their_own_times_and_a_failed_apply_is_not_undone() -> None:
    stack = _SlowStack()
    faults = [Fault("cut", "emitter-1", 0.0, 0.2), Fault("pause", "emitter-0", 0.1, 0.1),
              Fault("kill", "emitter-1", 0.1, 0.1)]
    t0 = time.time()
    runner = _FaultRunner(stack, faults, t0)  # type: ignore[arg-type]
    assert runner.pending("emitter-1", "kill")
    runner.start()
    deadline = time.monotonic() + 30
    while runner.pending("emitter-1", "cut") and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.stop()
    started = {(w, k): t - t0 for w, k, t in stack.calls}
    # the pause went at its time, not after the cut's slow apply; the cut lasted its
    # 0.2 s from when its apply returned; the kill of the same container as the cut
    # waited for the cut to be undone, and failed
    assert started["apply", "pause"] < started["apply", "cut"] + 1.0
    assert started["apply", "cut"] + 1.0 + 0.2 <= started["undo", "cut"]
    assert started["undo", "cut"] <= started["apply", "kill"]
    assert ("undo", "kill") not in started and not runner.pending("emitter-1", "kill")
    assert [(r["step"], r["kind"], r["error"] is None) for r in runner.records
            if r["kind"] == "kill"] == [("apply", "kill", False)]
    assert runner.active == [] and [r["t"] for r in runner.records] == sorted(
        r["t"] for r in runner.records)


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
    # the cut is scripted in the profile (a file of this host, mounted into the
    # containers), the pause and the kill come from --fault: one schedule
    profile = yaml.safe_load((ROOT / "profiles" / "bandwidth-capped.yaml").read_text())
    profile["faults"] = [{"kind": "link_cut", "replica": 1, "at_s": CUT[0],
                          "duration_s": CUT[1]}]
    profile_file = tmp_path / "bandwidth-capped-cut.yaml"
    profile_file.write_text(yaml.safe_dump(profile))
    cmd = [sys.executable, "-m", "simstream", "testbed", "docker", "up", "--name", name,
           "--profile", str(profile_file), "--duration", str(DURATION_S), "--idle-timeout", str(IDLE_S),
           "--transport", "tcp",
           "--fault", f"pause:emitter-0:{PAUSE[0]:g}:{PAUSE[1]:g}",
           "--fault", f"kill:emitter-0:{KILL[0]:g}:{KILL[1]:g}",
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
    assert f"fault from the profile: cut emitter-1 at +{CUT[0]:g} s for {CUT[1]:g} s" in stdout
    assert "tbf" in qdisc and "rate 400Mbit" in qdisc, qdisc

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_rank"]) == {"0", "1"}
    assert summary["received"] == summary["processed"] > 0
    # emitter-0's restart is a new epoch: its sequence numbers from 0 again are a new
    # stream, not duplicates
    assert summary["duplicated"] == 0 and summary["accounting_ok"]
    epochs = [e["epoch"] for e in summary["per_rank"]["0"]["epochs"]]
    assert len(epochs) == 2 and epochs[0] < epochs[1], summary["per_rank"]["0"]
    assert len(summary["per_rank"]["1"]["epochs"]) == 1
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
    t_pause, t_thaw = at["pause", "apply"]["t_done"], at["pause", "undo"]["t"]
    t_kill, t_start = at["kill", "apply"]["t_done"], at["kill", "undo"]["t"]

    # each emitter's own log, merged by the diagnosis; emitter-0's holds both lives
    # (--append-log), each under its epoch. Every message arrived at most once; only
    # rank 1's messages in flight at the cut and the old life's at the kill are missing
    logs = {r: [json.loads(x) for x in (out / f"emit-rank{r}.jsonl").read_text().splitlines()
                if x.startswith("{") and x.endswith("}")] for r in (0, 1)}
    assert (out / "emit.jsonl").is_file()
    assert {x["epoch"] for x in logs[0]} == set(epochs), "emitter-0's log lost a life"
    with (out / "messages.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in (0, 1):
        assert {x["rank"] for x in logs[r]} == {r}
        for e in {x["epoch"] for x in logs[r]}:
            log = [x for x in logs[r] if x["epoch"] == e]
            got = [int(row["seq"]) for row in rows
                   if row["rank"] == str(r) and row["epoch"] == str(e)]
            assert len(got) == len(set(got)), f"rank {r} epoch {e}: a message counted twice"
            killed = r == 0 and e == epochs[0]
            # when it may have gone missing: at rank 1's cut, or at the kill
            window = (t_kill - 2.0, t_kill) if killed else (t_cut - 2.0, t_up)
            delivered = {x["seq"]: x for x in log if x["outcome"] == "delivered"}
            unlogged = set(got) - set(delivered)
            if killed:
                # records not yet flushed at the SIGKILL died with the process: only
                # messages above the last logged one may have arrived unlogged
                assert all(q > max(x["seq"] for x in log) for q in unlogged), unlogged
            else:
                assert not unlogged, f"rank {r}: received what was never sent whole"
            missing = [delivered[q] for q in set(delivered) - set(got)]
            if r == 0 and not killed:
                assert not missing, (r, e, missing)
            assert all(window[0] < x["t_last_byte"] < window[1] for x in missing), missing
            # the consumer's losses (sequence gaps below the stream's highest): messages
            # the emitter lost part-way through (its log says lost), those just above,
            # or (at the kill) ones whose record died unflushed
            gaps = set(range(max(got) + 1)) - set(got) if got else set()
            stream = next(x for x in summary["per_rank"][str(r)]["epochs"] if x["epoch"] == e)
            assert stream["lost"] == len(gaps) and stream["max_seq"] == max(got)
            by_seq = {x["seq"]: x for x in log}
            for q in gaps:
                x = by_seq.get(q)
                if x is None:
                    assert killed and q > max(by_seq), q
                    continue
                assert x["outcome"] == "lost" or q in {m["seq"] for m in missing}, x
                assert x["t_first_byte"] is None or window[0] < x["t_first_byte"] < window[1], x
            if killed:
                # the old life's tail (logged, above its highest arrival): reported as
                # lost at the tail by the diagnosis, in its own epoch
                tail = sorted(q for q in by_seq if q > max(got))
                reported = sorted(m["seq"] for m in report["lost_at_tail"]["messages"]
                                  if m["rank"] == 0 and m["epoch"] == e)
                assert reported == tail, (reported, tail)
                print(f"rank 0, killed life: {len(got)} received ({len(unlogged)} after its "
                      f"last flushed record), {len(gaps)} lost in gaps, {len(tail)} logged "
                      "and lost at the kill")

    # the cut was a real TCP disconnect and reconnect: emitter-1 found its peer silent
    # and connected again, the consumer found the old connection dead; the kill ended
    # emitter-0's connection and its new life opened another: four in all; every
    # connection ended
    rx = summary["receiver"]
    print(f"receiver: {rx['connections']} connections, {rx['disconnects']} disconnects; cut took "
          f"{t_cut - at['cut', 'apply']['t']:.1f} s, reconnect {t_up - t_back:.1f} s")
    assert rx["connections"] >= 4 and rx["disconnects"] == rx["connections"], rx

    # rank 1 went silent across the cut, then resumed
    arr1 = sorted(float(row["t_arrival"]) for row in rows if row["rank"] == "1")
    during = [t for t in arr1 if t_cut + 0.5 < t < t_back]
    assert not during, f"{len(during)} rank-1 messages arrived while its link was cut"
    assert any(t > t_back for t in arr1), "rank 1 never resumed after the link came back"
    # and its new interface got the profile's tbf again (the old one went with the cut)
    back = [q for t, q in cut_qdiscs if t > t_up]
    assert any("tbf" in q and "rate 400Mbit" in q for q in back), (
        [(round(t - t_up, 1), "tbf" in q) for t, q in cut_qdiscs])

    # the paused host: rank 0 went silent while frozen (bytes already in its socket
    # buffer may still land just after the freeze), resumed after, in the same life
    arr0 = [(float(row["t_arrival"]), row["epoch"]) for row in rows if row["rank"] == "0"]
    frozen = [t for t, _ in arr0 if t_pause + 0.7 < t < t_thaw]
    assert not frozen, f"{len(frozen)} rank-0 messages arrived while its host was paused"
    assert any(t_thaw < t < t_kill and e == str(epochs[0]) for t, e in arr0), (
        "rank 0 never resumed after the pause")
    # the killed host's new life sent after the restart
    assert all(t > t_start for t, e in arr0 if e == str(epochs[1]))

    # the shaped rate at the consumer against the cap (stdout for the record): rank 0's
    # second life, which ran undisturbed (bytes after its first arrival over the time
    # they took)
    sized = sorted((float(row["t_arrival"]), int(row["nbytes"])) for row in rows
                   if row["rank"] == "0" and row["epoch"] == str(epochs[1]))
    rate = sum(n for _, n in sized[1:]) * 8 / (sized[-1][0] - sized[0][0]) / 1e6
    print(f"rank 0 (restarted): {rate:.0f} Mbit/s at the consumer, cap {CAP_MBPS}, "
          f"over {sized[-1][0] - sized[0][0]:.1f} s")
    assert rate <= CAP_MBPS * 1.1

    # nothing of the project is left
    assert _labelled(project) == [] and not _docker("ps", "-aq", "--filter",
                                                    f"label=com.docker.compose.project={project}"
                                                    ).stdout.split()
    for kind in ("network", "volume"):
        left = _docker(kind, "ls", "-q", "--filter",
                       f"label=com.docker.compose.project={project}").stdout.split()
        assert left == [], (kind, left)
