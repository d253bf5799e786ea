"""The fast receive layout (``consumer.layout: fast``, ``pipeline.fast_ingest``):
its settings, its merged receiver record, and one in-process run over two zmq
addresses in which every message is accounted for."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simstream.pipeline import fast_ingest
from simstream.pipeline.config import consumer_config
from simstream.pipeline.consumer import run_consumer
from simstream.pipeline.fast_ingest import fast_rcvbuf, merged_receiver_stats
from simstream.pipeline.receiver import ReceiverStats
from simstream.pipeline.zmtp_into import IntoReceiver
from simstream.profile import ProfileError
from simstream.runner.procs import free_port
from simstream.wire import zmtp
from tests.peers import push_zmq
from tests.test_consumer import check_receiver_timing, check_run_dir, config, message

TWO = ["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"]


def test_production_is_the_default_and_fast_takes_several_addresses() -> None:
    assert consumer_config(None, {}).layout == "production"
    cfg = consumer_config(None, {"layout": "fast", "bind": TWO})
    assert cfg.layout == "fast" and cfg.urls == TWO
    with pytest.raises(ProfileError, match="one receiver per address needs queue.backend ray"):
        consumer_config(None, {"bind": TWO})


def test_fast_needs_the_in_process_queue_and_a_known_layout() -> None:
    with pytest.raises(ProfileError, match="layout fast hands batches to inference in memory: "
                                           "it needs queue.backend local, or ray with "
                                           r"ray.actors true \(each inference actor runs the "
                                           r"receivers of its addresses\), not process"):
        consumer_config(None, {"layout": "fast", "queue.backend": "process"})
    with pytest.raises(ProfileError, match="not ray with ray.actors false"):
        consumer_config(None, {"layout": "fast", "queue.backend": "ray", "ray.actors": False})
    # on Ray with its actors, each inference actor receives for itself
    cfg = consumer_config(None, {"layout": "fast", "queue.backend": "ray", "bind": TWO})
    assert (cfg.layout, cfg.queue.backend, cfg.urls) == ("fast", "ray", TWO)
    with pytest.raises(ProfileError, match="consumer.layout"):
        consumer_config(None, {"layout": "quick"})


@pytest.mark.parametrize(("rmem_max", "tcp_rmem", "want"), [
    ([4 << 20], [4096, 131072, 32 << 20], None),  # capped below autotuning's reach: leave it on
    ([64 << 20], [4096, 131072, 6 << 20], 32 << 20),  # the cap allows more: set it
    ([64 << 20], [4096, 131072, 64 << 20], None),  # autotuning reaches as far
    ([], [], None),  # no /proc: leave the kernel's default
])
def test_receive_buffer_is_set_only_where_it_beats_autotuning(
        monkeypatch: pytest.MonkeyPatch, rmem_max: list[int], tcp_rmem: list[int],
        want: int | None) -> None:
    values = {"/proc/sys/net/core/rmem_max": rmem_max, "/proc/sys/net/ipv4/tcp_rmem": tcp_rmem}
    monkeypatch.setattr(fast_ingest, "_sysctl_ints", values.__getitem__)
    assert fast_rcvbuf(32 << 20) == want


class _Rx:
    def __init__(self, stats: ReceiverStats) -> None:
        self.stats = stats


def test_merged_receiver_record_sums_counts_and_keeps_the_busiest_thread() -> None:
    a = ReceiverStats(messages=3, bytes=300, wait_s=1.0, read_s=0.5, wakeups=3,
                      t_first=10.0, t_last=12.0, rx_queue_samples=[10, 30])
    b = ReceiverStats(messages=1, bytes=100, wait_s=3.5, read_s=0.1, wakeups=1,
                      t_first=11.0, t_last=15.0, rx_queue_samples=[50])
    m = merged_receiver_stats([_Rx(a), _Rx(b)])
    assert (m["messages"], m["bytes"], m["wakeups"], m["rx_queue_samples"]) == (4, 400, 4, 3)
    assert m["span_s"] == 5.0
    assert m["busy_share"] == 0.5  # a: 1 - 1.0 / 2.0; b: 1 - 3.5 / 4.0
    assert m["rx_queue_bytes_mean"] == 30.0 and m["rx_queue_bytes_max"] == 50
    assert m["bytes_per_wakeup"] == 100.0
    assert [d["messages"] for d in m["per_receiver"]] == [3, 1]


@pytest.mark.integration
def test_fast_layout_over_two_addresses_accounts_for_every_message(tmp_path: Path) -> None:
    urls = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    by_url = [[message(s, rank=0) for s in range(5)],
              [message(s, rank=1) for s in range(5)] + [b"\x00 not a message"]]
    total = sum(len(m) for m in by_url)
    cfg = config(layout="fast", bind=urls, count=total, max_message_bytes=30_000)
    ready = threading.Event()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["summary"] = run_consumer(cfg, tmp_path, ready=ready)
        except BaseException as e:  # surfaced below
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    assert ready.wait(30)
    pushers = [threading.Thread(target=push_zmq, args=(u, m)) for u, m in zip(urls, by_url, strict=True)]
    for p in pushers:
        p.start()
    for p in pushers:
        p.join(30)
    t.join(60)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    s = out["summary"]
    check_run_dir(tmp_path, s)
    assert {k: s[k] for k in ("received", "processed", "quarantined", "lost", "duplicated")} == {
        "received": 11, "processed": 10, "quarantined": 1, "lost": 0, "duplicated": 0}
    assert s["end_reason"] == "count" and s["samples"] == 40
    rx = s["receiver"]
    assert [d["messages"] for d in rx["per_receiver"]] == [5, 6]
    assert rx["messages"] == 11
    for d in rx["per_receiver"]:
        check_receiver_timing(d)


def test_the_kernel_receive_queue_is_found_among_the_hosts_sockets() -> None:
    """The /proc/net/tcp reader's quick skip of unrelated lines keeps the port's own."""
    import socket
    import time

    from simstream.pipeline.receiver import _proc_rx_queue

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            server, _ = listener.accept()
            with server:
                client.sendall(b"x" * 5000)
                deadline = time.monotonic() + 5
                while (q := _proc_rx_queue(port, local=True)) != 5000 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert q == 5000
                client_port = client.getsockname()[1]
                assert _proc_rx_queue(port, local=False) == 0  # the client's side: nothing unread
                assert _proc_rx_queue(client_port, local=True) == 0


def test_a_run_binds_every_address_for_the_fast_layout_from_profile_or_flag() -> None:
    """The runner's fan-in (one address per transport.urls entry, the emitter's
    ranks spread over them) follows the layout as the consumer will see it."""
    from simstream.profile import find_profile, load_profile
    from simstream.runner.core import _receiver_actors

    base = load_profile(find_profile("peaknet-1920"))
    assert not _receiver_actors(base)
    assert _receiver_actors(base, ["--layout", "fast"])
    assert _receiver_actors(base.with_overrides({"consumer.layout": "fast"}))
    assert not _receiver_actors(base.with_overrides({"consumer.layout": "fast"}),
                                ["--layout", "production"])
    with pytest.raises(ProfileError, match="layout fast .* needs queue.backend local"):
        _receiver_actors(base, ["--layout", "fast", "--queue-backend", "process"])


def _push_peer(url: str, socket_type: bytes = b"PUSH") -> socket.socket:
    """A raw ZMTP peer: connected, greeted, READY sent and the receiver's read."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(zmtp.greeting() + zmtp.command_frame(
        "READY", zmtp.encode_properties({"Socket-Type": socket_type})))
    return s


def _recv_until(rx: IntoReceiver, done: Any) -> list[Any]:
    """Messages received until ``done(messages)`` (at most 200 polls of 50 ms)."""
    got: list[Any] = []
    for _ in range(200):
        if done(got):
            break
        msg = rx.recv(0.05)
        if msg is not None:
            got.append(msg)
    return got


def test_the_fast_receiver_reads_each_message_into_a_pool_buffer() -> None:
    """IntoReceiver: one-frame messages land in buffers from ``alloc`` (handed over
    with their release); a PING is answered; a multi-frame message is a reject; a
    message over max_message_bytes ends its connection; a PUB peer is refused."""
    released: list[int] = []

    def alloc(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Any]:
        return np.empty(shape, dtype), lambda: released.append(1)

    url = f"tcp://127.0.0.1:{free_port()}"
    rx = IntoReceiver(url, max_message_bytes=1000, alloc=alloc)
    try:
        peer = _push_peer(url)
        body = bytes(range(256)) + b"tail"  # a long frame (over 255 bytes)
        peer.sendall(zmtp.frame_header(len(body)) + body + zmtp.frame_header(2) + b"hi"
                     + zmtp.command_frame("PING", b"\x00\x0actx")
                     + zmtp.frame_header(3, more=True) + b"abc" + zmtp.frame_header(1) + b"d")
        first, second, multi = _recv_until(rx, lambda got: len(got) == 3)
        assert isinstance(first.payload, np.ndarray) and bytes(first.payload) == body
        assert bytes(second.payload) == b"hi" and first.release is not None
        assert multi.reject.startswith("multipart: 2 frames (3, 1 bytes)") and multi.nbytes == 4
        assert bytes(multi.payload) == b"abc" and multi.release is None
        assert len(released) == 2  # the multi-frame message's two buffers went back
        peer.settimeout(10)
        greeting_and_ready = 64 + len(zmtp.command_frame(
            "READY", zmtp.encode_properties({"Socket-Type": b"PULL"})))
        reply = b""
        while len(reply) < greeting_and_ready + len(zmtp.command_frame("PONG", b"ctx")):
            reply += peer.recv(4096)
        assert reply[greeting_and_ready:] == zmtp.command_frame("PONG", b"ctx")
        peer.sendall(zmtp.frame_header(5000) + b"x" * 100)  # over the limit: dropped
        assert _recv_until(rx, lambda got: rx.stats.disconnects) == []
        assert rx.stats.oversize == 1 and rx.stats.disconnects == 1
        peer.close()
        bad = _push_peer(url, b"PUB")
        assert _recv_until(rx, lambda got: rx.stats.protocol_errors) == []
        assert rx.stats.protocol_errors == 1 and "PULL cannot talk to PUB" in rx.stats.errors[-1]
        bad.close()
        assert rx.stats.messages == 3 and rx.stats.multipart == 1 and rx.stats.connections == 1
    finally:
        rx.close()


def test_the_fast_receiver_drops_a_message_cut_or_stalled_part_way() -> None:
    """A body read waits for the whole message (MSG_WAITALL); a peer that goes quiet
    part-way is dropped after stall_s to twice that, one that closes part-way at
    once; both count as cut, and the buffers go back to the pool."""
    released: list[int] = []

    def alloc(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Any]:
        return np.empty(shape, dtype), lambda: released.append(1)

    url = f"tcp://127.0.0.1:{free_port()}"
    rx = IntoReceiver(url, max_message_bytes=1 << 20, alloc=alloc, stall_s=0.3)
    try:
        quiet = _push_peer(url)
        quiet.sendall(zmtp.frame_header(1000) + b"x" * 10)  # then nothing
        t0 = time.monotonic()
        assert _recv_until(rx, lambda got: rx.stats.cut) == []
        waited = time.monotonic() - t0
        assert rx.stats.cut == 1 and "stalled 0.3 s in a message" in rx.stats.errors[-1]
        assert 0.25 <= waited < 10.0  # not before stall_s (a slow machine may take longer)
        quiet.close()
        closing = _push_peer(url)
        assert _recv_until(rx, lambda got: rx.stats.connections == 2) == []  # handshake done
        closing.sendall(zmtp.frame_header(1000) + b"y" * 10)
        closing.close()
        assert _recv_until(rx, lambda got: rx.stats.cut == 2) == []
        assert rx.stats.cut == 2
        # a FIN reads as the peer closing part-way; unread greeting bytes make it an RST
        assert ("peer closed part-way through a message" in rx.stats.errors[-1]
                or "message: [Errno 104]" in rx.stats.errors[-1])
        # a whole message after both still arrives, read in one piece
        whole = _push_peer(url)
        body = bytes(range(256)) * 400
        whole.sendall(zmtp.frame_header(len(body)) + body)
        [msg] = _recv_until(rx, lambda got: len(got) == 1)
        assert bytes(msg.payload) == body
        whole.close()
        assert len(released) == 2 and rx.stats.messages == 1
    finally:
        rx.close()
