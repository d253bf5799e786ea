"""Live control of a running emitter: the state (virtual time, exact), the HTTP API
(real threads, a fake link), and the command line's checks."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib import request as urlrequest

import pytest
import trio
import trio.testing

from simstream.emitter.control import (
    ControlClient,
    ControlError,
    ControlServer,
    LiveConditions,
    parse_control_address,
)
from simstream.emitter.engine import run_emitter
from simstream.errors import UsageError
from simstream.schedule import Schedule
from tests.test_emit_cli import run_main
from tests.test_emitter_engine import FakeFactory, FakeTransport, profile


def steady(rate_hz: float = 10, **sections: Any) -> Any:
    return profile(timeline={"phases": [{"name": "steady", "rate_hz": rate_hz}]}, **sections)


def run_live(prof: Any, live: LiveConditions, during: Any) -> list[dict[str, Any]]:
    """The engine under MockClock with ``during(live)`` steering it from a task."""
    records: list[dict[str, Any]] = []

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(during, live)
            await run_emitter(prof, sender_factory=FakeTransport(),
                              message_factory=lambda p, r: FakeFactory(1000),
                              on_record=records.append, wall_clock=trio.current_time,
                              messages_in_thread=False, live=live)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return records


# -- the schedule follows live changes from the next message on


def test_live_network_rate_and_faults_shape_the_next_planned_message() -> None:
    live = LiveConditions([0])
    sched = Schedule(steady(10, stop={"messages": 6}), 0, live=live)
    first = sched.next(0.0)
    assert first is not None and first.t_sched == 0.0 and first.faults == ()
    live.set_network({"latency_ms": 50, "bandwidth_mbps": 20})
    live.inject({"kind": "truncate", "fraction": 0.5})
    second = sched.next(0.0)
    assert second is not None
    assert second.t_sched == pytest.approx(0.1 + 0.05)
    assert second.bandwidth_mbps == 20
    assert second.fault_names == ["truncate"]
    live.set_network({"latency_ms": None})  # back to the profile's (none)
    live.set_rate(2.0)
    third = sched.next(0.0)
    assert third is not None and third.t_offered == pytest.approx(0.1 + 0.5)
    assert third.t_sched == pytest.approx(0.6) and third.faults == ()
    live.set_rate(None)  # the timeline's 10 Hz again, after the last offer
    fourth = sched.next(0.0)
    assert fourth is not None and fourth.t_offered == pytest.approx(0.7)


def test_injected_duplicate_and_stall_act_as_profile_faults_do() -> None:
    live = LiveConditions([0])
    sched = Schedule(steady(10, stop={"messages": 4}), 0, live=live)
    sched.next(0.0)
    live.inject({"kind": "duplicate"})
    a, b = sched.next(0.0), sched.next(0.0)
    assert a is not None and b is not None and (a.seq, b.seq) == (1, 1)
    assert b.duplicate and b.fault_names == ["duplicate"]
    live.inject({"kind": "stall", "duration_ms": 300})
    c = sched.next(0.0)
    assert c is not None and c.fault_names == ["stall"]
    assert c.t_sched == pytest.approx(0.2 + 0.3)
    d = sched.next(0.0)
    assert d is not None and d.t_sched == pytest.approx(0.3 + 0.3)  # everything after moves


def test_a_fault_for_one_rank_waits_for_that_rank_only() -> None:
    live = LiveConditions([0, 1])
    live.inject({"kind": "reset", "rank": 1})
    assert live.take_faults(0) == []
    assert [f.kind for f in live.take_faults(1)] == ["reset"]
    assert live.take_faults(1) == []  # strikes once
    with pytest.raises(ControlError, match="rank: 5 is not a rank"):
        live.inject({"kind": "reset", "rank": 5})


@pytest.mark.parametrize("call, needle", [
    (lambda lv: lv.set_network({"latency": 3}), "unknown network field(s) latency"),
    (lambda lv: lv.set_network({"latency_ms": -1}), "network.latency_ms"),
    (lambda lv: lv.set_network({}), "expected a JSON object of network fields"),
    (lambda lv: lv.inject({"kind": "meltdown"}), "fault.kind"),
    (lambda lv: lv.inject({"kind": "stall"}), "needs duration_ms"),
    (lambda lv: lv.inject({"kind": "reset", "every_s": 1}), "every_s: an injected fault"),
    (lambda lv: lv.inject(["reset"]), 'with a "kind"'),
    (lambda lv: lv.set_rate(0), "is not a finite number > 0"),
    (lambda lv: lv.set_rate("fast"), "is not a number"),
])
def test_bad_changes_are_refused_with_what_is_wrong(call: Any, needle: str) -> None:
    live = LiveConditions([0])
    with pytest.raises(ControlError) as e:
        call(live)
    assert needle in str(e.value)
    assert live.network is None and live.rate_hz is None and live.pending_faults() == 0


def test_pause_moves_the_schedule_later_by_the_pause_in_virtual_time() -> None:
    async def during(live: LiveConditions) -> None:
        await trio.sleep(0.25)
        live.pause()
        await trio.sleep(1.0)
        live.resume()

    records = run_live(steady(10, stop={"messages": 6}), LiveConditions([0]), during)
    times = [r["t_first_byte"] for r in records]
    # 0, 0.1, 0.2 go; 0.3 waits for the resume at 1.25; the rest keep their spacing
    assert times == pytest.approx([0.0, 0.1, 0.2, 1.25, 1.35, 1.45], abs=1e-9)
    assert [r["t_sched"] for r in records][3] == pytest.approx(1.25)


def test_injected_reset_cuts_the_next_message_and_is_logged() -> None:
    async def during(live: LiveConditions) -> None:
        await trio.sleep(0.15)
        live.inject({"kind": "reset"})

    records = run_live(steady(10, stop={"messages": 5}), LiveConditions([0]), during)
    assert [(r["seq"], r["outcome"], r["faults"]) for r in records] == [
        (0, "delivered", []), (1, "delivered", []), (2, "delivered", []),
        (3, "cut", ["reset"]), (4, "delivered", [])]


# -- the HTTP API, real threads against the engine on a fake link


def _raw(url: str, method: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    req = urlrequest.Request(url, data=body, method=method)
    try:
        with urlrequest.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urlrequest.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_api_steers_a_running_emitter() -> None:
    prof = steady(20, stop={"messages": 30})  # 1.5 s of real time
    records: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}
    errors: list[BaseException] = []

    def client(url: str, started: threading.Event) -> None:
        try:
            c = ControlClient(url)
            started.wait(10)
            seen["before"] = c.status()
            seen["network"] = c.set_network(bandwidth_mbps=500, latency_ms=2)
            seen["inject"] = c.inject({"kind": "reset"})
            seen["rate"] = c.set_rate(40)
            seen["paused"] = c.pause()
            seen["while_paused"] = c.status()
            seen["resumed"] = c.resume()
            seen["after"] = c.network()
            seen["raw"] = [
                _raw(url + "/faults", "POST", b"{not json"),
                _raw(url + "/nothing", "GET"),
                _raw(url + "/status", "POST", b"{}"),
                _raw(url + "/rate", "POST", b'{"rate_hz": 5, "burst": 1}'),
            ]
            with pytest.raises(ControlError, match="unknown network field"):
                c.set_network(speed=1)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            errors.append(e)

    async def main() -> None:
        live = LiveConditions([0])
        server = ControlServer(live, "127.0.0.1", 0)
        url = server.start()
        started = threading.Event()
        th = threading.Thread(target=client, args=(url, started), daemon=True)
        th.start()

        async def go(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await run_emitter(prof, sender_factory=FakeTransport(),
                              message_factory=lambda p, r: FakeFactory(1000),
                              on_record=records.append, messages_in_thread=False,
                              live=live, task_status=task_status)

        try:
            async with trio.open_nursery() as n:
                await n.start(go)  # the ranks have started
                started.set()
                await trio.to_thread.run_sync(th.join, 20)
        finally:
            server.close()
        seen["done"] = live.status()

    trio.run(main)
    if errors:
        raise errors[0]
    assert seen["before"]["state"] in ("starting", "running")
    assert set(seen["before"]["counters"]) >= {"delivered", "cut", "lost", "attempts"}
    assert seen["network"] == {"network": {"latency_ms": 2.0, "bandwidth_mbps": 500.0}}
    assert seen["inject"] == {"injected": {"kind": "reset"}, "ranks": [0]}
    assert seen["rate"] == {"rate_hz": 40.0}
    assert seen["paused"] == {"paused": True}
    assert seen["while_paused"]["state"] == "paused"
    assert seen["while_paused"]["network"]["bandwidth_mbps"] == 500.0
    assert seen["resumed"] == {"paused": False}
    assert seen["after"]["latency_ms"] == 2.0
    codes = [code for code, _ in seen["raw"]]
    assert codes == [400, 404, 405, 400]
    assert "not JSON" in seen["raw"][0][1]["error"]
    assert "GET /status" in seen["raw"][1][1]["error"]
    # every attempt logged; the injected reset cut exactly one
    assert len(records) == 30
    assert [r["faults"] for r in records if r["outcome"] == "cut"] == [["reset"]]
    assert seen["done"]["state"] == "finished"
    assert seen["done"]["counters"]["attempts"] == 30


# -- the command line


def test_control_address_is_loopback_unless_asked() -> None:
    assert parse_control_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_control_address("[::1]:8474") == ("::1", 8474)
    assert parse_control_address("localhost:9") == ("localhost", 9)
    assert parse_control_address("0.0.0.0:9", any_host=True) == ("0.0.0.0", 9)
    for bad, needle in (("10.0.0.1:80", "not a loopback"), ("8474", "expected HOST:PORT"),
                        ("127.0.0.1:70000", "not in 0..65535")):
        with pytest.raises(UsageError, match=needle):
            parse_control_address(bad)


@pytest.mark.parametrize("argv, needle", [
    (["--control", "192.0.2.1:0"], "not a loopback address"),
    (["--control", "nope"], "expected HOST:PORT"),
    (["--control-any-host"], "goes with --control"),
    (["--control", "127.0.0.1:0", "--dry-run"], "a --dry-run sends nothing"),
    (["--control", "127.0.0.1:0", "--ranks", "2", "--processes", "2"], "one emitter process"),
])
def test_bad_control_flags_exit_2(argv: list[str], needle: str, capsys: Any) -> None:
    rc, out, err = run_main(["emit", "--profile", "steady", "--count", "1", *argv], capsys)
    assert rc == 2
    assert needle in out + err
    assert "Traceback" not in out + err
