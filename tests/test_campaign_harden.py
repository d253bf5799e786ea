"""The fault campaign's findings, each as a regression test.

Bounded throughout: every wait has a timeout, memory attacks run in a child under
RLIMIT_AS (or measure the consumer's bytes, never a peer's), and disk attacks run on
a small tmpfs in a private mount namespace (root only; skipped elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simstream.cli import main
from simstream.errors import UsageError
from simstream.outdir import check_log_file, prepare_run_dir
from simstream.pipeline.records import RunRecords, SequenceLedger
from tests.test_campaign_hostile import LiveConsumer, _zmtp_greeting, message

ROOT = Path(__file__).resolve().parents[1]
CAN_MOUNT = os.geteuid() == 0 and shutil.which("unshare") is not None


def in_tiny_tmpfs(script: str, size: str = "2m", ro: bool = False,
                  timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in a private mount namespace with a tmpfs of ``size`` at $T."""
    opts = f"size={size}" + (",ro" if ro else "")
    wrapped = f'T=$(mktemp -d) && mount -t tmpfs -o {opts} none "$T" && {script}'
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PY": sys.executable}
    return subprocess.run(["unshare", "-m", "sh", "-c", wrapped], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=ROOT)


def cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


# --------------------------------------------------------------------------
# 10-12: the output directory


@pytest.mark.skipif(not CAN_MOUNT, reason="needs root and unshare for a read-only mount")
def test_read_only_out_is_exit_2_before_starting() -> None:
    r = in_tiny_tmpfs(textwrap.dedent("""\
        $PY -m simstream consume --out "$T/c" --count 1 --device cpu; echo "rc=$?"
        $PY -m simstream run --profile steady --out "$T/r" --duration 1; echo "rc=$?"
        $PY -m simstream emit --profile steady --count 1 --log "$T/e.jsonl"; echo "rc=$?"
        """), size="64k", ro=True)
    assert r.stdout.split().count("rc=2") == 3, (r.stdout, r.stderr)
    assert r.stderr.count("read-only file system") == 3, r.stderr
    assert "Traceback" not in r.stderr


def test_non_empty_out_is_refused_and_force_replaces_it_wholly(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "quarantine").mkdir(parents=True)
    (old / "quarantine" / "000001.bin").write_bytes(b"x")
    (old / "summary.json").write_text("{}")
    assert cli(["consume", "--out", str(old), "--count", "1"]) == 2
    assert cli(["run", "--profile", "steady", "--out", str(old), "--duration", "1"]) == 2
    assert (old / "quarantine" / "000001.bin").exists()  # nothing touched
    prepare_run_dir(old, force=True)
    assert list(old.iterdir()) == []  # no file of the earlier run mixes with the next
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a simstream run directory"):
        prepare_run_dir(other, force=True)
    assert (other / "notes.txt").exists()
    with pytest.raises(UsageError, match="is a directory"):
        check_log_file(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        check_log_file(tmp_path / "nope" / "e.jsonl")


@pytest.mark.skipif(not CAN_MOUNT, reason="needs root and unshare for a small tmpfs")
def test_full_disk_keeps_counting_and_writes_the_summary() -> None:
    code = textwrap.dedent("""\
        import os, sys, json
        from pathlib import Path
        from simstream.pipeline.records import RunRecords
        out = Path(sys.argv[1])
        r = RunRecords(out, quarantine_max_files=10**6, quarantine_max_bytes=1 << 40)
        for i in range(200):
            r.arrival(float(i))
            r.sequence(i, 0, i)
            r.quarantine(i, os.urandom(50_000), "codec: junk", nbytes=50_000, t_arrival=float(i))
        s = r.close({"end_reason": "count"})
        left = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
        print(json.dumps({"summary": s, "tmp": left}))
        """)
    r = in_tiny_tmpfs(f'$PY -c \'{code}\' "$T/run"', size="2m")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    s = got["summary"]
    assert s["received"] == 200 and s["quarantined"] == 200 and s["accounting_ok"]
    assert s["quarantine_not_saved"] > 0 and s["quarantine_saved"] < 200
    assert "No space left" in s["disk_error"]
    assert got["tmp"] == []


# --------------------------------------------------------------------------
# 3-6: messages that hid data


def test_a_forged_far_sequence_number_is_counted_apart() -> None:
    led = SequenceLedger(window=1000)
    for i in range(30):
        assert led.see(0, i) == "new"
    assert led.see(0, 2**62) == "out_of_window"
    for i in range(30, 60):
        assert led.see(0, i) == "new"
    assert led.counts() == {"lost": 0, "duplicated": 0, "reordered": 0}
    assert led.out_of_window == 1


def test_accounting_is_not_ok_when_figures_do_not_add_up(tmp_path: Path) -> None:
    r = RunRecords(tmp_path / "a")
    r.arrival(0.0)
    r.sequence(0, 0, 2**62)
    r.quarantine(0, b"x", "codec: junk", nbytes=1, t_arrival=0.0)
    s = r.close({})
    assert s["lost"] == 0 and s["reordered"] == 0 and s["seq_out_of_window"] == 1
    assert not s["accounting_ok"] and "forged or corrupt" in s["accounting_problems"][0]
    r = RunRecords(tmp_path / "b")
    r.arrival(0.0)  # received, never processed nor quarantined
    s = r.close({})
    assert not s["accounting_ok"] and len(s["accounting_problems"]) == 2


def test_quarantine_is_capped_in_files_and_bytes_and_counts_go_on(tmp_path: Path) -> None:
    r = RunRecords(tmp_path / "f", quarantine_max_files=5)
    for i in range(2000):
        r.arrival(0.0)
        r.sequence(i, None, None)
        r.quarantine(i, b"ab", "codec: not an HDF5 or npz message", nbytes=2, t_arrival=0.0)
    s = r.close({})
    assert len(list((tmp_path / "f" / "quarantine").iterdir())) == 10
    assert s["quarantined"] == 2000 and s["quarantine_saved"] == 5
    assert s["quarantine_not_saved"] == 1995 and s["quarantine_reasons"] == {"codec": 2000}
    rows = (tmp_path / "f" / "messages.csv").read_text().count("quarantined")
    assert rows == 2000  # each one keeps its reason
    # each keeps its first MiB: 2.5 MiB holds two
    r = RunRecords(tmp_path / "b", quarantine_max_bytes=5 << 19)
    for i in range(6):
        r.arrival(0.0)
        r.sequence(i, None, None)
        r.quarantine(i, bytes(2 << 20), "codec: big", nbytes=2 << 20, t_arrival=0.0)
    s = r.close({})
    assert s["quarantine_saved"] == 2 and s["quarantined"] == 6


def _zmtp_push_peer(port: int) -> socket.socket:
    """A raw ZMTP 3.0 PUSH peer, past the handshake."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(_zmtp_greeting())
    got = b""
    while len(got) < 64:
        chunk = s.recv(64 - len(got))
        assert chunk, "the consumer closed during the greeting"
        got += chunk
    body = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 4) + b"PUSH"
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


@pytest.mark.integration
def test_zmq_multipart_is_quarantined_and_oversize_is_refused_at_its_header(tmp_path: Path) -> None:
    import zmq

    c = LiveConsumer(tmp_path, transport="zmq", max_message_bytes=200_000)
    try:
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(c.url)
        push.send_multipart([message(0), message(1)])
        push.send(message(2))
        c.wait_received(2)
        push.close()
        ctx.term()
        # announces 300 MB: libzmq must drop the connection at the header, not buffer
        peer = _zmtp_push_peer(c.port)
        peer.sendall(b"\x02" + struct.pack(">Q", 300 << 20) + bytes(1 << 16))
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                closed = peer.recv(4096) == b""
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                pass
        peer.close()
        assert closed, "the consumer kept a connection announcing 300 MB"
        time.sleep(0.3)
    finally:
        s = c.stop()
    assert s["received"] == 2 and s["processed"] == 1 and s["quarantined"] == 1
    assert s["quarantine_reasons"] == {"multipart": 1}
    assert s["receiver"]["multipart"] == 1 and s["receiver"]["disconnects"] >= 1
    assert s["accounting_ok"]


# --------------------------------------------------------------------------
# 13-16: profiles, paths and names


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text("name: t\n" + textwrap.dedent(text))
    return p


def test_a_profile_of_huge_messages_is_refused_unless_overridden(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    big = _write(tmp_path, """\
        source: {shape: [100000, 100000], dtype: float64, batch_size: 1}
        """)
    assert cli(["profiles", "validate", str(big)]) == 2
    err = capsys.readouterr().err
    assert "80000000000 bytes" in err and "source.max_message_bytes" in err
    ok = _write(tmp_path, """\
        source: {shape: [100000, 100000], dtype: float64, batch_size: 1,
                 max_message_bytes: 100000000000}
        """, "ok.yaml")
    assert cli(["profiles", "validate", str(ok)]) == 0
    from simstream.pipeline.config import consumer_config

    with pytest.raises(Exception, match="max_message_bytes"):
        consumer_config(section={"mode": "random", "random": {"shape": [1, 100000, 100000]}})


def _bomb(levels: int, as_key: bool = False) -> str:
    lines = ['a: &a ["xxxxxxxxxxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]']
    prev = "a"
    for i in range(levels):
        name = chr(ord("b") + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    lines.append(f"name: *{prev}" if not as_key else f"? *{prev}\n: 1")
    return "\n".join(lines) + "\n"


def _limited(argv: list[str], mem_bytes: int = 2 << 30, timeout_s: float = 60.0
             ) -> subprocess.CompletedProcess[str]:
    """``python -m simstream ARGV`` under RLIMIT_AS: a regression fails, it cannot
    take the machine's memory."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    return subprocess.run([sys.executable, "-m", "simstream", *argv], capture_output=True,
                          text=True, timeout=timeout_s, preexec_fn=limit,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def test_yaml_alias_bombs_are_refused_fast_with_a_short_message(tmp_path: Path) -> None:
    for levels in (7, 9):  # 7: once a 34.7 MB error message; 9: once 8 GB and minutes
        p = tmp_path / f"bomb{levels}.yaml"
        p.write_text(_bomb(levels))
        t0 = time.monotonic()
        r = _limited(["profiles", "validate", str(p)])
        assert r.returncode == 2, r.stderr[-2000:]
        assert time.monotonic() - t0 < 30
        assert "alias bomb" in r.stderr and len(r.stderr) < 2000, r.stderr[-2000:]


def test_error_messages_quote_values_cut_short(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, f"description: {'x' * 5000}\nsource: {{batch_size: [{', '.join(['1'] * 3000)}]}}\n")
    assert cli(["profiles", "validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and len(err) < 2000


def test_replay_path_must_be_a_regular_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, kind in ((fifo, "a FIFO"), (tmp_path, "a directory")):
        p = _write(tmp_path, f"""\
            source: {{content: replay, replay_path: "{target}"}}
            """)
        t0 = time.monotonic()
        assert cli(["profiles", "validate", str(p)]) == 2  # never opened: no hang
        assert time.monotonic() - t0 < 10
        assert f"is {kind}, not a regular file" in capsys.readouterr().err
    p = _write(tmp_path, f"""\
        source: {{content: replay, replay_path: ["{tmp_path / 'x.h5'}", "{fifo}"]}}
        """)
    assert cli(["emit", "--profile", str(p), "--count", "1"]) == 2
    assert "source.replay_path" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["x;touch y", "../../etc", "a" * 5000])
def test_testbed_down_with_a_bad_name_is_exit_2(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["testbed", "down", name]) == 2
    err = capsys.readouterr().err
    assert "testbed name" in err and "invalid" in err and len(err) < 400
    assert not Path("y").exists()


# --------------------------------------------------------------------------
# 7-9: signals and process hygiene (run, consume, emit)

SIG_PROFILE = """\
name: sig
seed: 1
source: {batch_size: 2, shape: [1, 32, 32], content: constant, total_events: null, pool: 4}
transport: {kind: zmq, role: client, url: "tcp://127.0.0.1:12321", sndhwm: 5, ranks: 1}
timeline:
  repeat: true
  phases: [{name: steady, duration_s: 1.0, rate_hz: 40}]
stop: {duration_s: 60}
consumer:
  device: cpu
  # a slow model keeps Q1 full: the stop must still drain it within the grace time
  model: {kind: synthetic, compute_ms: 100}
  queue: {maxsize: 8}
"""


def _pids_naming(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (this test's unique paths)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(int(d.name))
    return out


def _wait_rows(path: Path, n: int, proc: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if path.read_bytes().count(b"\n") > n:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {n} rows")


def _simstream(argv: list[str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "simstream", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)  # type: ignore[call-overload]


def _end(proc: subprocess.Popen[str], timeout_s: float = 90.0) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigint_and_sigterm_become_one_orderly_stop_in_the_runner() -> None:
    from simstream.runner.procs import Interrupted, orderly_signals

    for sig in (signal.SIGTERM, signal.SIGINT):
        with pytest.raises(Interrupted) as e, orderly_signals() as got:
            os.kill(os.getpid(), sig)
            time.sleep(5)
        assert e.value.exit_code == 128 + sig and got == [sig]
        with orderly_signals() as got:
            try:
                os.kill(os.getpid(), sig)
                time.sleep(5)
            except Interrupted:
                os.kill(os.getpid(), sig)  # a second one, during the stop: recorded only
                time.sleep(0.05)
        assert got == [sig, sig]


@pytest.mark.integration
def test_run_stops_in_order_on_sigint_to_its_process_group(tmp_path: Path) -> None:
    sig = signal.SIGINT
    prof = tmp_path / "sig.yaml"
    prof.write_text(SIG_PROFILE)
    out = tmp_path / "run"
    # SIGINT goes to the whole process group, as a terminal's Ctrl-C does
    p = _simstream(["run", "--profile", str(prof), "--out", str(out), "--progress-every", "0.2"],
                   process_group=0)
    try:
        _wait_rows(out / "messages.csv", 10, p)
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
    finally:
        stdout, err = _end(p)
    assert p.returncode == 128 + sig, err
    assert "cut short" in err and str(out) in err
    # the run directory first; into a pipe, plain progress lines, then where the run stood
    assert stdout.splitlines()[0] == f"run directory: {out}", stdout
    progress = [ln for ln in err.splitlines() if ln.startswith("run ")]
    assert len(progress) >= 3, err
    assert "emitter not started" in progress[0] or "sent " in progress[0]
    assert "processed " in progress[-2] and "Q1 " in progress[-2] and "msg/s" in progress[-2]
    assert progress[-1].endswith("(done)") and "\r" not in err
    s = json.loads((out / "summary.json").read_text())
    assert s["received"] >= 10 and s["received"] == s["processed"] + s["quarantined"]
    assert (out / "report.md").exists()
    assert _pids_naming(str(out)) == []  # consumer and emitter reaped


@pytest.mark.integration
def test_a_consumer_killed_mid_run_is_reaped_and_diagnosed(tmp_path: Path) -> None:
    prof = tmp_path / "sig.yaml"
    prof.write_text(SIG_PROFILE)
    out = tmp_path / "run"
    p = _simstream(["run", "--profile", str(prof), "--out", str(out)])
    try:
        _wait_rows(out / "messages.csv", 5, p)
        consumer = [q for q in _pids_naming(str(out)) if q != p.pid and
                    b" consume " in Path(f"/proc/{q}/cmdline").read_bytes().replace(b"\0", b" ")]
        assert len(consumer) == 1
        os.kill(consumer[0], signal.SIGKILL)
        _, err = _end(p, 60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1 and "consumer exited" in err
    assert not (out / "summary.json").exists()
    report = json.loads((out / "report.json").read_text())  # rebuilt from the CSV files
    assert report["cut_short"] and report["summary"].startswith("The run was cut short")
    assert _pids_naming(str(out)) == []


CHILD_OF_KILLED_PARENT = r'''
import sys, time
from pathlib import Path
from simstream.runner.procs import Child
# the runner's way of starting a child; the child runs simstream's entry point
child = Child("sleeper", [sys.executable, "-c",
    "from simstream.runner.procs import die_with_parent_from_env as d; d(); "
    "import time; time.sleep(60)"], Path(sys.argv[1]))
print(child.proc.pid, flush=True)
time.sleep(60)
'''


def test_a_child_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """What keeps a SIGKILLed runner from orphaning its consumer and emitter."""
    parent = subprocess.Popen([sys.executable, "-c", CHILD_OF_KILLED_PARENT,
                               str(tmp_path / "child.log")], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(1.0)  # the child sets its death signal first thing
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            state = Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0]
            if state == "Z":
                break
            time.sleep(0.05)
        alive = Path(f"/proc/{child}").exists() and Path(
            f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] != "Z"
        assert not alive, "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.integration
def test_consume_exits_130_on_sigint_and_emit_143_on_sigterm_with_their_records(
        tmp_path: Path) -> None:
    from simstream.runner.procs import free_port, is_listening

    prof = tmp_path / "sig.yaml"
    prof.write_text(SIG_PROFILE)
    port = free_port()
    out = tmp_path / "c"
    c = _simstream(["consume", "--profile", str(prof), "--bind", f"tcp://127.0.0.1:{port}",
                    "--out", str(out), "--idle-timeout", "600"])
    e = None
    try:
        deadline = time.monotonic() + 60
        while not is_listening(port):
            assert c.poll() is None and time.monotonic() < deadline, c.communicate()
            time.sleep(0.05)
        e = _simstream(["emit", "--profile", str(prof), "--url", f"tcp://127.0.0.1:{port}",
                        "--log", str(tmp_path / "e.jsonl")])
        _wait_rows(out / "messages.csv", 5, c)
        e.send_signal(signal.SIGTERM)
        _, eerr = _end(e, 30)
        c.send_signal(signal.SIGINT)
        _, cerr = _end(c, 60)
    finally:
        for q in (c, e):
            if q is not None and q.poll() is None:
                q.kill()
    assert e.returncode == 143, eerr
    assert c.returncode == 130, cerr
    s = json.loads((out / "summary.json").read_text())
    assert s["received"] >= 5 and s["accounting_ok"], s
    assert (tmp_path / "e.jsonl").read_text().count("\n") >= 5


# --------------------------------------------------------------------------
# 1-2: messages that cost memory or time to decode

BOMB_SCRIPT = r'''
import io, json, resource, sys, time
import h5py, numpy as np
from simstream.pipeline.decode import DecodeLimits, Decoder, ParseError

FIELDS = {"detector_data": "/data/data", "timestamp": "/data/timestamp",
          "simstream_sequence": "/simstream/sequence", "simstream_rank": "/simstream/rank"}

def message(bomb_at, chunks=0):
    b = io.BytesIO()
    with h5py.File(b, "w") as f:
        f["data/timestamp"] = np.arange(2.0)
        f["simstream/sequence"] = np.array([7, 7])
        f["simstream/rank"] = np.array([0, 0])
        if bomb_at != "data/data":
            f["data/data"] = np.ones((2, 1, 8, 8), np.float32)
        for i, path in enumerate(bomb_at.split(",")):
            # 3.6 GB each of never-written (fill-value) data
            f.create_dataset(path, shape=(2, 1, 30000, 15000), dtype="f4", chunks=(1, 1, 1000, 1000))
        if chunks:
            d = f.create_dataset("data/many", shape=(chunks,), dtype="u1", chunks=(1,))
            d[...] = 1
    return b.getvalue()

out = {}
for name, payload, kw in (
        ("three bombs elsewhere", message("junk/a,junk/b,junk/c"), {}),
        ("bomb as detector_data", message("data/data"), {}),
        ("many chunks elsewhere", message("junk/a", chunks=20000), {}),
        ("many chunks in a field", message("junk/a", chunks=20000), {"fields": {**FIELDS, "many": "/data/many"}}),
        ("deadline", message("junk/a"), {"deadline_s": 1e-9})):
    fields = kw.get("fields", FIELDS)
    d = Decoder(fields, ["detector_data"], None, None,
                DecodeLimits(max_bytes=1 << 30, max_chunks=16384, deadline_s=kw.get("deadline_s", 10.0)))
    t0 = time.monotonic()
    try:
        pb = d.parse(payload)
        res = f"processed {pb.data.shape} seq {pb.seq}"
    except ParseError as e:
        res = str(e)
    out[name] = [len(payload), res, time.monotonic() - t0]
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
'''


def test_fill_value_bombs_and_chunk_floods_cost_neither_memory_nor_time() -> None:
    import resource

    def limit() -> None:  # a regression fails here; it cannot take the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    r = subprocess.run([sys.executable, "-c", BOMB_SCRIPT], capture_output=True, text=True,
                       timeout=120, preexec_fn=limit, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["three bombs elsewhere"][1] == "processed (2, 1, 8, 8) seq 7", got
    assert got["bomb as detector_data"][1].startswith("codec: budget: the fields declare"), got
    assert got["many chunks elsewhere"][1] == "processed (2, 1, 8, 8) seq 7", got
    assert got["many chunks in a field"][1].startswith("codec: chunks: dataset /data/many's chunk grid has 20000"), got
    assert got["deadline"][1].startswith("codec: deadline:"), got
    assert all(v[2] < 20 for k, v in got.items() if k != "peak_rss_mb"), got
    assert got["peak_rss_mb"] < 600, got


def test_a_slow_message_holds_back_the_others_for_parse_hold_s_only() -> None:
    """The in-order feeder: batches parsed after a slow one go into Q1 once it has
    been parsing for parse_hold_s, not when it ends."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    import numpy as np

    from simstream.pipeline.ingest import _InOrderFeeder
    from simstream.pipeline.parse import ParsedBatch
    from simstream.pipeline.receiver import RawMessage

    release_slow = threading.Event()
    put: list[int] = []

    def parse(payload: bytes) -> ParsedBatch:
        if payload == b"slow":
            assert release_slow.wait(30)
        seq = int(payload == b"slow")
        return ParsedBatch(np.zeros((1, 2, 2), np.float32), None, 0, seq, 1, 0.0, 0.0)

    def q1_put(item: object) -> bool:
        put.append(item.host.index)  # type: ignore[attr-defined]
        if len(put) == 3:
            release_slow.set()  # the three fast ones went ahead: let the slow one end
        return True

    ctx = SimpleNamespace(
        cfg=SimpleNamespace(parser_threads=2, parse_hold_s=0.2), errors=[],
        parser=SimpleNamespace(parse=parse), put=q1_put,
        records=SimpleNamespace(sequence=lambda *a: None),
        quarantine=lambda *a: pytest.fail(f"quarantined {a}"))
    with ThreadPoolExecutor(2) as pool:
        feeder = _InOrderFeeder(ctx, pool)  # type: ignore[arg-type]
        feeder.thread.start()
        for i, p in enumerate([b"a", b"slow", b"b", b"c"]):
            feeder.submit(RawMessage(p, len(p), 0.0), i)
        assert release_slow.wait(30), f"the slow message held the others back: {put}"
        feeder.finish()
    assert put == [0, 2, 3, 1] and feeder.overtaken == 2


@pytest.mark.netns
@pytest.mark.skipif(not CAN_MOUNT or shutil.which("ip") is None, reason="needs root and iproute2")
def test_testbed_down_ends_the_processes_inside_its_namespaces() -> None:
    ns = "ssb-hdown-prod"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    sleeper = None
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "120"])
        deadline = time.monotonic() + 10
        while not subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                 text=True).stdout.strip():
            assert time.monotonic() < deadline, "the process did not start in the namespace"
            time.sleep(0.05)
        assert cli(["testbed", "down", "hdown"]) == 0
        assert sleeper.wait(10) == -signal.SIGTERM  # ended, not left running
        assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                        text=True).stdout
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(5)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
