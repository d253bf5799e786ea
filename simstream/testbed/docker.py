"""``simstream testbed docker up|status|down``: the compose testbed (containers as
hosts) without writing compose files, and link faults at the container level.

``up`` runs one experiment with docker-compose.yml: the consumer and the two
emitters (ranks 0 and 1, each shaping its own eth0 with tbf), faults at the
times asked (``--fault KIND:SERVICE:AT:FOR``, AT seconds after both emitters'
first message), then the diagnosis; it copies the
run directory out (``--out``) and takes everything down again, unless
``--keep``. Faults, each undone after FOR seconds:

- ``cut``: the container is disconnected from the compose network and connected
  again. Its eth0 disappears and comes back as a new device; the emitter's
  testbed notices and puts the phase's qdisc on it again. A cut longer than the
  emitters' ``--dead-link-ms`` (SIMSTREAM_DEAD_LINK_MS, 1000 ms) is a real TCP
  disconnect and reconnect: the emitter drops the connection whose peer stopped
  answering (messages in flight are lost, recorded as such, never sent twice)
  and connects again once the link is back; the consumer finds the old
  connection dead by keepalive. Both count in summary.json ``receiver``
  (connections, disconnects);
- ``pause``: the container is frozen (cgroup freezer: ``docker pause``) and
  thawed (``docker unpause``). Its kernel is not frozen: the connection stays
  up (keepalives answered, bytes already in the socket buffer still go), the
  emitter just stops and resumes; nothing is lost;
- ``kill``: the container is killed (``docker kill``, SIGKILL) and started
  again (``docker start``); its command starts from the beginning: a new
  emitter run with a new epoch (``/simstream/epoch``), sending from sequence
  number 0 again and appending to its emit log (``--append-log``). The
  consumer accounts each (rank, epoch) as its own stream: the new life's
  messages are not duplicates, the old life's messages still in flight at the
  kill are delivered (counted once) or lost, gaps in ``lost`` and the old
  life's tail in the diagnosis's ``lost_at_tail`` (as far as the log had
  flushed them: an attempt that had not ended at the SIGKILL has no record).
  The killed emitter's connection ends (its kernel closes the socket), the
  restarted one is a new connection (summary.json ``receiver``).

The same faults can be scripted in the profile's ``faults`` section as
``link_cut``, ``host_pause`` and ``host_kill`` (``replica: N`` for service
``emitter-N``, ``at_s`` on the same clock, ``duration_s`` or
``restart_after_s`` for FOR): ``up`` reads them from the profile (a bundled name
or a file on this host) and runs them with any ``--fault`` options, on the same
runner. A profile that is a file on this host is mounted read-only into the
containers (``PROFILE_MOUNT``) and used there, so the containers run the very
profile whose faults the driver scripts.

Cleanup: the compose project ``simstream-NAME`` is taken down (containers,
network, volume) after ``up`` ends, fails or is interrupted (SIGINT, SIGTERM),
and ``down`` removes whatever still carries the project's label. Every docker
call has a time limit, so a stuck engine is an error, never a hang.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from simstream.errors import UsageError
from simstream.profile import Profile, ProfileError, find_profile, load_profile

__all__ = ["Fault", "Stack", "compose_client", "docker", "engine_problem", "parse_fault",
           "profile_faults", "read_profile_faults"]

SERVICES = ("consumer", "emitter-0", "emitter-1")
FAULT_KINDS = ("cut", "pause", "kill")
#: the profile's container-fault kinds (profile.HOST_FAULT_KINDS) -> --fault's
PROFILE_FAULT_KINDS = {"link_cut": "cut", "host_pause": "pause", "host_kill": "kill"}
RUN_DIR = "/runs/testbed"
#: where a profile file of this host is mounted in every container
PROFILE_MOUNT = "/simstream/profile.yaml"
#: a docker CLI call that takes longer than this is an error (the engine is stuck)
CALL_TIMEOUT_S = 120.0
#: the emitters must have sent their first message this long after `up`
START_TIMEOUT_S = 120.0
LABEL = "com.docker.compose.project"


class DockerError(Exception):
    """The engine or the compose client failed; the message says which call and why."""


@dataclass(frozen=True)
class Fault:
    kind: str
    service: str
    at_s: float
    for_s: float

    def describe(self) -> str:
        return f"{self.kind} {self.service} at +{self.at_s:g} s for {self.for_s:g} s"


def parse_fault(text: str) -> Fault:
    """``KIND:SERVICE:AT:FOR`` (seconds from the emitters' start). Raises UsageError."""
    parts = text.split(":")
    if len(parts) != 4:
        raise UsageError(f"--fault {text!r}: expected KIND:SERVICE:AT:FOR, e.g. cut:emitter-1:3:2")
    kind, service, at, dur = parts
    if kind not in FAULT_KINDS:
        raise UsageError(f"--fault {text!r}: kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
    if service not in SERVICES:
        raise UsageError(f"--fault {text!r}: service {service!r} is not one of "
                         f"{', '.join(SERVICES)}")
    try:
        at_s, for_s = float(at), float(dur)
    except ValueError:
        raise UsageError(f"--fault {text!r}: AT and FOR are seconds") from None
    if at_s < 0 or for_s <= 0:
        raise UsageError(f"--fault {text!r}: AT must be >= 0 and FOR > 0")
    return Fault(kind, service, at_s, for_s)


def profile_faults(profile: Profile) -> list[Fault]:
    """The profile's container faults (link_cut, host_pause, host_kill) as the
    schedule the equivalent ``--fault`` options make; message-level faults are the
    emitter's and are left out. Raises UsageError for a replica with no container."""
    emitters = [s for s in SERVICES if s.startswith("emitter-")]
    out = []
    for i, f in enumerate(profile.faults):
        if not f.is_host_fault:
            continue
        service = f"emitter-{f.replica}"
        if service not in emitters:
            raise UsageError(f"profile {profile.name!r} faults[{i}] {f.kind}: replica "
                             f"{f.replica} has no container; the compose testbed's emitters "
                             f"are {', '.join(emitters)} (replica 0..{len(emitters) - 1})")
        assert f.at_s is not None  # the profile's model requires it of a host fault
        out.append(Fault(PROFILE_FAULT_KINDS[f.kind], service, float(f.at_s), f.hold_s))
    return out


def read_profile_faults(profile_arg: str) -> tuple[list[Fault], str | None]:
    """The container faults of ``--profile`` (a bundled name or a file on this host),
    and a note when the profile cannot be read here (a path inside the image only).
    Raises ProfileError for an invalid profile, UsageError for a bad replica."""
    try:
        path = find_profile(profile_arg)
    except ProfileError:
        return [], (f"profile {profile_arg!r} is not a bundled name or a file on this host "
                    f"(a path inside the image?): its faults section is not read here; "
                    f"only --fault options run")
    return profile_faults(load_profile(path)), None


def profile_mount_override(profile_file: Path) -> str:
    """A compose override that mounts ``profile_file`` (a file on this host)
    read-only at PROFILE_MOUNT in every service that reads the profile."""
    # the long syntax (a path may hold a colon); JSON is YAML, so no quoting rules
    mount = json.dumps({"type": "bind", "source": str(profile_file.resolve()),
                        "target": PROFILE_MOUNT, "read_only": True})
    return "services:\n" + "".join(f"  {s}:\n    volumes: [{mount}]\n" for s in SERVICES)


def _run(argv: list[str], *, timeout: float = CALL_TIMEOUT_S, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise DockerError(f"{' '.join(argv[:4])}: no answer within {timeout:g} s") from None
    except FileNotFoundError:
        raise DockerError(f"{argv[0]}: not installed") from None
    if check and cp.returncode != 0:
        why = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
        raise DockerError(f"{' '.join(argv[:4])}: {why[-1] if why else f'exit {cp.returncode}'}")
    return cp


def engine_problem(timeout: float = 20.0) -> str | None:
    """Why the Docker engine cannot be used here, or None when it answers."""
    if shutil.which("docker") is None:
        return "no docker client (apt-get install docker.io)"
    try:
        cp = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the Docker engine did not answer within {timeout:g} s"
    if cp.returncode != 0:
        lines = cp.stderr.strip().splitlines()
        return f"the Docker engine does not answer: {lines[-1] if lines else cp.returncode}"
    return None


def compose_client() -> list[str] | None:
    """`docker compose` (the v2 plugin) or `docker-compose` (v1), whichever is here."""
    if shutil.which("docker") is not None:
        try:
            probe = subprocess.run(["docker", "compose", "version"], capture_output=True,
                                   text=True, timeout=30)
            if probe.returncode == 0:
                return ["docker", "compose"]
        except subprocess.TimeoutExpired:
            pass
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def default_compose_file() -> Path:
    """./docker-compose.yml when there is one, else the copy bundled with simstream."""
    here = Path("docker-compose.yml")
    if here.is_file():
        return here
    from importlib.resources import files

    return Path(str(files("simstream.testbed").joinpath("docker-compose.yml")))


class Stack:
    """One compose project: ``simstream-NAME`` from ``compose_file``."""

    def __init__(self, name: str, compose_file: Path, env: dict[str, str] | None = None,
                 extra_files: list[Path] | None = None) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,40}", name):
            raise UsageError(f"--name {name!r}: lower-case letters, digits, - and _ only")
        client = compose_client()
        if client is None:
            raise UsageError("neither `docker compose` nor docker-compose is installed "
                             "(apt-get install docker-compose)")
        if not compose_file.is_file():
            raise UsageError(f"--file {compose_file}: no such file")
        self.project = f"simstream-{name}"
        self.compose_file = compose_file
        self.env = {**os.environ, **(env or {})}
        self._base = [*client, "-p", self.project, "-f", str(compose_file)]
        for extra in extra_files or []:
            self._base += ["-f", str(extra)]

    def compose(self, *args: str, timeout: float = CALL_TIMEOUT_S,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self._base, *args], timeout=timeout, check=check, env=self.env)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        if not cid:
            raise DockerError(f"no container for service {service}")
        return cid.splitlines()[0]

    @property
    def network(self) -> str:
        return f"{self.project}_stream"

    def state(self, cid: str) -> dict[str, Any]:
        out = _run(["docker", "inspect", "--format", "{{json .State}}", cid]).stdout
        state: dict[str, Any] = json.loads(out)
        return state

    def leftovers(self) -> dict[str, list[str]]:
        """What still carries the project's label: containers, networks, volumes."""
        label = f"label={LABEL}={self.project}"
        return {
            "containers": _run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "networks": _run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": _run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        }

    def down(self) -> dict[str, list[str]]:
        """Everything of the project removed; returns what was still left (empty lists)."""
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False,
                     timeout=CALL_TIMEOUT_S)
        left = self.leftovers()
        # what compose did not remove (e.g. a container it no longer knows)
        if left["containers"]:
            _run(["docker", "rm", "-f", "-v", *left["containers"]], check=False)
        if left["networks"]:
            _run(["docker", "network", "rm", *left["networks"]], check=False)
        if left["volumes"]:
            _run(["docker", "volume", "rm", "-f", *left["volumes"]], check=False)
        return self.leftovers()

    # -- faults ------------------------------------------------------------
    def apply(self, fault: Fault) -> None:
        cid = self.container(fault.service)
        if fault.kind == "cut":
            _run(["docker", "network", "disconnect", "-f", self.network, cid])
        elif fault.kind == "pause":
            _run(["docker", "pause", cid])
        else:
            _run(["docker", "kill", cid])

    def undo(self, fault: Fault) -> None:
        cid = self.container(fault.service)
        if fault.kind == "cut":
            _run(["docker", "network", "connect", "--alias", fault.service, self.network, cid])
        elif fault.kind == "pause":
            _run(["docker", "unpause", cid])
        else:
            _run(["docker", "start", cid])


class _FaultRunner:
    """Applies each fault at its time from ``t0`` and undoes it FOR seconds after the
    apply returned: a slow docker call (a network disconnect can take seconds on a
    loaded machine) moves the undo later, never shortens the fault. One thread per
    service, taking that service's faults in time order: a slow docker call delays
    only the faults of its own container, and two faults of one container never
    overlap (a kill waits for the pause before it to be undone). ``stop()`` undoes at
    once whatever is still applied. Records every step."""

    def __init__(self, stack: Stack, faults: list[Fault], t0: float) -> None:
        self.stack, self.t0, self.faults = stack, t0, list(faults)
        self.active: list[Fault] = []
        self.records: list[dict[str, Any]] = []
        self._done: set[int] = set()  # indices of faults whose steps are over
        self._halt = threading.Event()
        self._lock = threading.Lock()
        order = sorted(range(len(self.faults)), key=lambda i: self.faults[i].at_s)
        services = dict.fromkeys(self.faults[i].service for i in order)
        self._threads = [threading.Thread(
            target=self._run_service, args=([i for i in order if self.faults[i].service == s],),
            daemon=True, name=f"docker-faults-{s}") for s in services]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _run_service(self, indices: list[int]) -> None:
        for i in indices:
            fault = self.faults[i]
            try:
                if self._halt.wait(max(0.0, self.t0 + fault.at_s - time.time())):
                    return
                if not self._step("apply", fault):
                    continue
                undo_at = time.time() + fault.for_s  # in effect from when the apply returned
                if self._halt.wait(max(0.0, undo_at - time.time())):
                    return
                self._step("undo", fault)
            finally:
                with self._lock:
                    self._done.add(i)

    def pending(self, service: str, kind: str) -> bool:
        """Whether a fault of this kind on this service has steps still to come (or
        running), e.g. a killed container that is to be started again."""
        with self._lock:
            return any(f.service == service and f.kind == kind and i not in self._done
                       for i, f in enumerate(self.faults))

    def _step(self, what: str, fault: Fault) -> bool:
        """One step; False when it failed (an apply that failed has nothing to undo)."""
        with self._lock:
            if what == "undo" and fault not in self.active:
                return False
        t = time.time()
        try:
            (self.stack.apply if what == "apply" else self.stack.undo)(fault)
            error = None
        except DockerError as e:
            error = str(e)
        with self._lock:
            if what == "apply" and error is None:
                self.active.append(fault)
            elif what == "undo" and fault in self.active:
                self.active.remove(fault)
            self.records.append({"t": t, "t_done": time.time(), "step": what, "kind": fault.kind,
                                 "service": fault.service, "error": error})
            self.records.sort(key=lambda r: r["t"])
        return error is None

    def stop(self) -> None:
        """Stop the schedule and undo what is applied: reconnect a cut container,
        thaw a paused one; a killed one is left down (the stack is about to be
        taken down, and starting it again would only start another emitter run)."""
        self._halt.set()
        for t in self._threads:
            t.join(timeout=2 * CALL_TIMEOUT_S)
        for fault in list(self.active):
            if fault.kind != "kill":
                self._step("undo", fault)


def _first_messages(stack: Stack, consumer: str, *, deadline: float) -> float:
    """When both emitters' logs hold their first record (the fault clock's zero).
    Read through the consumer's container, which shares the run volume."""
    logs = " ".join(f"{RUN_DIR}/emit-rank{r}.jsonl" for r in (0, 1))
    while time.time() < deadline:
        cp = _run(["docker", "exec", consumer, "sh", "-c",
                   f"for f in {logs}; do test -s $f || exit 1; done"], check=False, timeout=30)
        if cp.returncode == 0:
            return time.time()
        if stack.state(consumer).get("Status") != "running":
            raise DockerError("the consumer exited before both emitters sent")
        time.sleep(0.2)
    raise DockerError(f"the emitters sent nothing within {START_TIMEOUT_S:g} s of up")


def run_experiment(stack: Stack, faults: list[Fault], out: Path | None, *,
                   timeout_s: float, echo: Any = click.echo) -> dict[str, Any]:
    """Up, faults, wait, diagnose, copy out. Returns the result (also ``OUT/docker.json``).
    Raises DockerError; the caller takes the stack down."""
    t_up = time.time()
    stack.compose("up", "-d", "--no-build", *SERVICES, timeout=CALL_TIMEOUT_S)
    ids = {s: stack.container(s) for s in SERVICES}
    t0 = _first_messages(stack, ids["consumer"], deadline=time.time() + START_TIMEOUT_S)
    echo(f"up: {', '.join(SERVICES)} ({stack.project}); both emitters sending "
         f"{t0 - t_up:.1f} s after up")
    runner = _FaultRunner(stack, faults, t0)
    runner.start()
    exit_codes: dict[str, int] = {}
    deadline = t0 + timeout_s
    try:
        while len(exit_codes) < len(SERVICES):
            if time.time() > deadline:
                raise DockerError(f"the experiment did not end within {timeout_s:g} s")
            for s, cid in ids.items():
                if s in exit_codes:
                    continue
                st = stack.state(cid)
                # a container killed by a fault, or about to be, is started again
                if st.get("Status") == "exited" and not runner.pending(s, "kill"):
                    exit_codes[s] = int(st.get("ExitCode", -1))
                    echo(f"{s}: exited {exit_codes[s]} after {time.time() - t0:.1f} s")
            time.sleep(0.5)
    finally:
        runner.stop()
    diag = stack.compose("run", "--rm", "--no-deps", "diagnose", timeout=CALL_TIMEOUT_S,
                         check=False)
    result: dict[str, Any] = {"project": stack.project, "exit_codes": exit_codes,
                              "faults": runner.records, "diagnose_exit": diag.returncode,
                              "diagnose": diag.stdout[-4000:], "wall_s": time.time() - t_up}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        _run(["docker", "cp", f"{ids['consumer']}:{RUN_DIR}", str(out)])
        (out / "docker.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@click.group("docker")
def docker() -> None:
    """The compose testbed: containers as hosts, kernel-shaped links, container faults."""


@docker.command("up")
@click.option("--name", default="default", show_default=True,
              help="compose project simstream-NAME")
@click.option("--file", "compose_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="compose file (default ./docker-compose.yml, else the bundled one)")
@click.option("--profile", default="bursty", show_default=True,
              help="bundled profile name, or a path inside the image; its container faults "
                   "(link_cut, host_pause, host_kill) run with any --fault")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=10.0,
              show_default=True, help="seconds each emitter sends")
@click.option("--transport", type=click.Choice(["zmq", "nng", "tcp"]), default="zmq",
              show_default=True)
@click.option("--idle-timeout", type=click.FloatRange(0, min_open=True), default=10.0,
              show_default=True, help="the consumer stops this long after the last message")
@click.option("--fault", "faults", multiple=True, metavar="KIND:SERVICE:AT:FOR",
              help="cut, pause or kill SERVICE (consumer, emitter-0, emitter-1) AT seconds "
                   "after both emitters' first message, for FOR seconds; repeatable")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="copy the run directory here (default runs/docker-<timestamp>)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=600.0,
              show_default=True, help="the experiment ends with an error after this")
@click.option("--image", default="simstream:latest", show_default=True)
@click.option("--keep", is_flag=True, help="leave the stack (exited containers, volume) "
                                           "for inspection; `down` removes it")
def up(name: str, compose_file: Path | None, profile: str, duration: float, transport: str,
       idle_timeout: float, faults: tuple[str, ...], out: Path | None, timeout_s: float,
       image: str, keep: bool) -> None:
    """Run one experiment on the compose testbed, copy its run directory out, take it down.

    Container faults come from the profile's faults section (link_cut, host_pause,
    host_kill) and from --fault, run together on one schedule."""
    scripted, note = read_profile_faults(profile)
    parsed = [*scripted, *(parse_fault(f) for f in faults)]
    if note:
        click.echo(f"warning: {note}", err=True)
    for f in scripted:
        click.echo(f"fault from the profile: {f.describe()}")
    problem = engine_problem()
    if problem:
        raise click.ClickException(problem)
    if _run(["docker", "image", "inspect", image], check=False).returncode != 0:
        raise click.ClickException(f"no image {image}: build it with `make image`")
    extra: list[Path] = []
    tmp: str | None = None
    in_image = profile
    if Path(profile).is_file():
        # a file of this host: the containers read the same file, mounted
        tmp = tempfile.mkdtemp(prefix="simstream-compose-")
        extra.append(Path(tmp) / "profile-mount.yml")
        extra[0].write_text(profile_mount_override(Path(profile)))
        in_image = PROFILE_MOUNT
        click.echo(f"profile {profile}: mounted read-only at {PROFILE_MOUNT} in the containers")
    env = {"SIMSTREAM_PROFILE": in_image, "SIMSTREAM_DURATION": f"{duration:g}",
           "SIMSTREAM_TRANSPORT": transport, "SIMSTREAM_IDLE_S": f"{idle_timeout:g}",
           "SIMSTREAM_IMAGE": image}
    try:
        _up(name, compose_file, env, extra, out, parsed, timeout_s, keep)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _up(name: str, compose_file: Path | None, env: dict[str, str], extra: list[Path],
        out: Path | None, parsed: list[Fault], timeout_s: float, keep: bool) -> None:
    stack = Stack(name, compose_file or default_compose_file(), env, extra)
    if out is None:
        out = Path("runs") / f"docker-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists():
        raise UsageError(f"--out {out}: already exists")
    stack.down()  # a previous run's remains under the same name

    def on_signal(sig: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    ok = False
    try:
        result = run_experiment(stack, parsed, out, timeout_s=timeout_s)
        ok = True
    except DockerError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: taking the stack down", err=True)
        raise SystemExit(130) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if not (keep and ok):
            left = stack.down()
            if any(left.values()):
                click.echo(f"warning: left behind: {left}", err=True)
    click.echo(result["diagnose"].rstrip())
    for rec in result["faults"]:
        click.echo(f"fault: {rec['step']} {rec['kind']} {rec['service']} at "
                   f"{rec['t']:.3f}" + (f" FAILED: {rec['error']}" if rec["error"] else ""))
    click.echo(f"run directory: {out}")
    bad = {s: c for s, c in result["exit_codes"].items() if c != 0}
    if bad or result["diagnose_exit"] != 0:
        click.echo(f"error: exit codes {bad}, diagnose {result['diagnose_exit']}", err=True)
        raise SystemExit(1)


@docker.command("status")
@click.option("--name", default="default", show_default=True)
@click.option("--file", "compose_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None)
def status(name: str, compose_file: Path | None) -> None:
    """The project's containers (with their state), networks and volumes."""
    problem = engine_problem()
    if problem:
        raise click.ClickException(problem)
    stack = Stack(name, compose_file or default_compose_file())
    left = stack.leftovers()
    for cid in left["containers"]:
        st = stack.state(cid)
        nm = _run(["docker", "inspect", "--format", "{{.Name}}", cid]).stdout.strip()
        click.echo(f"container {nm.lstrip('/')}: {st.get('Status')}")
    for kind in ("networks", "volumes"):
        for x in left[kind]:
            click.echo(f"{kind[:-1]} {x}")
    if not any(left.values()):
        click.echo(f"{stack.project}: nothing up")


@docker.command("down")
@click.option("--name", default="default", show_default=True)
@click.option("--file", "compose_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None)
def down(name: str, compose_file: Path | None) -> None:
    """Remove the project's containers, network and volume; exit 1 if any remain."""
    problem = engine_problem()
    if problem:
        raise click.ClickException(problem)
    stack = Stack(name, compose_file or default_compose_file())
    left = stack.down()
    if any(left.values()):
        click.echo(f"error: still there: {left}", err=True)
        raise SystemExit(1)
    click.echo(f"{stack.project}: down, nothing left")
