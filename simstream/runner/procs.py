"""Child processes of a run: the consumer and the emitter, started as separate
programs (each with its own interpreter and GIL, as on a real beamline) and
always stopped, whatever way the run ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports on ``host`` that nothing listens on right now. Raises
    RuntimeError if that many cannot be found."""
    ports: list[int] = []
    for _ in range(100 * n):
        p = free_port(host)
        if p not in ports:
            ports.append(p)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"could not find {n} distinct free ports")


def is_listening(port: int) -> bool:
    """True when some socket on this host LISTENs on ``port`` (read from /proc, so
    nothing connects to the consumer just to find out)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


# a child started by ``Child`` finds its parent's pid here and dies with it
PARENT_PID_ENV = "SIMSTREAM_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the runner: stop the run in order."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def orderly_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread, once: later ones
    are only recorded (in the yielded list), so the stop in progress (children
    asked to finish, records written, the testbed removed) is not itself cut short."""
    got: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        got.append(signum)
        if len(got) == 1:
            raise Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def die_with_parent_from_env() -> None:
    """In a child started by ``Child``: get SIGTERM when the parent dies (Linux
    PR_SET_PDEATHSIG), so a runner killed with SIGKILL leaves no consumer or emitter
    behind. SIGTERM is an orderly stop for both. No-op elsewhere."""
    parent = os.environ.pop(PARENT_PID_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def simstream_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "simstream", *args]


class Child:
    """One child program with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_PID_ENV: str(os.getpid())})
        # its own process group: a terminal's Ctrl-C reaches the runner only, which
        # stops the children in order (they die with it if it is killed: see
        # die_with_parent_from_env)
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, process_group=0,
        )

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def interrupt(self, grace_s: float = 30.0, *, as_planned: bool = False) -> int:
        """SIGINT (the child finishes and writes its records), then SIGKILL after grace_s.

        ``as_planned``: the stop is the runner's normal way of ending this child, so
        its orderly exit on that SIGINT (status 130) counts as success (0)."""
        sent = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            sent = True
            if self.wait(grace_s) is None:
                self.proc.kill()
                self.proc.wait(5)
        rc = int(self.proc.returncode)
        if as_planned and sent and rc in (128 + signal.SIGINT, -signal.SIGINT):
            return 0
        return rc

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (an orderly stop: the child finishes and writes its records), then
        SIGKILL after ``grace_s``; always reaped."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            if self.wait(grace_s) is None:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child appended to the list is stopped on the way out (normal exit,
    exception, Ctrl-C)."""
    procs: list[Child] = []
    try:
        yield procs
    finally:
        for c in reversed(procs):
            c.stop()


def wait_until(pred: object, timeout_s: float, what: str, poll_s: float = 0.05,
               alive: Child | None = None) -> None:
    """Poll ``pred()`` until true; raise RuntimeError naming ``what`` on timeout or
    when ``alive`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        if alive is not None and alive.returncode is not None:
            raise RuntimeError(
                f"{alive.name} exited ({alive.returncode}) before {what}:\n{alive.tail()}"
            )
        time.sleep(poll_s)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def settled(path: Path, quiet_s: float) -> Iterator[bool]:
    """A generator answering, each time it is advanced, whether ``path`` has not
    grown for ``quiet_s`` seconds (the consumer has received everything)."""
    last_size = -1
    since = time.monotonic()
    while True:
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        if size != last_size:
            last_size, since = size, time.monotonic()
        yield time.monotonic() - since >= quiet_s


class FileTail:
    """The complete lines another process has appended to a file since the last
    call (a row being written is taken next time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.lines = 0  # complete lines so far
        self.last = b""  # the last complete line, without its newline

    def read(self) -> bytes:
        """The new complete lines (bytes, each ending in a newline)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return b""
        end = chunk.rfind(b"\n") + 1
        if not end:
            return b""
        new = chunk[:end]
        self._offset += end
        self.lines += new.count(b"\n")
        self.last = new[new.rfind(b"\n", 0, end - 1) + 1:end - 1]
        return new


class LineCount:
    """Lines of a file that another process appends to, counted incrementally
    (each call reads only what was added since the last)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tail = FileTail(path)

    def __call__(self) -> int:
        self._tail.read()
        return self._tail.lines
