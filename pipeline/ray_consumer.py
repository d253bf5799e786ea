"""The consumer on Ray, laid out as production runs it: receiver actors, Q1 shard
actors and inference actors, with one run directory written by the driver.

``queue.backend: ray`` with ``ray.actors: true`` (the default):

- one *receiver actor* per address in ``bind`` (or one connecting to ``connect``).
  It binds its socket itself, parses in its own parser pool (``parse_in:
  receiver``) or passes the raw bytes on (``parse_in: actor``), and puts into Q1
  by production's sharded protocol (round robin, "full" answers, back-off).
  Receivers are placed on the driver's node: that is the host the producers were
  told to reach.
- Q1: ``queue.shards`` shard actors (:class:`pipeline.q1.RayQ1`), owned by the run
  and killed with it, so nothing stale reaches the next run.
- one *inference actor* per GPU (``ray.inference_actors``; default one per GPU of
  the cluster, or one on CPU), each with its own N-buffered Engine, getting from
  the shards by sweeping them.

``layout: fast`` on Ray (``pipeline.fast_ingest`` inside the actors): no receiver
or shard actors. Each inference actor binds its share of the addresses (actor j
of n takes ``bind[j::n]``, so at least one address per actor), receives and
parses in its own threads straight into its engine's host buffers, and hands the
batches to its inference loop through an in-process Q1 of ``queue.maxsize``:
nothing crosses the object store between the socket and the GPU. The actors are
placed on the driver's node (the host the producers were told to reach).

Every actor keeps its record events (arrival, sequence, quarantine, batch done)
in a :class:`RecordRelay`; the driver drains the relays every ``DRAIN_S`` and
replays them into the one :class:`pipeline.records.RunRecords`, so the run
directory, the accounting and the diagnosis read exactly as the in-process
consumer's. Receiver i of n numbers its messages i, i + n, i + 2n... (the
records' streams); each inference actor's batches carry its number as their
``device``. A shard stamps when an item entered Q1 (``t_q1_put_end``): the
receiver and the inference actor of a batch meet only there.

End of a run: receivers end on their own (``count`` with one receiver,
``duration_s``, ``idle_timeout_s``) or when the driver stops them (``stop`` set,
or ``count`` reached in total with several receivers, which may read a few
messages past it: every one is still processed and accounted). Once every
receiver is done, all its puts have returned; the inference actors are then told,
drain Q1 and flush their engines. A failed inference actor aborts the receivers
(their pending batches are quarantined as aborted), and the run raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

from simstream.clock import now
from simstream.errors import UsageError

from .config import ConsumerConfig
from .context import Q1Item, StageContext
from .fast_ingest import fast_rcvbuf, merged_receiver_stats, parse_in_fast
from .inference import InferenceLoop, build_engine, host_buffers_needed, report_progress, warm_up
from .ingest import parse_in_actor, parse_in_receiver, producer_thread
from .q1 import LocalQ1, Q1Sampler, Q1Stats, RayQ1, _ray, init_ray
from .receiver import check_bindable, open_receiver
from .records import QUARANTINE_HEAD_BYTES, RunRecords
from .summary import device_facts, host_pool_stats, merge_host_pools, summary_extra

__all__ = ["FastInferenceActor", "InferenceActor", "ReceiverActor", "RecordRelay", "replay",
           "run_ray_consumer"]

log = logging.getLogger("pipeline.ray_consumer")

DRAIN_S = 0.05  # how often the driver collects the actors' record events
PROGRESS_S = 1.0  # how often the driver reports progress
START_TIMEOUT_S = 600.0  # model build and warm-up of an inference actor

_RELAYED = frozenset({"arrival", "sequence", "quarantine", "batch_done"})


class RecordRelay:
    """Stands in for RunRecords inside an actor: keeps the calls as events for the
    driver to replay (``drain``). Thread-safe. A quarantined payload keeps only
    what RunRecords would save (its first QUARANTINE_HEAD_BYTES); a batch's engine
    result travels without its output array and meta (the records use neither)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.batches = 0

    def _add(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._events.append((name, args, kwargs or {}))

    def arrival(self, t_arrival: float) -> None:
        self._add("arrival", (t_arrival,))

    def sequence(self, index: int, rank: int | None, seq: int | None,
                 epoch: int | None = None) -> None:
        self._add("sequence", (index, rank, seq, epoch))

    def quarantine(self, index: int, payload: Any, reason: str, *, nbytes: int, t_arrival: float,
                   rank: int | None = None, seq: int | None = None) -> None:
        head = None if payload is None else bytes(memoryview(payload)[:QUARANTINE_HEAD_BYTES])
        self._add("quarantine", (index, head, reason),
                  {"nbytes": nbytes, "t_arrival": t_arrival, "rank": rank, "seq": seq})

    def batch_done(self, host: Any, fin: Any, device: int = 0) -> None:
        light = dataclasses.replace(fin, meta=None, output=None)
        with self._lock:
            self.batches += 1
            self._events.append(("batch_done", (host, light, device), {}))

    def drain(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        """Every event since the last drain, in the order they happened."""
        with self._lock:
            out, self._events = self._events, []
        return out


def replay(records: Any, events: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
    """Apply relayed events to ``records`` (a RunRecords). Raises ValueError on an
    event that is not a record call."""
    for name, args, kwargs in events:
        if name not in _RELAYED:
            raise ValueError(f"not a record event: {name!r}")
        getattr(records, name)(*args, **kwargs)


class _HostArrays:
    """The engine surface a receiver actor's parser needs: host arrays to decode
    into, reused once Ray has serialised the batch into its object store."""

    def __init__(self, keep: int) -> None:
        from .pinned import PinnedPool  # torch

        self.pool = PinnedPool(pin=False, max_free=keep)

    def host_array(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.pool.acquire(tuple(int(s) for s in shape), dtype)


class _Actor:
    """What receiver and inference actors share: a config, a Q1 view over the run's
    shards, a relay, a worker thread and the poll the driver calls."""

    def __init__(self, cfg_data: dict[str, Any], shards: list[Any] | None, capacity: int) -> None:
        self.cfg = ConsumerConfig.model_validate(cfg_data)
        # shards None: this actor keeps its own in-process Q1 (layout fast)
        self.q1: Any = (LocalQ1(self.cfg.queue.maxsize) if shards is None else
                        RayQ1.view(shards, capacity, self.cfg.queue.poll_interval_ms,
                                   self.cfg.ray.q1_items))
        self.relay = RecordRelay()
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def _reach_shards(self) -> None:
        """One call to every shard before the first batch: an actor handle's first call
        looks the actor up, which on a busy machine takes up to a second and would
        otherwise fall on the first puts and gets of the run, as if Q1 were slow."""
        self.q1.depth()

    def _start_thread(self, body: Any, name: str) -> None:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # reported to the driver, which raises it
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed", name)
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def poll(self) -> dict[str, Any]:
        """The record events since the last poll, and whether the work is over."""
        done = self.done.is_set()  # before draining: no event may follow a "done"
        return {"events": self.relay.drain(), "done": done, "error": self.error}

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=60.0)


class ReceiverActor(_Actor):
    """One socket: receive, parse, put into Q1 (module docstring)."""

    def __init__(self, cfg_data: dict[str, Any], shards: list[Any], capacity: int,
                 stripe: tuple[int, int], url: str) -> None:
        super().__init__(cfg_data, shards, capacity)
        self.stripe = stripe
        self.url = url
        self.rx: Any = None
        self.run: Any = None

    def start(self) -> str | None:
        """Bind (or connect) and start receiving; a usage error's message, or None."""
        cfg = self.cfg
        try:
            if cfg.role == "bind":
                check_bindable(self.url)
            self.rx = open_receiver(cfg.transport, self.url, cfg.role, cfg.max_message_bytes,
                                    cfg.rcvhwm)
        except UsageError as exc:
            return str(exc)
        # a batch's buffer is free again once its put has serialised it
        self.run = StageContext(cfg, self.relay, self.q1, _HostArrays(2 * cfg.parser_threads + 1),
                        self.stop_event,
                        stripe=self.stripe, track_put_end=False)
        self._reach_shards()
        target = parse_in_receiver if cfg.parse_in == "receiver" else parse_in_actor
        self._start_thread(lambda: target(self.run, self.rx), f"receiver-{self.stripe[0]}")
        return None

    def stop(self) -> None:
        """Stop reading; what was read is still parsed and queued."""
        self.stop_event.set()

    def abort(self) -> None:
        """Stop and give up on Q1 (its consumers are gone): pending batches are
        quarantined as aborted."""
        self.stop_event.set()
        self.q1.close()

    def result(self) -> dict[str, Any]:
        """After ``done``: the receiver's totals and its last events."""
        self._join()
        run = self.run
        out = {
            "url": self.url,
            "end_reason": run.end_reason if run is not None else "not started",
            "puts": run.put_count if run is not None else 0,
            "q1": dataclasses.asdict(self.q1.stats),
            "receiver": self.rx.stats.as_dict() if self.rx is not None else None,
            "error": self.error or (repr(run.errors[0]) if run is not None and run.errors else None),
        }
        if run is not None:
            with contextlib.suppress(Exception):
                run.parser.close()
        if self.rx is not None:
            self.rx.close()
        out["events"] = self.relay.drain()
        return out


class InferenceActor(_Actor):
    """One device: Q1 -> engine, N-way buffered (module docstring). ``shards``
    None: it keeps its own in-process Q1 (FastInferenceActor)."""

    def __init__(self, cfg_data: dict[str, Any], shards: list[Any] | None, capacity: int,
                 number: int, device: str) -> None:
        super().__init__(cfg_data, shards, capacity)
        self.number = number
        self.device = device
        self.engine: Any = None
        self.inference: Any = None
        self.run: Any = None

    def start(self, warmup: bool = True) -> dict[str, Any]:
        """Build and warm the engine, then start taking batches from Q1. Returns the
        device it runs on, or ``{"error": message}`` for a usage error (device, model)."""
        cfg = self.cfg.model_copy(update={"device": self.device})
        try:
            # batches come out of the object store, not this engine's host pool: it holds
            # only the batches in flight and, with parse_in: actor, the one being parsed
            self.engine = build_engine(cfg, host_buffers=cfg.buffers + 1)
        except UsageError as exc:
            return {"error": str(exc)}
        if warmup:
            warm_up(self.engine, cfg)
        self._reach_shards()
        run = StageContext(cfg, self.relay, self.q1, self.engine, self.stop_event,
                           track_put_end=False)
        # the driver reports progress
        inference = InferenceLoop(run, None, device=self.number, report=False)
        self.run, self.inference = run, inference
        self._start_thread(inference.loop, f"inference-{self.number}")
        device, desc = device_facts(self.engine)
        return {"device": device, "device_description": desc}

    def input_done(self) -> None:
        """Every receiver is done: drain Q1, flush, end."""
        self.run.producers_done.set()

    def result(self) -> dict[str, Any]:
        """After ``done``: this actor's totals and its last events."""
        self._join()
        out = self._totals()
        self._close()
        out["events"] = self.relay.drain()
        return out

    def _totals(self) -> dict[str, Any]:
        run, inf = self.run, self.inference
        return {
            "number": self.number,
            "q1": dataclasses.asdict(self.q1.stats),
            "batches": self.relay.batches,
            "reordered": inf.q1_reordered if inf is not None else 0,
            "clock_error_s": getattr(self.engine, "clock_error_s", 0.0),
            "host_pool": host_pool_stats(self.engine),
            "error": self.error or (repr(run.errors[0]) if run is not None and run.errors
                                    else None),
        }

    def _close(self) -> None:
        if self.run is not None:
            with contextlib.suppress(Exception):
                self.run.parser.close()
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.close()


class FastInferenceActor(InferenceActor):
    """``layout: fast`` on Ray: one device fed by its own receivers, one socket and
    receiver thread per address of its share, parsed into the engine's host
    buffers and handed over through an in-process Q1 (``pipeline.fast_ingest``):
    no receiver or shard actors, no object store between receive and inference.
    ``stripe`` (i, n): this actor numbers its messages i, i + n, ..."""

    def __init__(self, cfg_data: dict[str, Any], number: int, device: str, urls: list[str],
                 stripe: tuple[int, int]) -> None:
        super().__init__(cfg_data, None, 0, number, device)
        self.urls = list(urls)
        self.stripe = stripe
        self.rxs: list[Any] = []
        self.producer: threading.Thread | None = None

    def start(self, warmup: bool = True) -> dict[str, Any]:
        """Build and warm the engine, bind (or connect) every address of this actor,
        start receiving and inference. Returns the device it runs on, or ``{"error":
        message}`` for a usage error (device, model, an address in use)."""
        from .local_consumer import _fast_receiver

        cfg = self.cfg.model_copy(update={"device": self.device})
        try:
            if cfg.role == "bind":
                for url in self.urls:
                    check_bindable(url)
            # Q1 and the parser slots are this actor's own; one receiver per address of its share
            self.engine = build_engine(cfg, host_buffers_needed(cfg, receivers=len(self.urls)))
            if warmup:
                warm_up(self.engine, cfg)
            rcvbuf = fast_rcvbuf()
            for url in self.urls:
                self.rxs.append(_fast_receiver(cfg, url, self.engine, now, rcvbuf))
        except UsageError as exc:
            return {"error": str(exc)}
        run = StageContext(cfg, self.relay, self.q1, self.engine, self.stop_event,
                           stripe=self.stripe)
        inference = InferenceLoop(run, None, device=self.number, report=False)
        self.run, self.inference = run, inference
        self.producer = producer_thread(run, lambda: parse_in_fast(run, self.rxs))
        self._start_thread(self._infer, f"inference-{self.number}")
        device, desc = device_facts(self.engine)
        return {"device": device, "device_description": desc}

    def _infer(self) -> None:
        try:
            self.inference.loop()
        except BaseException as exc:
            self.run.fail(exc)  # the receivers stop
            raise
        finally:
            if self.run.errors:
                self.q1.close()  # unblock a parser waiting for room

    def stop(self) -> None:
        """Stop reading; what was read is still parsed, queued and processed."""
        self.stop_event.set()

    def depth(self) -> int:
        return int(self.q1.depth())

    def _join(self) -> None:
        super()._join()
        if self.producer is not None:
            self.producer.join(timeout=30.0)

    def _totals(self) -> dict[str, Any]:
        run = self.run
        return {
            **super()._totals(),
            "urls": self.urls,
            "end_reason": run.end_reason if run is not None else "not started",
            "puts": run.put_count if run is not None else 0,
            "receiver": merged_receiver_stats(self.rxs) if self.rxs else None,
        }

    def _close(self) -> None:
        for rx in self.rxs:
            with contextlib.suppress(Exception):
                rx.close()
        super()._close()


# --------------------------------------------------------------------------
# the driver


def _merge_q1(parts: list[dict[str, Any]]) -> Q1Stats:
    total = Q1Stats()
    for p in parts:
        for k, v in p.items():
            setattr(total, k, getattr(total, k) + v)
    return total


def _merge_receivers(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    got = [p for p in parts if p is not None]
    if not got:
        return None
    out: dict[str, Any] = {}
    # shares and per-receiver figures: the mean (busy) or the max over the receivers
    each = {"busy_share": "mean", "rx_queue_bytes_mean": "mean", "rx_queue_bytes_max": "max",
            "bytes_per_wakeup": None, "span_s": "max"}
    for p in got:
        for k, v in p.items():
            if k == "errors":
                out.setdefault(k, []).extend(v)
            elif k not in each and v is not None:
                out[k] = out.get(k, 0) + v
    for k, how in each.items():
        if not any(k in p for p in got):
            continue
        vals = [p[k] for p in got if p.get(k) is not None]
        if how == "mean":
            out[k] = round(sum(vals) / len(vals), 4) if vals else None
        elif how == "max":
            out[k] = max(vals) if vals else None
        else:
            out[k] = round(out.get("bytes", 0) / max(out.get("wakeups", 0), 1), 1) if out.get("bytes") else None
    out["errors"] = out.get("errors", [])[-10:]
    return out


def _plan_inference(ray: Any, cfg: ConsumerConfig) -> tuple[int, str, bool]:
    """(actors, device each uses, whether each takes a GPU). Raises UsageError."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    want_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus > 0)
    if want_gpu and gpus == 0:
        raise UsageError(f"device {cfg.device}: the Ray cluster has no GPU")
    n = cfg.ray.inference_actors or (gpus if want_gpu else 1)
    if want_gpu and n > gpus:
        raise UsageError(f"ray.inference_actors {n}: the Ray cluster has {gpus} GPU(s), one "
                         f"per inference actor")
    # inside an actor Ray shows only its own GPU, as cuda:0
    return n, ("cuda" if want_gpu else "cpu"), want_gpu


def _end_reason(reasons: list[str]) -> str:
    kinds = sorted(set(reasons))
    return kinds[0] if len(kinds) == 1 else ",".join(kinds)


class _RayDriver:
    """The driver's side of one Ray run: the actors it started, the records it
    replays their events into, and the loop that watches them."""

    def __init__(self, cfg: ConsumerConfig, q1: Any, stop: threading.Event,
                 on_progress: Any) -> None:
        # q1: the run's RayQ1, or _ActorQueues in layout fast (the actors' own queues)
        self.cfg = cfg
        self.q1 = q1
        self.ray = q1._ray
        self.stop = stop
        self.on_progress = on_progress
        self.receivers: list[Any] = []
        self.infs: list[Any] = []
        self.started: list[dict[str, Any]] = []
        self.records: RunRecords | None = None
        self.sampler: Q1Sampler | None = None
        self.starvation_warnings = 0

    def start_inference(self, warmup: bool) -> None:
        """One inference actor per device, built and warm. Raises UsageError."""
        ray, q1 = self.ray, self.q1
        n_inf, device, takes_gpu = _plan_inference(ray, self.cfg)
        data = self.cfg.model_dump(mode="json")
        inf_cls = ray.remote(num_cpus=0, num_gpus=1 if takes_gpu else 0,
                             max_restarts=0)(InferenceActor)
        self.infs = [inf_cls.remote(data, q1.actors, q1.capacity, j, device)
                     for j in range(n_inf)]
        self.started = ray.get([a.start.remote(warmup) for a in self.infs],
                               timeout=START_TIMEOUT_S)
        for s in self.started:
            if "error" in s:
                raise UsageError(s["error"])

    def start_receivers(self) -> None:
        """One receiver actor per address, on the driver's node. Raises UsageError."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray, q1, urls = self.ray, self.q1, self.cfg.urls
        rx_data = self.cfg.model_dump(mode="json")
        if len(urls) > 1:
            rx_data["count"] = None  # the driver counts across receivers
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(),
                                              soft=False)
        rx_cls = ray.remote(num_cpus=0, max_restarts=0, scheduling_strategy=here)(ReceiverActor)
        self.receivers = [rx_cls.remote(rx_data, q1.actors, q1.capacity, (i, len(urls)), url)
                          for i, url in enumerate(urls)]
        for msg in ray.get([r.start.remote() for r in self.receivers], timeout=120):
            if msg is not None:
                raise UsageError(msg)
        if self.cfg.binds_all_interfaces:
            log.warning("binding %s: listening on all interfaces, not only loopback",
                        ", ".join(urls))

    def _replay_results(self, results: list[dict[str, Any]]) -> None:
        assert self.records is not None
        for res in results:
            replay(self.records, res["events"])

    def drive(self, t_start: float) -> list[dict[str, Any]]:
        """Replay the actors' events until every receiver and then every inference
        actor is done (module docstring: end of a run); the receivers' results."""
        ray, records, cfg = self.ray, self.records, self.cfg
        assert records is not None
        n_rx = len(self.receivers)
        rx_results: list[dict[str, Any]] | None = None
        stopping = False
        failure: str | None = None
        t_progress = time.monotonic()
        while True:
            polls = ray.get([a.poll.remote() for a in (*self.receivers, *self.infs)])
            self._replay_results(polls)
            rx_polls, inf_polls = polls[:n_rx], polls[n_rx:]
            failure = failure or next((p["error"] for p in inf_polls if p["error"]), None)
            if failure is not None and rx_results is None:
                ray.get([r.abort.remote() for r in self.receivers])
            if rx_results is None:
                over = cfg.count is not None and n_rx > 1 and records.received >= cfg.count
                broken = any(p["error"] for p in rx_polls)
                if (self.stop.is_set() or over or broken) and not stopping:
                    stopping = True
                    ray.get([r.stop.remote() for r in self.receivers])
                if all(p["done"] for p in rx_polls):
                    rx_results = ray.get([r.result.remote() for r in self.receivers])
                    self._replay_results(rx_results)
                    ray.get([a.input_done.remote() for a in self.infs])
            elif all(p["done"] for p in inf_polls):
                return rx_results
            if time.monotonic() - t_progress >= PROGRESS_S and records.batches:
                t_progress = time.monotonic()
                self.starvation_warnings += report_progress(records, self.q1, t_start,
                                                            self.on_progress, now())[1]
            time.sleep(DRAIN_S)

    def finish_inference(self) -> list[dict[str, Any]]:
        """The inference actors' results (after ``drive``), their last events replayed."""
        inf_results = self.ray.get([a.result.remote() for a in self.infs])
        self._replay_results(inf_results)
        return inf_results

    def summary_extra(self, t_start: float, t_end: float, rx_results: list[dict[str, Any]],
                      inf_results: list[dict[str, Any]]) -> dict[str, Any]:
        """summary.json's run facts, merged over the actors, with the ``ray`` section."""
        started, q1 = self.started, self.q1
        q1_total = _merge_q1([r["q1"] for r in (*rx_results, *inf_results)])
        extra = summary_extra(
            self.cfg, t_start=t_start, t_end=t_end,
            end_reason=_end_reason([r["end_reason"] for r in rx_results]),
            device=started[0]["device"], device_description=started[0]["device_description"],
            q1_stats=q1_total, reordered=sum(r["reordered"] for r in inf_results),
            receiver=_merge_receivers([r["receiver"] for r in rx_results]),
            starvation_warnings=self.starvation_warnings,
            clock_error_s=max(r["clock_error_s"] for r in inf_results),
            ray_address=q1.address,
            host_pool=merge_host_pools([r.get("host_pool") for r in inf_results]),
        )
        extra["ray"] = {
            "actors": True,
            "receivers": [{k: r[k] for k in ("url", "end_reason", "puts", "receiver")}
                          for r in rx_results],
            "inference": [{"number": r["number"], "batches": r["batches"],
                           "device": s["device"], "device_description": s["device_description"]}
                          for r, s in zip(inf_results, started, strict=True)],
            "q1_shards": q1.shards,
        }
        return extra

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        for a in (*self.receivers, *self.infs):
            with contextlib.suppress(Exception):
                self.ray.kill(a, no_restart=True)
        self.q1.close()
        if self.records is not None:
            with contextlib.suppress(Exception):
                self.records.close({"end_reason": "error"})


class _ActorQueues:
    """The driver's Q1 in layout fast on Ray: every inference actor's own
    in-process Q1 seen as one (depth summed over the actors, ``maxsize`` their
    total), for the sampler and the progress line. Starts Ray as RayQ1 does (and
    ``close`` stops it) unless it is up already."""

    def __init__(self, cfg: ConsumerConfig) -> None:
        self._ray = _ray()
        self.owns_ray = False
        if not self._ray.is_initialized():
            init_ray(cfg.ray.address, cfg.ray.num_cpus)
            self.owns_ray = True
        self.address = self._ray.get_runtime_context().gcs_address
        self.per_actor = cfg.queue.maxsize
        self.actors: list[Any] = []

    @property
    def maxsize(self) -> int:
        return self.per_actor * max(1, len(self.actors))

    def depth(self) -> int:
        try:
            return int(sum(self._ray.get([a.depth.remote() for a in self.actors], timeout=10)))
        except Exception:
            return 0

    def close(self) -> None:
        if self.owns_ray:
            self.owns_ray = False
            with contextlib.suppress(Exception):
                self._ray.shutdown()


class _FastRayDriver(_RayDriver):
    """The driver of layout fast on Ray: inference actors that receive for
    themselves (FastInferenceActor), each bound to its share of the addresses;
    the run ends when every one of them is done. Its ``q1`` is an _ActorQueues."""

    def start_inference(self, warmup: bool) -> None:
        """One fast inference actor per device, on the driver's node (the producers
        reach its addresses there), built, warm and listening. Raises UsageError."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray, cfg, urls = self.ray, self.cfg, self.cfg.urls
        n_inf, device, takes_gpu = _plan_inference(ray, cfg)
        if len(urls) < n_inf:
            raise UsageError(
                f"layout fast on Ray: {n_inf} inference actors receive for themselves and "
                f"need an address each, {len(urls)} given (bind one per actor, or set "
                f"ray.inference_actors)")
        data = cfg.model_dump(mode="json")
        if n_inf > 1:
            data["count"] = None  # the driver counts across actors
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(),
                                              soft=False)
        cls = ray.remote(num_cpus=0, num_gpus=1 if takes_gpu else 0, max_restarts=0,
                         scheduling_strategy=here)(FastInferenceActor)
        self.infs = [cls.remote(data, j, device, urls[j::n_inf], (j, n_inf))
                     for j in range(n_inf)]
        self.q1.actors = self.infs
        self.started = ray.get([a.start.remote(warmup) for a in self.infs],
                               timeout=START_TIMEOUT_S)
        for s in self.started:
            if "error" in s:
                raise UsageError(s["error"])
        if cfg.binds_all_interfaces:
            log.warning("binding %s: listening on all interfaces, not only loopback",
                        ", ".join(urls))

    def start_receivers(self) -> None:
        """None to start: each inference actor receives for itself."""

    def drive(self, t_start: float) -> list[dict[str, Any]]:
        """Replay the actors' events until every one is done; a stop (or ``count``
        reached over several actors, or a failed actor) stops them all, and each
        then processes what it had read."""
        ray, records, cfg = self.ray, self.records, self.cfg
        assert records is not None
        stopping = False
        t_progress = time.monotonic()
        while True:
            polls = ray.get([a.poll.remote() for a in self.infs])
            self._replay_results(polls)
            over = cfg.count is not None and len(self.infs) > 1 and records.received >= cfg.count
            failed = any(p["error"] for p in polls)
            if (self.stop.is_set() or over or failed) and not stopping:
                stopping = True
                ray.get([a.stop.remote() for a in self.infs])
            if all(p["done"] for p in polls):
                return []
            if time.monotonic() - t_progress >= PROGRESS_S and records.batches:
                t_progress = time.monotonic()
                self.starvation_warnings += report_progress(records, self.q1, t_start,
                                                            self.on_progress, now())[1]
            time.sleep(DRAIN_S)

    def summary_extra(self, t_start: float, t_end: float, rx_results: list[dict[str, Any]],
                      inf_results: list[dict[str, Any]]) -> dict[str, Any]:
        """summary.json's run facts over the actors; the receiver record as the
        in-process fast layout writes it (busy share: the busiest receiver thread)."""
        started = self.started
        records = [r["receiver"] for r in inf_results if r["receiver"] is not None]
        receiver: dict[str, Any] | None = None
        if len(records) == 1:
            receiver = records[0]
        elif records:
            receiver = _merge_receivers([{k: v for k, v in r.items() if k != "per_receiver"}
                                         for r in records]) or {}
            shares = [r["busy_share"] for r in records if r.get("busy_share") is not None]
            receiver["busy_share"] = max(shares) if shares else None
            receiver["per_receiver"] = [p for r in records for p in r.get("per_receiver", [])]
        extra = summary_extra(
            self.cfg, t_start=t_start, t_end=t_end,
            end_reason=_end_reason([r["end_reason"] for r in inf_results]),
            device=started[0]["device"], device_description=started[0]["device_description"],
            q1_stats=_merge_q1([r["q1"] for r in inf_results]),
            reordered=sum(r["reordered"] for r in inf_results), receiver=receiver,
            starvation_warnings=self.starvation_warnings,
            clock_error_s=max(r["clock_error_s"] for r in inf_results),
            ray_address=self.q1.address,
            host_pool=merge_host_pools([r.get("host_pool") for r in inf_results]),
        )
        extra["ray"] = {
            "actors": True,
            "layout": "fast",
            "receivers": [],
            "inference": [{"number": r["number"], "urls": r["urls"], "end_reason": r["end_reason"],
                           "puts": r["puts"], "batches": r["batches"], "device": s["device"],
                           "device_description": s["device_description"]}
                          for r, s in zip(inf_results, started, strict=True)],
            "q1_shards": 0,
        }
        return extra


def run_ray_consumer(
    cfg: ConsumerConfig,
    out_dir: str | Path,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    on_progress: Any = None,
    warmup: bool = True,
) -> dict[str, Any]:
    """One consumer run on Ray actors into ``out_dir``; returns the summary (as
    :func:`pipeline.consumer.run_consumer`, which calls this). Raises UsageError for
    bad settings (Ray, addresses, devices), RuntimeError when an actor failed."""
    if cfg.mode != "socket":
        raise UsageError("ray.actors needs mode socket (random mode has no receivers)")
    stop = stop or threading.Event()
    d: _RayDriver
    if cfg.layout == "fast":
        d = _FastRayDriver(cfg, _ActorQueues(cfg), stop, on_progress)
    else:
        q1 = RayQ1(cfg.queue.maxsize, cfg.queue.shards, cfg.queue.poll_interval_ms,
                   cfg.ray.address, cfg.ray.num_cpus, cfg.ray.q1_items,
                   preload=(Q1Item.__module__,))
        d = _RayDriver(cfg, q1, stop, on_progress)
    ray = d.ray
    try:
        d.start_inference(warmup)
        d.start_receivers()
        # the records' index streams: one per receiver actor, or per fast inference actor
        streams = len(d.infs) if cfg.layout == "fast" else len(cfg.urls)
        d.records = records = RunRecords(out_dir, streams=streams)
        records.device = d.started[0]["device"] if d.started else None
        d.sampler = Q1Sampler(d.q1, cfg.queue.sample_interval_ms / 1000.0,
                              records.q1_sample).start()
        t_start = now()
        if ready is not None:
            ready.set()
        rx_results = d.drive(t_start)
        inf_results = d.finish_inference()
        t_end = now()
        d.sampler.sample_once()
        d.sampler.stop()
        d.sampler = None
        errors = [r["error"] for r in (*rx_results, *inf_results) if r["error"]]
        if errors:
            raise RuntimeError(f"a consumer actor failed: {errors[0]}")
        summary = records.close(d.summary_extra(t_start, t_end, rx_results, inf_results))
        d.records = None
        if on_progress is not None:
            on_progress({**summary, "final": True})
        return summary
    except ray.exceptions.RayActorError as exc:
        raise RuntimeError(f"a consumer actor died: {exc}") from None
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(
            "the consumer's actors did not start in time: is the cluster short of GPUs "
            "or CPUs for them (ray status)?") from None
    finally:
        stop.set()
        d.close()
