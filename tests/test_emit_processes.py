"""Emitter ranks in several processes: global rank ids, the split, the merged emit log.

Unit tests: the rank/cap split (pure), the per-process profile, the engine with
a rank offset (MockClock), the log merge. Integration tests (real processes on
loopback, bounded): a 2-process run sends, per rank, the very bytes a 1-process
run sends; a failing process fails the run; SIGINT reaches every process and
the merged log keeps every line.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simstream.emitter.log import LOG_KEYS, read_log
from simstream.emitter.merge import LogMerger, end_time, merge_logs
from simstream.emitter.processes import part_paths
from simstream.emitter.split import process_profile, split_cap, split_ranks
from simstream.profile import ProfileError, parse_profile
from tests.test_emit_cli import run_main
from tests.test_emitter_engine import emit as engine_emit
from tests.test_emitter_engine import profile as engine_profile

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# the split (pure)


@given(ranks=st.integers(1, 300), data=st.data(), offset=st.integers(0, 5000))
def test_split_gives_every_rank_once_in_consecutive_groups_of_near_equal_size(
        ranks: int, data: st.DataObject, offset: int) -> None:
    processes = data.draw(st.integers(1, ranks))
    shares = split_ranks(ranks, processes, offset)
    assert len(shares) == processes
    ids = [r for s in shares for r in s.rank_ids]
    assert ids == list(range(offset, offset + ranks))  # each rank exactly once, in order
    sizes = [s.ranks for s in shares]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert [s.index for s in shares] == list(range(processes))
    # disjoint offsets: each group starts where the previous one ended
    for a, b in zip(shares, shares[1:], strict=False):
        assert b.rank_offset == a.rank_offset + a.ranks


def test_split_refuses_more_processes_than_ranks() -> None:
    with pytest.raises(ValueError, match="cannot split 2 ranks"):
        split_ranks(2, 3)
    with pytest.raises(ValueError):
        split_ranks(4, 0)


def test_split_places_extra_ranks_first_and_labels_them() -> None:
    assert [(s.rank_offset, s.ranks) for s in split_ranks(5, 2, 10)] == [(10, 3), (13, 2)]
    assert [s.label for s in split_ranks(3, 2)] == ["ranks 0..1", "rank 2"]


@given(cap=st.floats(0.001, 1e6), processes=st.integers(1, 64))
def test_an_aggregate_cap_is_split_evenly_and_adds_up(cap: float, processes: int) -> None:
    share = split_cap(cap, processes)
    assert share is not None
    assert share * processes == pytest.approx(cap, rel=1e-12)
    assert split_cap(None, processes) is None


def _prof(**sections: Any) -> Any:
    data: dict[str, Any] = {"name": "t", "seed": 7, "source": {"shape": [1, 4, 4]}}
    data.update(sections)
    return parse_profile(data)


def test_process_profile_runs_its_share_with_its_cap_share_and_its_faults() -> None:
    p = _prof(
        transport={"ranks": 5, "processes": 2},
        network={"bandwidth_mbps": 100, "bandwidth_scope": "aggregate"},
        timeline={"repeat": False, "phases": [
            {"name": "a", "duration_s": 1, "network": {"bandwidth_mbps": 40}},
            {"name": "b", "duration_s": 1}]},
        faults=[{"kind": "reset", "at_message": 1, "rank": 4},
                {"kind": "reset", "at_message": 2, "rank": 0},
                {"kind": "stall", "at_message": 3, "duration_ms": 5}],
    )
    first, second = (process_profile(p, s, 2) for s in split_ranks(5, 2))
    assert (first.transport.rank_offset, first.transport.ranks) == (0, 3)
    assert (second.transport.rank_offset, second.transport.ranks) == (3, 2)
    assert first.transport.processes == second.transport.processes == 1
    for q in (first, second):
        assert q.network.bandwidth_mbps == 50
        assert q.timeline.phases[0].network is not None
        assert q.timeline.phases[0].network.bandwidth_mbps == 20
        assert q.timeline.phases[1].network is None
    # a fault naming a rank stays with the process that runs it; rank-less ones with all
    assert [(f.kind, f.rank) for f in first.faults] == [("reset", 0), ("stall", None)]
    assert [(f.kind, f.rank) for f in second.faults] == [("reset", 4), ("stall", None)]


def test_a_per_rank_cap_is_not_split() -> None:
    p = _prof(transport={"ranks": 4, "processes": 2},
              network={"bandwidth_mbps": 100, "bandwidth_scope": "per_rank"})
    for s in split_ranks(4, 2):
        assert process_profile(p, s, 2).network.bandwidth_mbps == 100


# --------------------------------------------------------------------------
# validation


def test_more_processes_than_ranks_is_a_profile_error_naming_the_field() -> None:
    with pytest.raises(ProfileError, match=r"transport\.processes: 3 is not <= transport\.ranks"):
        _prof(transport={"ranks": 2, "processes": 3})
    with pytest.raises(ProfileError, match=r"transport\.processes: 0 is not >= 1"):
        _prof(transport={"ranks": 2, "processes": 0})


def test_processes_over_ranks_on_the_command_line_exits_2(capsys: Any) -> None:
    rc, _, err = run_main(["emit", "--profile", "steady", "--ranks", "2", "--processes", "3",
                           "--count", "1", "--dry-run"], capsys)
    assert rc == 2
    assert "transport.processes: 3 is not <= transport.ranks (2)" in err
    assert "Traceback" not in err


def test_fault_ranks_are_global_ids_bounded_by_the_offset() -> None:
    p = _prof(transport={"ranks": 2, "rank_offset": 4},
              faults=[{"kind": "reset", "at_message": 1, "rank": 5}])
    assert p.faults[0].rank == 5
    with pytest.raises(ProfileError, match="a fault names rank 6 but this emitter's ranks "
                                           "end at 5"):
        _prof(transport={"ranks": 2, "rank_offset": 4},
              faults=[{"kind": "reset", "at_message": 1, "rank": 6}])


# --------------------------------------------------------------------------
# the engine with a rank offset (virtual time)


def test_engine_numbers_ranks_from_the_offset_each_with_its_own_sequence() -> None:
    urls = ["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002", "tcp://127.0.0.1:5003"]
    prof = engine_profile(transport={"ranks": 2, "rank_offset": 4, "urls": urls},
                          stop={"messages": 3},
                          faults=[{"kind": "duplicate", "at_message": 1, "rank": 5}])
    records, out, transport = engine_emit(prof)
    assert [r.rank for r in out["result"].ranks] == [4, 5]
    # the URL of rank r is urls[r % len(urls)], with the global id, as in one process
    assert [u for _, _, u in transport.opened] == [urls[4 % 3], urls[5 % 3]]
    for rank in (4, 5):
        mine = [x for x in records if x["rank"] == rank]
        assert {x["url"] for x in mine} == {urls[rank % 3]}
        expected = [0, 1, 1, 2] if rank == 5 else [0, 1, 2]  # the fault names global rank 5
        assert sorted(x["seq"] for x in mine) == expected
    assert {x["rank"] for x in records} == {4, 5}


def test_dry_run_shows_the_offset_rank_ids(capsys: Any) -> None:
    rc, out, _ = run_main(["emit", "--profile", "steady", "--ranks", "2", "--rank-offset", "6",
                           "--count", "2", "--dry-run"], capsys)
    assert rc == 0
    lines = out.strip().splitlines()[:-1]
    assert len(lines) == 4
    assert sorted({int(x.split()[1]) for x in lines}) == [6, 7]


# --------------------------------------------------------------------------
# the merged log


def _line(rank: int, seq: int, t: float, outcome: str = "delivered") -> str:
    rec = dict.fromkeys(LOG_KEYS)
    rec.update(rank=rank, seq=seq, phase="p", t_sched=t - 0.5, faults=[], outcome=outcome,
               t_first_byte=None if outcome == "lost" else t - 0.1,
               t_last_byte=t if outcome == "delivered" else None, nbytes=10, url="u")
    return json.dumps(rec)


def test_merge_orders_by_end_time_and_keeps_each_part_in_its_own_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    # part a: a lost record written late but scheduled early stays after what came before it
    a.write_text("\n".join([_line(0, 0, 10.0), _line(0, 1, 12.0), _line(0, 2, 11.0, "lost"),
                            _line(0, 3, 13.0)]) + "\n")
    b.write_text("\n".join([_line(1, 0, 9.0), _line(1, 1, 11.6), _line(1, 2, 12.5)]) + "\n")
    out = tmp_path / "merged"
    report = merge_logs([a, b], out)
    got = [(r["rank"], r["seq"]) for r in read_log(out)]
    assert got == [(1, 0), (0, 0), (1, 1), (0, 1), (0, 2), (1, 2), (0, 3)]
    assert report.complete and report.read == [4, 3] and report.written == [4, 3]
    assert report.lines == 7 and not report.problems()


@given(parts=st.lists(st.lists(st.floats(0, 100, allow_nan=False), max_size=30),
                      min_size=1, max_size=5))
def test_merge_keeps_every_line_once_each_part_in_order(parts: list[list[float]]) -> None:
    texts = [[_line(i, s, t) for s, t in enumerate(ts)] for i, ts in enumerate(parts)]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, lines in enumerate(texts):
            p = Path(d) / f"part{i}"
            p.write_text("".join(x + "\n" for x in lines))
            paths.append(p)
        buf = io.BytesIO()
        report = merge_logs(paths, buf)
    merged = buf.getvalue().decode().splitlines()
    assert sorted(merged) == sorted(x for lines in texts for x in lines)
    assert report.complete and report.lines == sum(len(x) for x in texts)
    for i, lines in enumerate(texts):
        assert [x for x in merged if json.loads(x)["rank"] == i] == lines
    # keys (each part's running maximum of end times) never go down
    run: dict[int, float] = {}
    keys = []
    for x in merged:
        rec = json.loads(x)
        run[rec["rank"]] = max(run.get(rec["rank"], float("-inf")), end_time(rec))
        keys.append(run[rec["rank"]])
    assert keys == sorted(keys)


def test_merge_while_written_releases_only_lines_whose_place_is_certain(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(_line(0, 0, 1.0) + "\n" + _line(0, 1, 3.0) + "\n")
    buf = io.BytesIO()
    seen: list[int] = []
    m = LogMerger([a, b], buf, on_line=lambda r: seen.append(r["seq"]))
    assert m.poll() == 0  # part b has written nothing yet: anything may come first
    with open(b, "w") as fh:
        fh.write(_line(1, 0, 2.0) + "\n" + _line(1, 1, 4.0)[:20])  # a line being written
    assert m.poll() == 2  # a0 (1.0) and b0 (2.0); a1 (3.0) waits for b to pass 3.0
    with open(b, "a") as fh:
        fh.write(_line(1, 1, 4.0)[20:] + "\n")
    assert m.poll() == 1  # a1; b1 waits for a, still being written
    m.mark_complete(0)
    assert m.poll() == 1
    report = m.finish()
    assert [json.loads(x)["t_last_byte"] for x in buf.getvalue().splitlines()] == [
        1.0, 2.0, 3.0, 4.0]
    assert report.complete and report.lines == 4 and seen == [0, 0, 1, 1]


def test_an_unterminated_last_line_is_reported_not_merged(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text(_line(0, 0, 1.0) + "\n" + _line(0, 1, 2.0)[:30])
    buf = io.BytesIO()
    report = merge_logs([a, tmp_path / "never-written"], buf)
    assert len(buf.getvalue().splitlines()) == 1
    assert report.partial == [1, 0] and report.read == [1, 0]
    assert any("unterminated line" in p for p in report.problems())


def test_part_logs_lie_beside_the_log(tmp_path: Path) -> None:
    assert part_paths(tmp_path / "emit.jsonl", 2) == [tmp_path / "emit.jsonl.part0",
                                                       tmp_path / "emit.jsonl.part1"]


# --------------------------------------------------------------------------
# real processes on loopback

TINY = """
name: tiny
seed: 11
source: {shape: [1, 8, 8], batch_size: 2, total_events: %(events)s, pool: 2}
transport: {kind: zmq, role: %(role)s, url: "%(url)s", urls: %(urls)s, ranks: %(ranks)d,
            processes: %(processes)d, connect_timeout_s: 10, reconnect_backoff_ms: [20, 200]}
timeline: {phases: [{name: steady, rate_hz: %(rate)s}]}
"""


def tiny(tmp_path: Path, name: str, *, url: str = "tcp://127.0.0.1:1", ranks: int = 4,
         processes: int = 2, events: Any = 20, rate: float = 200, role: str = "client",
         urls: str = "null") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(TINY % {"url": url, "ranks": ranks, "processes": processes,
                         "events": events, "rate": rate, "role": role, "urls": urls})
    return p


class Pull:
    """A pyzmq PULL socket on a free loopback port, collecting raw messages in a thread."""

    def __init__(self, expect: int | None = None, limit_s: float = 60.0) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.messages: list[bytes] = []
        self.expect = expect
        self.stop = threading.Event()
        self.deadline = time.monotonic() + limit_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if self.expect is not None and len(self.messages) >= self.expect:
                break
            if self.sock.poll(50):
                self.messages.append(self.sock.recv())

    def finish(self, wait_s: float = 5.0) -> list[bytes]:
        self.thread.join(wait_s)
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()
        return self.messages


def emit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "simstream", "emit", "--no-progress", *args]


def by_rank_seq(messages: list[bytes]) -> dict[tuple[int, int], bytes]:
    from simstream.emitter.sink import decode_ids

    out = {}
    for m in messages:
        seq, rank, _, err = decode_ids(m)
        assert err is None and seq is not None and rank is not None
        assert (rank, seq) not in out, f"rank {rank} seq {seq} twice"
        out[(rank, seq)] = m
    return out


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_processes_send_per_rank_what_one_process_sends(tmp_path: Path) -> None:
    runs = {}
    for processes in (1, 2):
        rx = Pull(expect=40)
        log = tmp_path / f"emit{processes}.jsonl"
        r = subprocess.run(
            emit_cmd("--profile", str(tiny(tmp_path, f"p{processes}", url=rx.url,
                                           processes=processes)), "--log", str(log),
                     "--epoch", "7"),  # pinned: the payloads are compared byte for byte
            capture_output=True, text=True, timeout=90, cwd=REPO)
        got = rx.finish()
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        recs = read_log(log)
        assert len(log.read_text().splitlines()) == len(recs) == 40  # one line per attempt
        assert all(x["outcome"] == "delivered" for x in recs)
        assert sorted((x["rank"], x["seq"]) for x in recs) == [
            (r_, s) for r_ in range(4) for s in range(10)]
        runs[processes] = by_rank_seq(got)
        if processes == 2:
            assert "total: 4 rank(s) in 2 processes, delivered 40, cut 0, lost 0" in r.stdout
            assert "(40 lines merged from 2 processes)" in r.stdout
            assert not list(tmp_path.glob("emit2.jsonl.part*"))  # merged, then removed
            ends = [end_time(x) for x in recs]
            assert ends == sorted(ends)  # no lost records here: end times themselves ascend
    assert set(runs[1]) == set(runs[2]) == {(r_, s) for r_ in range(4) for s in range(10)}
    assert {x["epoch"] for x in recs} == {7}  # every process of the run took the run's epoch
    # the same bytes for every (rank, seq), whichever process ran the rank
    assert all(runs[1][k] == runs[2][k] for k in runs[1])
    # and ranks differ from each other (their streams are seeded by the global rank id)
    assert runs[1][(0, 0)] != runs[1][(2, 0)]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_rank_offset_numbers_the_payload_and_the_log(tmp_path: Path) -> None:
    rx = Pull(expect=20)
    log = tmp_path / "emit.jsonl"
    r = subprocess.run(
        emit_cmd("--profile", str(tiny(tmp_path, "off", url=rx.url, ranks=4, processes=1)),
                 "--ranks", "2", "--rank-offset", "5", "--log", str(log)),
        capture_output=True, text=True, timeout=90, cwd=REPO)
    got = by_rank_seq(rx.finish())
    assert r.returncode == 0, r.stderr
    assert set(got) == {(rank, s) for rank in (5, 6) for s in range(10)}
    assert sorted({x["rank"] for x in read_log(log)}) == [5, 6]
    assert "rank 5 " in r.stdout and "rank 6 " in r.stdout


def _bound_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_failing_process_stops_the_others_and_fails_the_run(tmp_path: Path) -> None:
    # role server: each rank binds its own address; rank 1's is taken, so process 1 fails
    s_free, free = _bound_port()
    s_free.close()
    taken, port = _bound_port()
    try:
        urls = f'["tcp://127.0.0.1:{free}", "tcp://127.0.0.1:{port}"]'
        prof = tiny(tmp_path, "fail", ranks=2, processes=2, role="server", urls=urls,
                    events="null")
        log = tmp_path / "emit.jsonl"
        t0 = time.monotonic()
        r = subprocess.run(emit_cmd("--profile", str(prof), "--log", str(log)),
                           capture_output=True, text=True, timeout=90, cwd=REPO)
    finally:
        taken.close()
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "error: emitter process 1 (rank 1) exited with status 2" in r.stderr
    assert "Traceback" not in r.stderr
    # process 0 was waiting for a peer for ever: it was stopped, not waited for
    assert time.monotonic() - t0 < 60


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sigint_reaches_every_process_and_the_merged_log_keeps_every_line(
        tmp_path: Path) -> None:
    rx = Pull()
    log = tmp_path / "emit.jsonl"
    prof = tiny(tmp_path, "endless", url=rx.url, ranks=3, processes=2, events="null",
                rate=100)
    proc = subprocess.Popen(emit_cmd("--profile", str(prof), "--log", str(log)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        # the merge runs live: wait until both processes' ranks are in the merged log
        while time.monotonic() < deadline:
            ranks = {x["rank"] for x in read_log(log)} if log.exists() else set()
            if ranks == {0, 1, 2}:
                break
            time.sleep(0.1)
        assert ranks == {0, 1, 2}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = rx.finish(wait_s=1.0)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = log.read_text().splitlines()
    recs = [json.loads(x) for x in lines]  # every line whole: no partial line in the middle
    assert all(tuple(x) == LOG_KEYS for x in recs)
    for rank in range(3):
        seqs = sorted(x["seq"] for x in recs if x["rank"] == rank)
        assert seqs == list(range(len(seqs))) and seqs  # each rank's own sequence from 0
    said = re.search(r"^emit log: \S+ \((\d+) lines merged from 2 processes\)$", out, re.M)
    assert said is not None and int(said.group(1)) == len(lines)
    delivered = sum(x["outcome"] == "delivered" for x in recs)
    assert len(got) == delivered
    assert not list(tmp_path.glob("emit.jsonl.part*"))
    assert os.path.getsize(log) > 0


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            # the ppid is the second field after the parenthesised command name
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_children_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    rx = Pull()
    log = tmp_path / "emit.jsonl"
    prof = tiny(tmp_path, "orphans", url=rx.url, ranks=2, processes=2, events="null", rate=50)
    proc = subprocess.Popen(emit_cmd("--profile", str(prof), "--log", str(log)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log.exists() and {x["rank"] for x in read_log(log)} == {0, 1}:
                break
            time.sleep(0.1)
        kids = _children_of(proc.pid)
        assert len(kids) == 2
        proc.kill()  # no chance to forward anything
        proc.wait()
        t_killed = time.monotonic()
        deadline = t_killed + 20
        while time.monotonic() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.05)
        assert not any(_alive(k) for k in kids)
        # they noticed (polling every 0.5 s) and stopped; not merely died of a broken
        # pipe at their next progress line, which comes every 5 s
        assert time.monotonic() - t_killed < 4.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
        rx.finish(wait_s=0.1)
    # each child logged its records to its part, interrupted cleanly
    for part in part_paths(log, 2):
        recs = read_log(part)
        assert recs and all(tuple(x) == LOG_KEYS for x in recs)
