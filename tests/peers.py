"""Reference peers the tests drive the consumer with (libzmq through pyzmq)."""

from __future__ import annotations


def push_zmq(url: str, msgs: list[bytes]) -> None:
    """Connect a pyzmq PUSH socket to ``url``, send ``msgs`` and close once they are out
    (LINGER 5 s)."""
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 5000)
    s.connect(url)
    for m in msgs:
        s.send(m)
    s.close()
    ctx.term()


def consume_while_emitting(consume: list[str], emit: list[str], listen_ports: list[int],
                           env: dict[str, str], *, listen_s: float = 120.0,
                           timeout_s: float = 120.0) -> tuple[str, str]:
    """Start the consumer program ``consume``, wait until every port in
    ``listen_ports`` listens (none: a connecting consumer), run the emitter program
    ``emit`` to its end, then wait for the consumer to end on its own (idle
    timeout). Asserts both exit 0; returns the consumer's (stdout, stderr). Bounded:
    ``listen_s`` for the ports, ``timeout_s`` for each program; the consumer is
    killed if it outlives them."""
    import subprocess
    import time

    from simstream.runner.procs import is_listening

    consumer = subprocess.Popen(consume, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    try:
        deadline = time.monotonic() + listen_s
        while not all(is_listening(p) for p in listen_ports):
            assert consumer.poll() is None, consumer.communicate()
            assert time.monotonic() < deadline, f"nothing listens on {listen_ports}"
            time.sleep(0.05)
        emitter = subprocess.run(emit, capture_output=True, text=True, env=env, timeout=timeout_s)
        assert emitter.returncode == 0, emitter.stderr
        stdout, stderr = consumer.communicate(timeout=timeout_s)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.communicate()
    assert consumer.returncode == 0, stderr
    return stdout, stderr


class ThreadedConsumer:
    """``pipeline.consumer.run_consumer(cfg, out)`` in a thread (no warm-up), started
    at once; ``stop()`` ends it and returns its summary, re-raising what it raised.
    Bounded: ``start_s`` to be ready, ``stop_s`` to end."""

    def __init__(self, cfg: object, out: object, *, start_s: float = 30.0,
                 stop_s: float = 30.0) -> None:
        import threading

        self.cfg = cfg
        self.out = out
        self.stop_s = stop_s
        self.ready = threading.Event()
        self.stop_ev = threading.Event()
        self.box: dict[str, object] = {}
        self.thread = threading.Thread(target=self._body, daemon=True)
        self.thread.start()
        assert self.ready.wait(start_s), self.box.get("error", "the consumer did not start")

    def _body(self) -> None:
        from simstream.pipeline.consumer import run_consumer

        try:
            self.box["summary"] = run_consumer(self.cfg, self.out, ready=self.ready,  # type: ignore[arg-type]
                                               stop=self.stop_ev, warmup=False)
        except BaseException as e:
            self.box["error"] = e
            self.ready.set()

    def stop(self) -> dict[str, object]:
        self.stop_ev.set()
        self.thread.join(self.stop_s)
        assert not self.thread.is_alive(), "the consumer did not stop"
        if "error" in self.box:
            raise self.box["error"]  # type: ignore[misc]
        return dict(self.box["summary"])  # type: ignore[call-overload]
