"""Live control of a running emitter: ``simstream emit --control HOST:PORT``.

Two parts, in Toxiproxy's spirit (a proxy whose conditions a test changes
through a small HTTP API while traffic flows):

- :class:`LiveConditions`: the state the schedule and the engine read as they
  plan each message: network fields set live (on top of the profile's base
  and phase conditions), a live message rate, a pause, and faults waiting for
  the next message of a rank. No I/O; the engine's trio thread owns it.
- :class:`ControlServer`: a stdlib HTTP server in a thread that turns JSON
  requests into calls on the trio thread (``trio.from_thread``), so every
  change lands between two messages, never in the middle of one.

The API (JSON bodies and answers; errors are ``{"error": "..."}`` with 400 for
bad input, 404 for an unknown path, 503 once the run is over):

=========  ============  ====================================================
method     path          what it does
=========  ============  ====================================================
GET        /status       conditions in force now, live changes, counters
GET        /network      the network conditions in force now
POST       /network      ``{"latency_ms": 20, "bandwidth_mbps": 50}``: set
                         fields live (``null`` gives a field back to the
                         profile); keys as in the profile's ``network``
POST       /faults       ``{"kind": "reset", "rank": 0}``: the fault strikes
                         the next message of that rank (every rank if no
                         ``rank``); the fault's own keys as in the profile
POST       /rate         ``{"rate_hz": 50}``: messages per second per rank
                         from the next message on; ``null`` goes back to the
                         timeline's rates
POST       /pause        no new message is offered (queued ones still go);
                         the schedule resumes shifted by the pause
POST       /resume       ends a pause
=========  ============  ====================================================

Changes take effect on the next message a rank plans: one already planned
and waiting for its send time keeps the conditions it was planned with.

:class:`ControlClient` is the same API from Python (stdlib only); the
``simstream_emitter`` fixture's handle uses it.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib import error as urlerror
from urllib import request as urlrequest

from simstream.errors import UsageError

__all__ = [
    "ControlClient",
    "ControlError",
    "ControlServer",
    "LiveConditions",
    "parse_control_address",
]

#: the biggest request body the server reads (bytes)
MAX_BODY_BYTES = 64 * 1024
#: faults that may wait for a rank's next message; more is a runaway client
MAX_PENDING_FAULTS = 1000
#: the counters GET /status gives (totals over the ranks)
COUNTERS = ("delivered", "cut", "lost", "nbytes", "queued", "attempts", "blocked_s")
#: keys that choose *when* a profile fault strikes; an injected fault strikes now
_TRIGGER_KEYS = ("at_message", "every_messages", "at_s", "every_s", "probability")


class ControlError(ValueError):
    """A control request is invalid; ``str()`` says what and why (HTTP 400)."""


def _problems(err: Exception) -> str:
    problems = getattr(err, "problems", None)
    return "; ".join(problems) if problems else str(err)


class LiveConditions:
    """What the control channel has changed; read by the schedule and the engine.

    ``network``: the live network fields (a ``NetworkOverride``) or None.
    ``rate_hz``: a live rate (messages/s per rank) or None (the timeline's).
    ``ranks``: the emitter's rank ids, so faults can wait for a rank that has
    not started yet (the engine adds them at the start anyway).
    Methods raise :class:`ControlError` for bad input. Not thread-safe: call
    them on the emitter's trio thread (the server does).
    """

    def __init__(self, ranks: list[int] | None = None) -> None:
        import trio

        self.network: Any = None  # NetworkOverride | None
        self.rate_hz: float | None = None
        self.paused = False
        self._resumed = trio.Event()
        self._resumed.set()
        # rank (None: every rank) -> fault specs waiting for that rank's next message
        self._pending: dict[int, deque[Any]] = {}
        self._ranks: list[int] = []
        self._add_ranks(ranks or [])
        self.injected = 0
        self.changes = 0
        # set by the engine when the run starts (attach)
        self._status: Callable[[], dict[str, Any]] | None = None
        self.finished = False

    # -- the engine's side

    def attach(self, ranks: list[int], status: Callable[[], dict[str, Any]]) -> None:
        """The run's rank ids and a function giving its counters (called by the engine)."""
        self._add_ranks(ranks)
        self._status = status

    def _add_ranks(self, ranks: list[int]) -> None:
        for r in ranks:
            if r not in self._pending:
                self._ranks.append(r)
                self._pending[r] = deque()

    def take_faults(self, rank: int) -> list[Any]:
        """The fault specs injected for ``rank``'s next message (removed from the queue)."""
        q = self._pending.get(rank)
        if not q:
            return []
        out = list(q)
        q.clear()
        return out

    async def wait_resumed(self) -> float:
        """Wait while paused; returns the seconds waited (trio time)."""
        import trio

        if not self.paused:
            return 0.0
        t = trio.current_time()
        await self._resumed.wait()
        return trio.current_time() - t

    # -- the API's side

    def set_network(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge ``fields`` into the live network (None clears one). Returns the live fields."""
        from simstream.profile import NetworkOverride

        if not isinstance(fields, dict) or not fields:
            raise ControlError("expected a JSON object of network fields, e.g. "
                               '{"latency_ms": 20}; allowed: '
                               + ", ".join(NetworkOverride.model_fields))
        unknown = sorted(set(fields) - set(NetworkOverride.model_fields))
        if unknown:
            raise ControlError(f"unknown network field(s) {', '.join(unknown)}; allowed: "
                               + ", ".join(NetworkOverride.model_fields))
        current = self.network.model_dump() if self.network is not None else {}
        current.update(fields)
        try:
            new = NetworkOverride.model_validate(current)
        except ValueError as e:
            raise ControlError(_validation_text("network", e)) from None
        self.network = new if any(v is not None for v in new.model_dump().values()) else None
        self.changes += 1
        return self.live_network()

    def live_network(self) -> dict[str, Any]:
        if self.network is None:
            return {}
        return {k: v for k, v in self.network.model_dump().items() if v is not None}

    def set_rate(self, rate_hz: Any) -> float | None:
        """A live rate (> 0 messages/s per rank), or None to go back to the timeline."""
        if rate_hz is not None:
            if isinstance(rate_hz, bool) or not isinstance(rate_hz, (int, float)):
                raise ControlError(f"rate_hz: {rate_hz!r} is not a number or null")
            if not rate_hz > 0 or rate_hz != rate_hz or rate_hz == float("inf"):
                raise ControlError(f"rate_hz: {rate_hz!r} is not a finite number > 0 "
                                   "(pause with POST /pause; null goes back to the timeline)")
            rate_hz = float(rate_hz)
        self.rate_hz = rate_hz
        self.changes += 1
        return self.rate_hz

    def inject(self, spec: Any) -> dict[str, Any]:
        """Queue a fault for the next message of its rank (or of every rank)."""
        from simstream.profile import Fault

        if not isinstance(spec, dict) or "kind" not in spec:
            raise ControlError('expected a JSON object with a "kind", e.g. {"kind": "reset"}')
        triggers = [k for k in _TRIGGER_KEYS if spec.get(k) is not None]
        if triggers:
            raise ControlError(f"{', '.join(triggers)}: an injected fault strikes the next "
                               "message; put triggers in the profile's faults instead")
        try:
            # a trigger only to satisfy the profile's model: the fault strikes now
            fault = Fault.model_validate({**spec, "at_message": 0})
        except ValueError as e:
            raise ControlError(_validation_text("fault", e)) from None
        ranks = self._ranks if fault.rank is None else [fault.rank]
        if fault.rank is not None and fault.rank not in self._pending:
            raise ControlError(f"rank: {fault.rank} is not a rank of this emitter "
                               f"(ranks {self._ranks})" if self._ranks else
                               "the emitter has not started its ranks yet")
        if not ranks:
            raise ControlError("the emitter has not started its ranks yet")
        for r in ranks:
            if len(self._pending[r]) >= MAX_PENDING_FAULTS:
                raise ControlError(f"rank {r} already has {MAX_PENDING_FAULTS} faults waiting")
        for r in ranks:
            self._pending[r].append(fault)
        self.injected += 1
        out = fault.model_dump(exclude_none=True)
        out.pop("at_message", None)
        return {"injected": out, "ranks": ranks}

    def pause(self) -> bool:
        import trio

        if not self.paused:
            self.paused = True
            self._resumed = trio.Event()
            self.changes += 1
        return self.paused

    def resume(self) -> bool:
        if self.paused:
            self.paused = False
            self._resumed.set()
            self.changes += 1
        return self.paused

    def pending_faults(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def status(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "state": ("finished" if self.finished else "paused" if self.paused
                      else "running" if self._status is not None else "starting"),
            "paused": self.paused,
            "live": {"network": self.live_network(), "rate_hz": self.rate_hz},
            "pending_faults": self.pending_faults(),
            "injected_faults": self.injected,
        }
        if self._status is not None:
            base.update(self._status())
        else:  # not started yet (building its first messages, connecting)
            base.update({"elapsed_s": 0.0, "phase": None, "network": None,
                         "counters": dict.fromkeys(COUNTERS, 0), "ranks": []})
        return base


def _validation_text(what: str, err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        parts = []
        for e in errors():
            loc = ".".join(str(x) for x in e.get("loc", ()))
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{what}.{loc}: {msg}" if loc else f"{what}: {msg}")
        if parts:
            return "; ".join(parts)
    return f"{what}: {_problems(err)}"


# --------------------------------------------------------------------------
# the HTTP side

_LOOPBACK_NAMES = ("localhost",)


def parse_control_address(text: str, *, any_host: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port). Port 0 picks a free one.

    Raises UsageError for a malformed address, or a host that is not loopback
    unless ``any_host``.
    """
    host, sep, port_s = text.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise UsageError(f"--control {text}: expected HOST:PORT, e.g. 127.0.0.1:8474")
    port = int(port_s)
    if port > 65535:
        raise UsageError(f"--control {text}: port {port} is not in 0..65535")
    host = host.strip("[]") if host.startswith("[") else host
    if not any_host:
        loop = host in _LOOPBACK_NAMES
        if not loop:
            try:
                loop = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loop = False
        if not loop:
            raise UsageError(f"--control {text}: {host} is not a loopback address; the control "
                             "API has no authentication, so it listens on loopback only unless "
                             "--control-any-host is given")
    return host, port


class ControlServer:
    """The HTTP JSON API around a :class:`LiveConditions`, served from a thread.

    Start inside ``trio.run`` (it captures the trio token); requests then run
    their change on the trio thread. ``url`` is ``http://HOST:PORT`` once
    started. Raises UsageError if the address cannot be bound.
    """

    def __init__(self, live: LiveConditions, host: str, port: int) -> None:
        self.live = live
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        import trio

        token = trio.lowlevel.current_trio_token()
        live = self.live
        handler = _make_handler(live, token)
        cls = ThreadingHTTPServer
        if ":" in self._host:
            import socket

            class _V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            cls = _V6
        try:
            self._server = cls((self._host, self._port), handler)
        except OSError as e:
            raise UsageError(f"--control {self._host}:{self._port}: cannot listen: "
                             f"{e.strerror or e}") from None
        self._server.daemon_threads = True
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="simstream-control", daemon=True)
        self._thread.start()
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


def _make_handler(live: LiveConditions, token: Any) -> type[BaseHTTPRequestHandler]:
    import trio

    def on_trio(fn: Callable[[], Any]) -> Any:
        return trio.from_thread.run_sync(fn, trio_token=token)

    posts: dict[str, Callable[[Any], Any]] = {
        "/network": lambda body: {"network": live.set_network(body)},
        "/faults": live.inject,
        "/rate": lambda body: {"rate_hz": live.set_rate(_rate_of(body))},
        "/pause": lambda body: {"paused": live.pause()},
        "/resume": lambda body: {"paused": live.resume()},
    }
    gets: dict[str, Callable[[], Any]] = {
        "/status": live.status,
        "/network": lambda: live.status().get("network") or {},
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "simstream-control"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the emitter's stderr is for the run, not for every request

        def _answer(self, code: int, data: Any) -> None:
            body = (json.dumps(data, default=str) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self, table: dict[str, Any]) -> Any:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            fn = table.get(path)
            if fn is None:
                other = posts if table is gets else gets
                if path in other:
                    self._answer(405, {"error": f"{self.command} {path} is not allowed"})
                else:
                    self._answer(404, {"error": f"no such endpoint {path}; "
                                                f"GET {', '.join(gets)}; POST {', '.join(posts)}"})
                return None
            return fn

        def _call(self, fn: Callable[[], Any]) -> None:
            try:
                result = on_trio(fn)
            except ControlError as e:
                self._answer(400, {"error": str(e)})
            except trio.RunFinishedError:
                self._answer(503, {"error": "the emitter has finished"})
            else:
                self._answer(200, result)

        def do_GET(self) -> None:
            fn = self._route(gets)
            if fn is not None:
                self._call(fn)

        def do_POST(self) -> None:
            fn = self._route(posts)
            if fn is None:
                return
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY_BYTES:
                self._answer(400, {"error": f"request body over {MAX_BODY_BYTES} bytes"})
                return
            raw = self.rfile.read(n) if n else b""
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError as e:
                self._answer(400, {"error": f"the body is not JSON: {e}"})
                return
            self._call(lambda: fn(body))

    return Handler


def _rate_of(body: Any) -> Any:
    if not isinstance(body, dict) or "rate_hz" not in body:
        raise ControlError('expected {"rate_hz": N} (N > 0) or {"rate_hz": null}')
    extra = sorted(set(body) - {"rate_hz"})
    if extra:
        raise ControlError(f"unknown key(s) {', '.join(extra)}; expected only rate_hz")
    return body["rate_hz"]


class ControlClient:
    """The control API from Python: ``ControlClient("http://127.0.0.1:8474")``.

    Every call has a timeout (seconds); a 4xx/5xx answer raises ControlError
    with the server's message; an unreachable server raises OSError.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None and method == "GET" else json.dumps(body).encode()
        req = urlrequest.Request(self.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
        try:
            with urlrequest.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urlerror.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", str(e))
            except ValueError:
                msg = str(e)
            raise ControlError(f"{method} {path}: {msg}") from None

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/status"))

    def network(self) -> dict[str, Any]:
        return dict(self._call("GET", "/network"))

    def set_network(self, **fields: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/network", fields))

    def inject(self, fault: Any) -> dict[str, Any]:
        if hasattr(fault, "model_dump"):
            # a profile's Fault: its trigger said when; injected, it strikes now
            fault = {k: v for k, v in fault.model_dump(exclude_none=True).items()
                     if k not in _TRIGGER_KEYS}
        return dict(self._call("POST", "/faults", fault))

    def set_rate(self, rate_hz: float | None) -> dict[str, Any]:
        return dict(self._call("POST", "/rate", {"rate_hz": rate_hz}))

    def pause(self) -> dict[str, Any]:
        return dict(self._call("POST", "/pause", {}))

    def resume(self) -> dict[str, Any]:
        return dict(self._call("POST", "/resume", {}))
