"""Q1: the bounded queue between parse and inference, counted in batches, measured.

Two backends with one interface (``put``, ``get``, ``depth``, ``close``):

- ``LocalQ1``: in-process (a deque and a condition). ``put`` blocks while full;
  each put that had to wait is one backpressure event.
- ``ProcessQ1``: the queue lives in another process, split into ``shards``, as
  production's Ray shard actors: every put and get is an inter-process call that
  pickles its batch. ``put`` tries the shards round robin, one call each; when
  every shard answered "full" it counts a backpressure event and backs off (1 ms
  doubling to 10 ms). ``get`` sweeps the shards, one call each, and sleeps
  ``poll_interval_ms`` between empty sweeps. So the per-operation cost of the
  production queue can be reproduced on one machine. Order is FIFO per shard
  only, as in production.

- ``RayQ1``: the same sharded protocol on production's engine: each shard is a
  Ray actor holding a bounded deque, every put and get one actor call. How a
  batch travels (``items``): ``ref`` (the default, production's "ObjectRef mode",
  which its socket producer uses) puts the batch's array into the object store
  once and the item carries only its reference, which the getter resolves
  (numpy's zero-copy read); ``value`` sends the whole item through the shard by
  value, serialised into the object store on the put and again on the get. Ray starts locally for the run
  (small ``num_cpus``, no dashboard) unless an address is given (``auto`` or
  ``HOST:PORT``) or Ray is already up in this process.

No backend outlives its run: the local queue is an object of the run, the
queue process is started by the run and killed at ``close``, and the Ray shard
actors are anonymous, owned by the run and killed at ``close`` (production's
named detached actors can carry stale items into the next run; these cannot).

``Q1Sampler`` samples the depth every ``sample_interval_ms`` on its own thread.
Times are ``simstream.clock.now()`` Unix seconds; latencies in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from simstream.clock import now
from simstream.errors import UsageError

__all__ = ["LocalQ1", "ProcessQ1", "Q1Closed", "Q1Sampler", "Q1Stats", "RayQ1", "make_q1"]


class Q1Closed(Exception):
    """The queue was closed while a put was waiting."""


@dataclass
class Q1Stats:
    """Counters of one queue, over the run. Seconds."""

    puts: int = 0
    gets: int = 0
    backpressure_events: int = 0
    blocked_s: float = 0.0  # producer time spent waiting for room (sweeps of full shards, back-off)
    put_s: float = 0.0  # total put latency (blocked time and IPC included)
    get_s: float = 0.0  # total latency of gets that returned an item
    ipc_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "puts": self.puts, "gets": self.gets,
            "backpressure_events": self.backpressure_events, "blocked_s": self.blocked_s,
            "put_s": self.put_s,
            "put_mean_ms": self.put_s / self.puts * 1000 if self.puts else None,
            "get_mean_ms": self.get_s / self.gets * 1000 if self.gets else None,
            "ipc_calls": self.ipc_calls,
        }


class LocalQ1:
    """In-process bounded FIFO of ``maxsize`` items."""

    backend = "local"

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize {maxsize} is not >= 1")
        self.maxsize = maxsize
        self.stats = Q1Stats()
        self._items: deque[Any] = deque()
        self._cv = threading.Condition()
        self._closed = False

    def put(self, item: Any, timeout_s: float | None = None) -> float:
        """Append ``item``, waiting for room; returns the time it was enqueued.

        Raises Q1Closed if the queue closes first, TimeoutError after ``timeout_s``."""
        t0 = now()
        with self._cv:
            if len(self._items) >= self.maxsize:
                self.stats.backpressure_events += 1
                deadline = None if timeout_s is None else t0 + timeout_s
                while len(self._items) >= self.maxsize and not self._closed:
                    left = None if deadline is None else deadline - now()
                    if left is not None and left <= 0:
                        raise TimeoutError("Q1 full")
                    self._cv.wait(timeout=0.1 if left is None else min(left, 0.1))
                self.stats.blocked_s += now() - t0
            if self._closed:
                raise Q1Closed("Q1 closed")
            self._items.append(item)
            t = now()
            self.stats.puts += 1
            self.stats.put_s += t - t0
            self._cv.notify_all()
            return t

    def get(self, timeout_s: float) -> Any | None:
        """The oldest item, or None after ``timeout_s`` seconds (or when closed and empty)."""
        t0 = now()
        deadline = t0 + timeout_s
        with self._cv:
            while not self._items:
                left = deadline - now()
                if left <= 0 or self._closed:
                    return None
                self._cv.wait(timeout=left)
            item = self._items.popleft()
            self.stats.gets += 1
            self.stats.get_s += now() - t0
            self._cv.notify_all()
            return item

    def depth(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Drop what is left and wake every waiter; idempotent."""
        with self._cv:
            self._closed = True
            self._items.clear()
            self._cv.notify_all()


# --------------------------------------------------------------------------
# the process backend


def _serve(conns: list[Connection], shards: int, capacity: int) -> None:
    """The queue process: answers ("put", shard, blob) -> bool, ("get", shard) -> blob |
    None, ("depth",) -> int, ("close",) -> exit. Runs until a close or every peer is gone."""
    from multiprocessing.connection import wait

    queues: list[deque[bytes]] = [deque() for _ in range(shards)]
    live = list(conns)
    while live:
        for ready in wait(live):
            c: Any = ready
            try:
                msg = c.recv()
            except (EOFError, OSError):
                live.remove(c)
                continue
            op = msg[0]
            if op == "put":
                q = queues[msg[1]]
                if len(q) < capacity:
                    q.append(msg[2])
                    c.send(True)
                else:
                    c.send(False)
            elif op == "get":
                q = queues[msg[1]]
                c.send(q.popleft() if q else None)
            elif op == "depth":
                c.send(sum(len(q) for q in queues))
            elif op == "close":
                c.send(True)
                return


def _serve_fds(fds: list[int], shards: int, capacity: int) -> None:
    """Entry point of the queue process: serve on the inherited socketpair fds."""
    _serve([Connection(fd) for fd in fds], shards, capacity)


def _import_path() -> str:
    """PYTHONPATH for the queue process: where ``pipeline`` and ``simstream`` live."""
    root = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + rest if rest else "")


class _ShardedQ1:
    """Production's sharded queue protocol (module docstring), whatever holds the
    shards: put goes round robin, one call per shard, and when every shard answers
    full it counts a backpressure event and backs off (1 ms doubling to 10 ms);
    get sweeps the shards and sleeps ``poll_interval_s`` between empty sweeps.
    Subclasses say how one shard is asked (``_shard_put``, ``_shard_get``, both
    raising Q1Closed when the shard is gone) and how an item travels (``_pack``)."""

    BACKOFF_S = (0.001, 0.010)
    shards: int
    capacity: int
    maxsize: int
    poll_interval_s: float
    stats: Q1Stats
    _put_rr: int
    _get_rr: int
    _closed: bool

    def _setup(self, shards: int, capacity: int, poll_interval_ms: float) -> None:
        """This side's view of ``shards`` shards of ``capacity`` items: fresh counters."""
        self.shards = shards
        self.capacity = capacity
        self.maxsize = capacity * shards
        self.poll_interval_s = poll_interval_ms / 1000.0
        self.stats = Q1Stats()
        self._put_rr = 0
        self._get_rr = 0
        self._closed = False

    def _pack(self, item: Any) -> Any:
        return item

    def _unpack(self, payload: Any) -> Any:
        return payload

    def _shard_put(self, shard: int, payload: Any) -> bool:
        raise NotImplementedError

    def _shard_get(self, shard: int) -> Any | None:
        raise NotImplementedError

    def put(self, item: Any, timeout_s: float | None = None) -> float:
        """Place ``item`` on a shard; returns the time it was accepted.

        Raises Q1Closed when closed, TimeoutError after ``timeout_s``."""
        t0 = now()
        payload = self._pack(item)
        backoff = self.BACKOFF_S[0]
        while True:
            t_sweep = now()
            for _ in range(self.shards):
                if self._closed:
                    raise Q1Closed("Q1 closed")
                shard = self._put_rr
                self._put_rr = (self._put_rr + 1) % self.shards
                ok = self._shard_put(shard, payload)
                self.stats.ipc_calls += 1
                if ok:
                    t = now()
                    self.stats.puts += 1
                    self.stats.put_s += t - t0
                    return t
            # every shard full: production's producer backs off and counts it
            self.stats.backpressure_events += 1
            if timeout_s is not None and now() - t0 >= timeout_s:
                raise TimeoutError("Q1 full")
            time.sleep(backoff)
            # waiting for room: the sweep whose every shard answered "full", and the back-off
            # after it (the put's own cost is the rest: packing and the call that placed it)
            self.stats.blocked_s += now() - t_sweep
            backoff = min(backoff * 2, self.BACKOFF_S[1])

    def get(self, timeout_s: float) -> Any | None:
        """An item from the first non-empty shard of a sweep, or None after ``timeout_s``
        (or once the queue is gone)."""
        t0 = now()
        deadline = t0 + timeout_s
        while not self._closed:
            for _ in range(self.shards):
                shard = self._get_rr
                self._get_rr = (self._get_rr + 1) % self.shards
                try:
                    payload = self._shard_get(shard)
                except Q1Closed:
                    return None
                self.stats.ipc_calls += 1
                if payload is not None:
                    item = self._unpack(payload)
                    self.stats.gets += 1
                    self.stats.get_s += now() - t0
                    return item
            left = deadline - now()
            if left <= 0:
                return None
            time.sleep(min(self.poll_interval_s, left))
        return None


class ProcessQ1(_ShardedQ1):
    """Sharded queue in a separate process (module docstring).

    ``maxsize`` is the total; each shard holds ``ceil(maxsize / shards)``. One
    connection per role (producer, consumer, sampler), each used by one thread.
    Raises Q1Closed from ``put`` once closed.
    """

    backend = "process"

    def __init__(self, maxsize: int, shards: int = 4, poll_interval_ms: float = 10.0) -> None:
        if maxsize < 1 or shards < 1:
            raise ValueError("maxsize and shards must be >= 1")
        shards = min(shards, maxsize)
        self._setup(shards, -(-maxsize // shards), poll_interval_ms)
        # A plain child interpreter, not multiprocessing's spawn: spawn re-imports the
        # caller's __main__ (an unguarded script would run twice) and fork copies a
        # process full of threads. The pipes are socketpairs handed down as fds.
        pairs = [socket.socketpair() for _ in range(3)]
        child_fds = [p[1].fileno() for p in pairs]
        code = (
            "import sys; from simstream.pipeline.q1 import _serve_fds; "
            f"_serve_fds({child_fds!r}, {self.shards}, {self.capacity})"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=child_fds, stdin=subprocess.DEVNULL,
            cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": _import_path()},
        )
        for p in pairs:
            p[1].close()
        self._prod, self._cons, self._samp = (Connection(p[0].detach()) for p in pairs)
        self._locks = [threading.Lock() for _ in range(3)]

    def _call(self, which: int, msg: tuple[Any, ...]) -> Any:
        conn = (self._prod, self._cons, self._samp)[which]
        with self._locks[which]:
            conn.send(msg)
            return conn.recv()

    def _pack(self, item: Any) -> bytes:
        # every put serialises its batch, as an inter-process call must
        return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)

    def _unpack(self, payload: Any) -> Any:
        return pickle.loads(payload)

    def _shard_put(self, shard: int, payload: Any) -> bool:
        try:
            return bool(self._call(0, ("put", shard, payload)))
        except (EOFError, OSError):
            raise Q1Closed("Q1 process gone") from None

    def _shard_get(self, shard: int) -> Any | None:
        try:
            return self._call(1, ("get", shard))
        except (EOFError, OSError):
            raise Q1Closed("Q1 process gone") from None

    def depth(self) -> int:
        if self._closed:
            return 0
        try:
            return int(self._call(2, ("depth",)))
        except (EOFError, OSError):
            return 0

    def close(self) -> None:
        """Stop the queue process (its items die with it); idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception), self._locks[2]:
            self._samp.send(("close",))
            self._samp.poll(2.0)
        try:
            self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=2.0)
        for c in (self._prod, self._cons, self._samp):
            with contextlib.suppress(Exception):
                c.close()


# --------------------------------------------------------------------------
# the Ray backend


class _RayShard:
    """One Q1 shard as a Ray actor: a bounded deque. Calls are served one at a time
    (an actor's default), so each answer reflects every call before it."""

    def __init__(self, capacity: int, preload: tuple[str, ...] = ()) -> None:
        # the modules of the items the owner will put (named by it: this module does
        # not know its users): loaded now, while the run is set up, not when the first
        # batch arrives (a second or more on a busy machine, which the run's first puts
        # would carry as if Q1 were slow)
        for name in preload:
            importlib.import_module(name)
        self.capacity = capacity
        self.items: deque[Any] = deque()

    def put(self, item: Any) -> bool:
        if len(self.items) >= self.capacity:
            return False
        host = getattr(item, "host", None)
        if host is not None:
            # when the batch entered Q1, as the shard saw it (receiver and inference
            # actors of one run meet only here, so the shard is the one to say)
            host.t_q1_put_end = now()
        self.items.append(item)
        return True

    def get(self) -> Any:
        return self.items.popleft() if self.items else None

    def depth(self) -> int:
        return len(self.items)


def _ray() -> Any:
    """The ray module. Raises UsageError naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "queue.backend ray needs Ray: pip install 'simstream[ray]' (ray>=2.9)") from None
    return ray


ITEMS = ("ref", "value")


def _check_items(items: str) -> str:
    if items not in ITEMS:
        raise ValueError(f"items: {items!r} is not one of {', '.join(ITEMS)}")
    return items


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Raise UsageError unless something accepts TCP at ``address`` (HOST:PORT or
    ray://HOST:PORT) within ``timeout_s``: Ray itself retries an absent cluster for
    minutes before giving up."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot reach Ray at {address!r}: {exc}") from None


class RayQ1(_ShardedQ1):
    """Sharded queue of Ray actors (module docstring); the protocol of ``ProcessQ1``.

    ``maxsize`` is the total; each shard holds ``ceil(maxsize / shards)``.
    ``address``: None starts a local Ray instance (``num_cpus`` CPUs, quiet, no
    dashboard, its workers at the consumer's priority rather than Ray's nice 15)
    that ``close`` stops, unless ``RAY_ADDRESS`` is set; ``auto`` or
    ``HOST:PORT`` attaches to a running cluster (left running). If Ray is already initialised in this process it is used
    as it is and left running. Raises UsageError when Ray is missing or the
    address cannot be reached, Q1Closed from ``put`` once closed.
    """

    backend = "ray"

    def __init__(self, maxsize: int, shards: int = 4, poll_interval_ms: float = 10.0,
                 address: str | None = None, num_cpus: int = 1, items: str = "ref",
                 preload: tuple[str, ...] = ()) -> None:
        if maxsize < 1 or shards < 1:
            raise ValueError("maxsize and shards must be >= 1")
        self.items = _check_items(items)
        ray = _ray()
        self._ray = ray
        shards = min(shards, maxsize)
        self._setup(shards, -(-maxsize // shards), poll_interval_ms)
        self.owns_ray = False
        self.owns_actors = True
        self._actors: list[Any] = []
        if not ray.is_initialized():
            init_ray(address, num_cpus)
            self.owns_ray = True
        elif address is not None:
            logging.getLogger("pipeline.q1").warning(
                "Ray is already up in this process: Q1 uses it, not %s", address)
        self.address = ray.get_runtime_context().gcs_address
        # num_cpus=0: a shard only answers calls; it must not wait for a free CPU
        # slot on a small machine, nor take one from the cluster's real work
        actor = ray.remote(num_cpus=0, max_restarts=0)(_RayShard)
        self._actors = [actor.remote(self.capacity, tuple(preload)) for _ in range(self.shards)]
        try:
            ray.get([a.depth.remote() for a in self._actors], timeout=60)
        except Exception:
            self.close()
            raise

    @classmethod
    def view(cls, actors: list[Any], capacity: int, poll_interval_ms: float = 10.0,
             items: str = "ref") -> RayQ1:
        """Another handle on shard actors created elsewhere (a receiver or inference
        actor's side of the run's Q1): the same protocol, its own counters. Its
        ``close`` leaves the shards and Ray alone (their owner closes them)."""
        self = cls.__new__(cls)
        self.items = _check_items(items)
        self._ray = _ray()
        self._setup(len(actors), capacity, poll_interval_ms)
        self.owns_ray = False
        self.owns_actors = False
        self._actors = list(actors)
        self.address = None
        return self

    @property
    def actors(self) -> list[Any]:
        """The shard actors' handles (to give to other actors of the run)."""
        return list(self._actors)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return self._ray.get(method.remote(*args))
        except self._ray.exceptions.RayActorError:
            raise Q1Closed("Q1 shard actor gone") from None

    def _pack(self, item: Any) -> Any:
        # "ref": the array goes into the object store once, here (its buffer is free
        # again when this returns); the shard holds an item of a few hundred bytes.
        # A reference inside an object is not resolved by the actor call.
        data = getattr(item, "data", None)
        if self.items == "ref" and isinstance(data, np.ndarray):
            return dataclasses.replace(item, data=self._ray.put(data))
        return item

    def _unpack(self, payload: Any) -> Any:
        data = getattr(payload, "data", None)
        if isinstance(data, self._ray.ObjectRef):
            payload.data = self._ray.get(data)  # read-only, mapped from the object store
        return payload

    def _shard_put(self, shard: int, payload: Any) -> bool:
        # Ray serialises the item for the call (with "value", the whole batch)
        return bool(self._call(self._actors[shard].put, payload))

    def _shard_get(self, shard: int) -> Any | None:
        return self._call(self._actors[shard].get)

    def depth(self) -> int:
        if self._closed:
            return 0
        try:
            return int(sum(self._ray.get([a.depth.remote() for a in self._actors])))
        except Exception:
            return 0

    def close(self) -> None:
        """Kill the shard actors (their items die with them) and stop Ray if this
        queue started it; idempotent."""
        self._closed = True
        if self.owns_actors:
            for a in self._actors:
                with contextlib.suppress(Exception):
                    self._ray.kill(a, no_restart=True)
        self._actors = []
        if self.owns_ray:
            self.owns_ray = False
            with contextlib.suppress(Exception):
                self._ray.shutdown()


def init_ray(address: str | None, num_cpus: int) -> None:
    """``ray.init`` as a consumer run wants it (RayQ1's docstring: a quiet local
    instance of ``num_cpus`` CPUs at the consumer's priority, or the cluster at
    ``address`` / ``RAY_ADDRESS``). Raises UsageError when it cannot be started or
    reached."""
    ray = _ray()
    kwargs: dict[str, Any] = {
        "include_dashboard": False, "logging_level": logging.WARNING,
        "log_to_driver": False, "configure_logging": True,
    }
    # RAY_ADDRESS in the environment names a cluster as --ray-address does (so
    # programs that start the consumer can pass one without a flag)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # "local" starts a new instance even where `ray start` left a cluster
        # running on this host (a bare init would attach to that one)
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus
        # Ray starts its workers at nice 15, below everything else on the host: the
        # consumer's own actors (receiver, Q1 shards, inference) would then yield to
        # any other process (the run's emitter, unrelated work) and the run would
        # measure the scheduler, not the queue. A Ray the consumer starts for itself
        # runs them at the consumer's priority; a cluster's settings are its own.
        kwargs["_system_config"] = {"worker_niceness": 0}
    else:
        kwargs["address"] = address
    if address not in (None, "auto"):
        _probe(address)
    try:
        _init_local_or_join(ray, kwargs, local=address is None)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = "a local Ray instance" if address is None else f"Ray at {address!r}"
        raise UsageError(f"cannot start or reach {where}: {exc}") from None


def _init_local_or_join(ray: Any, kwargs: dict[str, Any], local: bool) -> None:
    """ray.init; a local instance whose raylet did not register within Ray's fixed
    30 s (a plain Exception from Ray: seen with a 2-core machine's load average at
    40) is shut down and started once more, said in the log."""
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001  (Ray raises a bare Exception for this)
        if not local or "timed out during startup" not in str(exc):
            raise
        logging.getLogger("pipeline.q1").warning(
            "the local Ray instance did not start within Ray's 30 s (%s); starting it once more",
            exc)
        with contextlib.suppress(Exception):
            ray.shutdown()
        ray.init(**kwargs)


BACKENDS = ("local", "process", "ray")


def make_q1(backend: str, maxsize: int, shards: int = 4, poll_interval_ms: float = 10.0,
            ray_address: str | None = None, ray_num_cpus: int = 1,
            ray_items: str = "ref", preload: tuple[str, ...] = ()) -> Any:
    """The Q1 backend named by ``backend`` (local | process | ray)."""
    if backend == "local":
        return LocalQ1(maxsize)
    if backend == "process":
        return ProcessQ1(maxsize, shards, poll_interval_ms)
    if backend == "ray":
        return RayQ1(maxsize, shards, poll_interval_ms, ray_address, ray_num_cpus, ray_items,
                     preload)
    raise ValueError(f"queue.backend: {backend!r} is not one of {', '.join(BACKENDS)}")


class Q1Sampler:
    """Calls ``on_sample(t, depth, maxsize)`` every ``interval_s`` until ``stop()``."""

    def __init__(self, q1: Any, interval_s: float, on_sample: Callable[[float, int, int], None],
                 clock: Callable[[], float] = now) -> None:
        self.q1 = q1
        self.interval_s = interval_s
        self.on_sample = on_sample
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="q1-sampler", daemon=True)

    def start(self) -> Q1Sampler:
        self._thread.start()
        return self

    def sample_once(self) -> None:
        self.on_sample(self.clock(), self.q1.depth(), self.q1.maxsize)

    def _run(self) -> None:
        # fixed-rate schedule: a slow sample does not shift the ones after it
        next_t = self.clock()
        while not self._stop.is_set():
            self.sample_once()
            next_t += self.interval_s
            delay = next_t - self.clock()
            if delay < 0:
                next_t = self.clock()
                delay = 0
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
