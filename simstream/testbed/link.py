"""Pure timing maths of the user-space link emulator (``network.emulator: user-link``).

One :class:`Link` is one direction of an emulated link. Packets are offered
with their arrival time and size; the link decides, per packet, whether it is
lost, whether the bounded queue in front of the rate stage has room, when the
rate stage releases it (a byte-accurate token bucket, a mahimahi delivery-
opportunity trace or a time,Mbit/s CSV trace) and when the delay stage hands it
on (latency plus jitter from netem's distributions, packet order kept unless
reordering is asked for). Nothing here reads a clock, sleeps or touches a
device: the forwarder (:mod:`simstream.testbed.linkfwd`) only sleeps until
:meth:`Link.next_due` and writes what :meth:`Link.pop_due` returns, so the
maths is tested in virtual time.

Stages, in the order a packet meets them (as on a real bottleneck, and as
netem+tbf do it): loss on arrival -> drop-tail queue -> rate -> propagation
delay. Times are seconds on the caller's clock; sizes are bytes of IP packet.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simstream.timing import JitterModel

__all__ = [
    "MAHIMAHI_OPPORTUNITY_BYTES",
    "DeliveryTrace",
    "GilbertElliott",
    "Link",
    "LinkParams",
    "LinkStats",
    "RateTrace",
    "load_trace",
    "parse_mahimahi",
    "parse_rate_csv",
]

#: bytes one mahimahi delivery opportunity carries (its MTU-sized "packet").
MAHIMAHI_OPPORTUNITY_BYTES = 1500
#: default depth of the token bucket: one full-size Ethernet frame, so the link
#: sends at line rate for at most one frame (a real link has no burst at all).
DEFAULT_BURST_BYTES = 1514
#: netem's default queue limit, used when the profile names none.
DEFAULT_QUEUE_PACKETS = 1000
#: and in bytes: netem's 1000 packets are full-size Ethernet frames on a real link,
#: whereas the forwarder's TUN devices carry packets of up to 64 KiB; without it the
#: default queue would hold 64 MB (13 s at 40 Mbit/s) instead of netem's 1.5 MB
DEFAULT_QUEUE_BYTES = DEFAULT_QUEUE_PACKETS * DEFAULT_BURST_BYTES


# --------------------------------------------------------------------------
# loss models


@dataclass(frozen=True)
class GilbertElliott:
    """Burst loss: a good and a bad state (netem's ``loss gemodel p r 1-h 1-k``).

    Per packet the state moves good->bad with ``p_pct`` and bad->good with
    ``r_pct``; a packet is then lost with ``bad_loss_pct`` in the bad state and
    ``good_loss_pct`` in the good one. Mean burst length is 100 / r_pct packets;
    the stationary loss rate is :attr:`mean_loss_pct`.
    """

    p_pct: float
    r_pct: float
    bad_loss_pct: float = 100.0
    good_loss_pct: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p_pct", "r_pct", "bad_loss_pct", "good_loss_pct"):
            v = getattr(self, name)
            if not 0 <= v <= 100:
                raise ValueError(f"{name} {v} is not in 0..100")
        if self.p_pct > 0 and self.r_pct == 0:
            raise ValueError("r_pct 0 with p_pct > 0 never leaves the bad state")

    @property
    def mean_loss_pct(self) -> float:
        """Stationary loss rate, percent."""
        if self.p_pct == 0:
            return self.good_loss_pct
        bad = self.p_pct / (self.p_pct + self.r_pct)
        return bad * self.bad_loss_pct + (1 - bad) * self.good_loss_pct


# --------------------------------------------------------------------------
# traces


@dataclass(frozen=True)
class DeliveryTrace:
    """mahimahi's trace: one line per delivery opportunity, its time in ms since start.

    Each opportunity carries MAHIMAHI_OPPORTUNITY_BYTES. The trace repeats
    with a period of its last timestamp, as mahimahi's link shell does.
    """

    opportunities_ms: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.opportunities_ms:
            raise ValueError("delivery trace has no opportunities")
        if self.opportunities_ms[-1] <= 0:
            raise ValueError("delivery trace's last timestamp must be > 0 ms (it is the period)")
        if any(b < a for a, b in zip(self.opportunities_ms, self.opportunities_ms[1:], strict=False)):
            raise ValueError("delivery trace timestamps go backwards")

    @property
    def period_s(self) -> float:
        return self.opportunities_ms[-1] / 1000.0

    @property
    def mean_mbps(self) -> float:
        return len(self.opportunities_ms) * MAHIMAHI_OPPORTUNITY_BYTES * 8 / self.period_s / 1e6


@dataclass(frozen=True)
class RateTrace:
    """A piecewise-constant rate: (start s, Mbit/s) steps, repeating with ``period_s``.

    The last step lasts until the period ends; the period is the last step's
    start plus the previous step's length (the steps are usually regular).
    """

    steps: tuple[tuple[float, float], ...]
    period_s: float

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("rate trace has no rows")
        if self.steps[0][0] != 0:
            raise ValueError(f"rate trace must start at time 0, starts at {self.steps[0][0]}")
        if any(b[0] <= a[0] for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("rate trace times must increase")
        if any(r < 0 for _, r in self.steps):
            raise ValueError("rate trace has a negative rate")
        if all(r == 0 for _, r in self.steps):
            raise ValueError("rate trace never delivers (every rate is 0)")
        if not self.period_s > self.steps[-1][0]:
            raise ValueError("rate trace period must end after its last step")

    @property
    def mean_mbps(self) -> float:
        total = 0.0
        ends = [t for t, _ in self.steps[1:]] + [self.period_s]
        for (t, r), end in zip(self.steps, ends, strict=True):
            total += r * (end - t)
        return total / self.period_s


def parse_mahimahi(lines: Iterable[str], *, source: str = "trace") -> DeliveryTrace:
    """mahimahi's format: one integer millisecond per line (repeats = several opportunities).

    Raises ValueError naming the line that is not one.
    """
    out = []
    for i, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        try:
            v = int(s)
        except ValueError:
            raise ValueError(f"{source} line {i}: {s!r} is not a whole number of ms") from None
        if v < 0:
            raise ValueError(f"{source} line {i}: {v} ms is negative")
        out.append(v)
    return DeliveryTrace(tuple(out))


def parse_rate_csv(lines: Iterable[str], *, source: str = "trace") -> RateTrace:
    """``time_s,mbps`` rows (a header row of words is skipped). Raises ValueError per bad row."""
    steps: list[tuple[float, float]] = []
    for i, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        parts = [p.strip() for p in s.split(",")]
        if len(parts) != 2:
            raise ValueError(f"{source} line {i}: {s!r} is not two columns time_s,mbps")
        try:
            t, r = float(parts[0]), float(parts[1])
        except ValueError:
            if not steps and i == 1:
                continue  # header
            raise ValueError(f"{source} line {i}: {s!r} is not numbers") from None
        if not (math.isfinite(t) and math.isfinite(r)):
            raise ValueError(f"{source} line {i}: {s!r} is not finite")
        steps.append((t, r))
    if not steps:
        raise ValueError(f"{source}: no rows")
    step = steps[-1][0] - steps[-2][0] if len(steps) > 1 else 1.0
    return RateTrace(tuple(steps), steps[-1][0] + step)


def load_trace(path: str | Path) -> DeliveryTrace | RateTrace:
    """A ``.csv`` file is a time,Mbit/s trace; anything else mahimahi's format.

    Raises ValueError (bad content) or OSError (unreadable).
    """
    p = Path(path)
    text = p.read_text().splitlines()
    if p.suffix.lower() == ".csv":
        return parse_rate_csv(text, source=str(p))
    return parse_mahimahi(text, source=str(p))


# --------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class LinkParams:
    """What one direction of the link does. Milliseconds, Mbit/s (10^6 bit/s), percent.

    ``rate_mbps`` None and no ``trace``: no rate stage (the queue is then empty).
    ``trace`` replaces ``rate_mbps``. ``loss_burst`` replaces ``loss_pct``.
    ``queue_bytes``/``queue_packets``: drop-tail limits of the queue in front
    of the rate stage (either or both; neither means netem's 1000 packets, and
    at most their 1 514 000 bytes of full-size frames).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "normal"
    reorder: bool = False
    loss_pct: float = 0.0
    loss_burst: GilbertElliott | None = None
    rate_mbps: float | None = None
    burst_bytes: int = DEFAULT_BURST_BYTES
    trace: DeliveryTrace | RateTrace | None = None
    queue_bytes: int | None = None
    queue_packets: int | None = None

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss_pct {self.loss_pct} is not in 0..100")
        if self.rate_mbps is not None and not self.rate_mbps > 0:
            raise ValueError(f"rate_mbps {self.rate_mbps} is not > 0")
        if self.burst_bytes < 1:
            raise ValueError(f"burst_bytes {self.burst_bytes} is not >= 1")
        if self.queue_bytes is not None and self.queue_bytes < 1:
            raise ValueError(f"queue_bytes {self.queue_bytes} is not >= 1")
        if self.queue_packets is not None and self.queue_packets < 1:
            raise ValueError(f"queue_packets {self.queue_packets} is not >= 1")
        JitterModel(self.delay_ms, self.jitter_ms, self.distribution).draw_s(random.Random(0))

    @property
    def has_rate(self) -> bool:
        return self.rate_mbps is not None or self.trace is not None

    def describe(self) -> list[str]:
        """Human-readable lines of what this direction applies."""
        out = []
        if self.delay_ms or self.jitter_ms:
            line = f"latency {self.delay_ms:g} ms"
            if self.jitter_ms:
                line += f", jitter {self.jitter_ms:g} ms ({self.distribution}"
                line += ", reordering allowed)" if self.reorder else ", order kept)"
            out.append(line)
        if self.loss_burst is not None:
            g = self.loss_burst
            out.append(f"burst loss (Gilbert-Elliott p {g.p_pct:g}%, r {g.r_pct:g}%, "
                       f"bad {g.bad_loss_pct:g}%, good {g.good_loss_pct:g}%; "
                       f"mean {g.mean_loss_pct:.3g}%)")
        elif self.loss_pct:
            out.append(f"random loss {self.loss_pct:g}%")
        if isinstance(self.trace, DeliveryTrace):
            out.append(f"rate from a mahimahi trace ({len(self.trace.opportunities_ms)} "
                       f"opportunities per {self.trace.period_s:g} s, mean "
                       f"{self.trace.mean_mbps:.4g} Mbit/s)")
        elif isinstance(self.trace, RateTrace):
            out.append(f"rate from a time,Mbit/s trace ({len(self.trace.steps)} steps per "
                       f"{self.trace.period_s:g} s, mean {self.trace.mean_mbps:.4g} Mbit/s)")
        elif self.rate_mbps is not None:
            out.append(f"rate cap {self.rate_mbps:g} Mbit/s (token bucket, "
                       f"{self.burst_bytes} B deep)")
        if self.has_rate:
            lim = []
            if self.queue_packets is not None:
                lim.append(f"{self.queue_packets} packets")
            if self.queue_bytes is not None:
                lim.append(f"{self.queue_bytes} bytes")
            out.append("drop-tail queue of " + (
                " or ".join(lim) if lim else f"{DEFAULT_QUEUE_PACKETS} packets or "
                f"{DEFAULT_QUEUE_BYTES} bytes (netem's default in full-size frames)"))
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the forwarder's control messages); see :meth:`from_json`."""
        d: dict[str, Any] = {k: getattr(self, k) for k in (
            "delay_ms", "jitter_ms", "distribution", "reorder", "loss_pct", "rate_mbps",
            "burst_bytes", "queue_bytes", "queue_packets")}
        if self.loss_burst is not None:
            g = self.loss_burst
            d["loss_burst"] = [g.p_pct, g.r_pct, g.bad_loss_pct, g.good_loss_pct]
        if isinstance(self.trace, DeliveryTrace):
            d["trace"] = {"mahimahi": list(self.trace.opportunities_ms)}
        elif isinstance(self.trace, RateTrace):
            d["trace"] = {"steps": [list(s) for s in self.trace.steps],
                          "period_s": self.trace.period_s}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinkParams:
        d = dict(d)
        lb = d.pop("loss_burst", None)
        tr = d.pop("trace", None)
        trace: DeliveryTrace | RateTrace | None = None
        if tr is not None:
            if "mahimahi" in tr:
                trace = DeliveryTrace(tuple(tr["mahimahi"]))
            else:
                trace = RateTrace(tuple((float(a), float(b)) for a, b in tr["steps"]),
                                  float(tr["period_s"]))
        return cls(**d, loss_burst=GilbertElliott(*lb) if lb else None, trace=trace)


# --------------------------------------------------------------------------
# rate stages: given a start time and a packet size, when is its last byte out


class _BucketRate:
    """Token bucket: a packet leaves when the tokens cover it (or the full depth).

    Tokens may go negative (a packet larger than the bucket leaves on a full
    bucket and the debt is paid by the next ones), so over any window the
    bytes released are at most rate * T + depth + one packet, and the mean
    rate is exact to the byte.
    """

    def __init__(self, rate_mbps: float, depth: int, t0: float) -> None:
        self.rate = rate_mbps * 1e6 / 8
        self.depth = float(depth)
        self.tokens = self.depth
        self.t = t0

    def release(self, start: float, nbytes: int) -> float:
        t = max(start, self.t)
        tokens = min(self.depth, self.tokens + (t - self.t) * self.rate)
        need = min(float(nbytes), self.depth)
        if tokens < need:
            t += (need - tokens) / self.rate
            tokens = need
        self.tokens = tokens - nbytes
        self.t = t
        return t


class _OpportunityRate:
    """mahimahi: each opportunity carries 1500 bytes of the queue's head, then is gone.

    A packet larger than one opportunity takes several; bytes left in an
    opportunity go to the next packet only if it is already waiting then.
    """

    def __init__(self, trace: DeliveryTrace, t0: float) -> None:
        self.ms = trace.opportunities_ms
        self.period = trace.period_s
        self.t0 = t0
        self.idx = 0  # next opportunity, counted over all repeats
        self.left = 0  # bytes left in the opportunity idx - 1
        self.last_t = -math.inf

    def _time(self, k: int) -> float:
        cycle, i = divmod(k, len(self.ms))
        return self.t0 + cycle * self.period + self.ms[i] / 1000.0

    def release(self, start: float, nbytes: int) -> float:
        remaining = nbytes
        t = self.last_t
        if self.left and t >= start:
            used = min(self.left, remaining)
            self.left -= used
            remaining -= used
        else:
            self.left = 0
            # skip opportunities that passed with nothing queued
            rel = start - self.t0
            cycle = max(0, int(rel // self.period))
            i = bisect.bisect_left(self.ms, (rel - cycle * self.period) * 1000.0)
            self.idx = max(self.idx, cycle * len(self.ms) + i)
        while remaining > 0:
            t = self._time(self.idx)
            self.idx += 1
            used = min(MAHIMAHI_OPPORTUNITY_BYTES, remaining)
            remaining -= used
            self.left = MAHIMAHI_OPPORTUNITY_BYTES - used
        self.last_t = t
        return t


class _PiecewiseRate:
    """A time-varying rate served as a fluid: the last byte leaves when the integral covers it."""

    def __init__(self, trace: RateTrace, t0: float) -> None:
        self.steps = trace.steps
        self.starts = [s for s, _ in trace.steps]
        self.ends = self.starts[1:] + [trace.period_s]
        self.period = trace.period_s
        self.t0 = t0
        self.busy_until = -math.inf

    def release(self, start: float, nbytes: int) -> float:
        t = max(start, self.busy_until)
        remaining = nbytes * 8 / 1e6  # megabits
        for _ in range(len(self.steps) * 1000 + 1):
            rel = t - self.t0
            cycle = math.floor(rel / self.period)
            local = rel - cycle * self.period
            i = bisect.bisect_right(self.starts, local) - 1
            rate = self.steps[i][1]
            seg_end = self.t0 + cycle * self.period + self.ends[i]
            if seg_end <= t:  # float edge: step to the next segment
                seg_end = t + 1e-12
            cap = rate * (seg_end - t)
            if cap >= remaining and rate > 0:
                t += remaining / rate
                self.busy_until = t
                return t
            remaining -= cap
            t = seg_end
        raise ValueError("rate trace cannot carry this packet within 1000 periods")


# --------------------------------------------------------------------------
# the link


@dataclass
class LinkStats:
    """Counters of one direction since it started."""

    offered: int = 0
    offered_bytes: int = 0
    lost: int = 0
    queue_drops: int = 0
    delivered: int = 0
    delivered_bytes: int = 0
    max_queue_bytes: int = 0
    max_queue_packets: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(order=True)
class _InFlight:
    due: float
    seq: int
    item: Any = field(compare=False)
    size: int = field(compare=False)


class Link:
    """One direction of the emulated link (see the module docstring).

    ``rng`` is the only source of randomness (loss and jitter draws), so a
    seeded Random gives the same decisions for the same offers.
    """

    def __init__(self, params: LinkParams, rng: random.Random, *, t0: float = 0.0) -> None:
        self.rng = rng
        self.stats = LinkStats()
        self._seq = 0
        self._ge_bad = False
        self._queue: deque[tuple[float, int]] = deque()  # (release time, size) not yet released
        self._queued_bytes = 0
        self._fifo: deque[_InFlight] = deque()  # delay stage, order kept
        self._heap: list[_InFlight] = []  # delay stage, reordering allowed
        self._last_due = -math.inf
        self.params = params
        self._jitter = JitterModel(params.delay_ms, params.jitter_ms, params.distribution)
        self._rate: _BucketRate | _OpportunityRate | _PiecewiseRate | None = None
        self._t0 = t0
        self._make_rate(params, t0)

    def _make_rate(self, p: LinkParams, now: float) -> None:
        if isinstance(p.trace, DeliveryTrace):
            self._rate = _OpportunityRate(p.trace, now)
        elif isinstance(p.trace, RateTrace):
            self._rate = _PiecewiseRate(p.trace, now)
        elif p.rate_mbps is not None:
            old = self._rate
            self._rate = _BucketRate(p.rate_mbps, p.burst_bytes, now)
            if isinstance(old, _BucketRate):
                # a new phase keeps the bucket's state (debt included), like tc change
                self._rate.tokens = min(old.tokens, float(p.burst_bytes))
                self._rate.t = old.t
        else:
            self._rate = None

    def set_params(self, now: float, params: LinkParams) -> None:
        """A new phase from ``now`` on. Packets already queued or in flight keep their times;
        a trace restarts at ``now``."""
        if params == self.params:
            return
        old = self.params
        self.params = params
        self._jitter = JitterModel(params.delay_ms, params.jitter_ms, params.distribution)
        if (params.trace, params.rate_mbps, params.burst_bytes) != (
                old.trace, old.rate_mbps, old.burst_bytes):
            self._make_rate(params, now)
        if (old.loss_burst is None) != (params.loss_burst is None):
            self._ge_bad = False

    # ------------------------------------------------------------------ per packet

    def _lost(self) -> bool:
        g = self.params.loss_burst
        if g is not None:
            if self._ge_bad:
                if self.rng.random() * 100 < g.r_pct:
                    self._ge_bad = False
            elif self.rng.random() * 100 < g.p_pct:
                self._ge_bad = True
            pct = g.bad_loss_pct if self._ge_bad else g.good_loss_pct
            return pct > 0 and self.rng.random() * 100 < pct
        p = self.params.loss_pct
        return p > 0 and self.rng.random() * 100 < p

    def queue_at(self, now: float) -> tuple[int, int]:
        """(packets, bytes) waiting for the rate stage at ``now``."""
        self._drain_queue(now)
        return len(self._queue), self._queued_bytes

    def _drain_queue(self, now: float) -> None:
        q = self._queue
        while q and q[0][0] <= now:
            self._queued_bytes -= q.popleft()[1]

    def offer(self, now: float, size: int, item: Any = None) -> str | None:
        """A packet of ``size`` bytes arrives at ``now``.

        Returns None when it is accepted (it comes out of :meth:`pop_due`),
        ``"loss"`` or ``"queue"`` when it is dropped. Offers must come in time order.
        """
        p = self.params
        st = self.stats
        st.offered += 1
        st.offered_bytes += size
        if self._lost():
            st.lost += 1
            return "loss"
        release = now
        if self._rate is not None:
            self._drain_queue(now)
            n, b = len(self._queue), self._queued_bytes
            limit_p, limit_b = p.queue_packets, p.queue_bytes
            if limit_p is None and limit_b is None:
                limit_p, limit_b = DEFAULT_QUEUE_PACKETS, DEFAULT_QUEUE_BYTES
            if (limit_p is not None and n + 1 > limit_p) or (
                    limit_b is not None and b + size > limit_b):
                st.queue_drops += 1
                return "queue"
            release = self._rate.release(now, size)
            if release > now:
                self._queue.append((release, size))
                self._queued_bytes += size
                st.max_queue_packets = max(st.max_queue_packets, len(self._queue))
                st.max_queue_bytes = max(st.max_queue_bytes, self._queued_bytes)
        due = release + self._jitter.draw_s(self.rng)
        self._seq += 1
        if p.reorder:
            heapq.heappush(self._heap, _InFlight(due, self._seq, item, size))
        else:
            due = max(due, self._last_due)
            self._last_due = due
            self._fifo.append(_InFlight(due, self._seq, item, size))
        return None

    def next_due(self) -> float | None:
        """When the earliest accepted packet is due out, or None when none is in flight."""
        cands = []
        if self._fifo:
            cands.append(self._fifo[0].due)
        if self._heap:
            cands.append(self._heap[0].due)
        return min(cands) if cands else None

    def pop_due(self, now: float) -> list[Any]:
        """The items due at or before ``now``, in the order they leave."""
        out: list[_InFlight] = []
        while self._fifo and self._fifo[0].due <= now:
            out.append(self._fifo.popleft())
        while self._heap and self._heap[0].due <= now:
            out.append(heapq.heappop(self._heap))
        if self._fifo and self._heap:
            out.sort()
        for f in out:
            self.stats.delivered += 1
            self.stats.delivered_bytes += f.size
        return [f.item for f in out]

    def in_flight(self) -> int:
        return len(self._fifo) + len(self._heap)


def simulate(link: Link, arrivals: Sequence[tuple[float, int]]) -> list[tuple[int, float]]:
    """Offer ``(time, size)`` arrivals in order; returns ``(index, departure time)`` of each
    delivered packet, in departure order. Virtual time: for tests and the bench."""
    out: list[tuple[int, float]] = []

    def drain(until: float) -> None:
        while True:
            t = link.next_due()
            if t is None or t > until:
                return
            out.extend((i, t) for i in link.pop_due(t))

    for i, (t, size) in enumerate(arrivals):
        drain(t)
        link.offer(t, size, i)
    drain(math.inf)
    return out
