"""Pure timing maths for the emitter: token bucket, jitter draws, phases.

Nothing here reads a clock or sleeps: every function takes the time (seconds,
on whatever monotonic clock the caller uses) and an injected ``random.Random``,
and returns the time at which something may happen. The async engine only
sleeps until the times computed here, so the maths is tested directly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from simstream.profile import NetworkConditions, NetworkOverride, Phase, Timeline

__all__ = [
    "NETEM_DIST_SCALE",
    "JitterModel",
    "PhaseWindow",
    "TokenBucket",
    "effective_network",
    "netem_standard_value",
    "pareto_cdf",
    "pareto_mean",
    "paretonormal_quantile",
    "phase_at",
    "phase_windows",
    "preserve_order",
]

# --------------------------------------------------------------------------
# token bucket over bytes


class TokenBucket:
    """A token bucket over bytes: ``rate_bytes_per_s`` sustained, ``burst_bytes`` at once.

    The bucket holds at most ``burst_bytes`` tokens and starts full. Releasing
    n bytes needs n tokens, so over ANY window [a, b] the bytes released are at
    most ``rate * (b - a) + burst`` (the tokens present at a plus the refill).
    A request larger than the burst cannot be honoured that way and raises
    ValueError: the caller cuts a large message into chunks no larger than the
    burst (the transport calls the gate once per chunk), which paces the
    message across its whole length.

    Releases are *reservations*: :meth:`reserve` books the bytes at the
    returned time even if it lies in the future, so several writers sharing one
    bucket (``bandwidth_scope: aggregate``) are served in request order and the
    bound above still holds. Times are seconds on the caller's clock.
    """

    __slots__ = ("_rate", "burst", "_tokens", "_t")

    def __init__(self, rate_bytes_per_s: float, burst_bytes: float, *, t0: float = 0.0) -> None:
        if not rate_bytes_per_s > 0:
            raise ValueError(f"rate_bytes_per_s must be > 0, got {rate_bytes_per_s!r}")
        if not burst_bytes > 0:
            raise ValueError(f"burst_bytes must be > 0, got {burst_bytes!r}")
        self._rate = float(rate_bytes_per_s)
        self.burst = float(burst_bytes)
        self._tokens = self.burst
        self._t = t0

    @property
    def rate(self) -> float:
        """Sustained rate, bytes per second."""
        return self._rate

    def tokens_at(self, t: float) -> float:
        """Tokens (bytes) available at time t, given no further reservation."""
        if t <= self._t:
            return self._tokens
        return min(self.burst, self._tokens + (t - self._t) * self._rate)

    def next_release(self, now: float, nbytes: float) -> float:
        """The earliest time >= now at which ``nbytes`` may go. Pure: no state change.

        Raises ValueError if nbytes exceeds the burst (see the class docstring).
        """
        if nbytes > self.burst:
            raise ValueError(f"{nbytes} bytes exceed the bucket's burst of {self.burst:g} bytes")
        t = max(now, self._t)
        have = self.tokens_at(t)
        if have >= nbytes:
            return t
        return t + (nbytes - have) / self._rate

    def take(self, t: float, nbytes: float) -> None:
        """Book ``nbytes`` released at time t (t from :meth:`next_release`)."""
        self._tokens = self.tokens_at(t) - nbytes
        self._t = max(t, self._t)

    def reserve(self, now: float, nbytes: float) -> float:
        """:meth:`next_release` then :meth:`take`; returns the release time."""
        t = self.next_release(now, nbytes)
        self.take(t, nbytes)
        return t

    def set_rate(self, now: float, rate_bytes_per_s: float,
                 burst_bytes: float | None = None) -> None:
        """Change the sustained rate (and optionally the burst) from ``now`` on: a new phase.

        Tokens earned up to ``now`` stay, filling up to the larger of the two bursts,
        then clipped to the new one. Raises ValueError for a rate or burst <= 0.
        """
        if not rate_bytes_per_s > 0:
            raise ValueError(f"rate_bytes_per_s must be > 0, got {rate_bytes_per_s!r}")
        if burst_bytes is not None and not burst_bytes > 0:
            raise ValueError(f"burst_bytes must be > 0, got {burst_bytes!r}")
        new_burst = self.burst if burst_bytes is None else float(burst_bytes)
        if rate_bytes_per_s == self._rate and new_burst == self.burst:
            return
        if now > self._t:
            self.burst = max(self.burst, new_burst)
            self._tokens = self.tokens_at(now)
            self._t = now
        self.burst = new_burst
        self._tokens = min(self._tokens, new_burst)
        self._rate = float(rate_bytes_per_s)


# --------------------------------------------------------------------------
# jitter with netem's meanings

#: netem stores its distribution tables as int16 scaled by this factor, so a
#: table value v means ``v / NETEM_DIST_SCALE`` standard units of jitter.
NETEM_DIST_SCALE = 8192
_Z_MIN = -32768 / NETEM_DIST_SCALE  # int16 limits of netem's tables
_Z_MAX = 32767 / NETEM_DIST_SCALE
_PARETO_A = 3.0  # netem's pareto.c / paretonormal.c shape


def _pareto_z(p: float) -> float:
    """netem's pareto table value at quantile p, in units of jitter.

    iproute2 ``netem/pareto.c``: u = 1 - p in (0, 1], x = u^(-1/a) with a = 3
    (a Pareto(shape 3, scale 1) draw, mean 1.5), centred on its mean and scaled
    by 4/3, capped at the int16 table limit (~4 units).
    """
    u = 1.0 - p
    return min(_Z_MAX, (u ** (-1.0 / _PARETO_A) - 1.5) * (4.0 / 3.0))


def _normal_ppf(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(min(max(p, 1e-300), 1 - 1e-16))


def netem_standard_value(distribution: str, p: float) -> float:
    """The standardised delay offset (units of jitter) netem gives at quantile p in [0, 1).

    - ``uniform``: netem's built-in default: uniform on [-1, 1).
    - ``normal``: the standard normal quantile (netem's normal table).
    - ``pareto``: see :func:`_pareto_z` (Pareto shape 3, centred, x 4/3, capped at ~4).
    - ``paretonormal``: netem's paretonormal.c: ``(normal + 3 * pareto) / 4`` where
      BOTH terms are taken at the same quantile p (one table index), clipped to
      the int16 table range [-4, ~4). It is therefore monotone in p, and the
      function is exactly its quantile function.
    """
    if distribution == "uniform":
        return 2.0 * p - 1.0
    if distribution == "normal":
        return min(_Z_MAX, max(_Z_MIN, _normal_ppf(p)))
    if distribution == "pareto":
        return _pareto_z(p)
    if distribution == "paretonormal":
        normal = max(_Z_MIN, min(_Z_MAX, _normal_ppf(p)))
        return min(_Z_MAX, max(_Z_MIN, (normal + 3.0 * _pareto_z(p)) / 4.0))
    raise ValueError(f"unknown jitter distribution {distribution!r}")


def paretonormal_quantile(p: float) -> float:
    """Quantile function of netem's paretonormal, standard units (see netem_standard_value)."""
    return netem_standard_value("paretonormal", p)


def pareto_cdf(z: float) -> float:
    """CDF of netem's (capped) pareto in standard units: P(Z <= z)."""
    if z >= _Z_MAX:
        return 1.0
    x = 0.75 * z + 1.5
    if x <= 1.0:
        return 0.0
    return 1.0 - x ** (-_PARETO_A)


def pareto_mean() -> float:
    """Mean of netem's capped pareto, standard units (slightly below 0 because of the cap)."""
    x_max = 1.5 + 0.75 * _Z_MAX
    u0 = x_max ** (-_PARETO_A)
    # E[min(U^(-1/3), x_max)] = u0 * x_max + integral_{u0}^{1} u^(-1/3) du
    e_x = u0 * x_max + 1.5 * (1.0 - u0 ** (2.0 / 3.0))
    return (e_x - 1.5) * (4.0 / 3.0)


@dataclass(frozen=True)
class JitterModel:
    """netem ``delay LATENCY JITTER distribution D`` in user space.

    A draw is ``latency + jitter * Z`` with Z from :func:`netem_standard_value`
    at a uniform quantile drawn from the injected RNG; the delay is clipped at 0
    (a message never leaves before it is ready). Milliseconds in, seconds out.
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "normal"

    @classmethod
    def from_network(cls, net: NetworkConditions) -> JitterModel:
        return cls(net.latency_ms, net.jitter_ms, net.jitter_distribution)

    def draw_s(self, rng: random.Random) -> float:
        """One delay in seconds (>= 0). Consumes exactly one ``rng.random()``."""
        p = rng.random()
        if self.jitter_ms == 0.0:
            return self.latency_ms / 1000.0
        z = netem_standard_value(self.distribution, p)
        return max(0.0, self.latency_ms + self.jitter_ms * z) / 1000.0


def preserve_order(t_ready: float, t_previous: float | None) -> float:
    """Send time on one ordered stream: never before the previous message.

    This is what keeps latency from capping throughput: a delayed message shifts
    the schedule (every message leaves ``latency`` later), it does not add a
    sleep after each send, so sends stay pipelined.
    """
    return t_ready if t_previous is None else max(t_ready, t_previous)


# --------------------------------------------------------------------------
# phases


def effective_network(base: NetworkConditions, override: NetworkOverride | None) -> NetworkConditions:
    """Base network conditions with a phase's overrides; unset keys inherit from base."""
    if override is None:
        return base
    changes = {k: v for k, v in override.model_dump().items() if v is not None}
    if not changes:
        return base
    return base.model_copy(update=changes)


@dataclass(frozen=True)
class PhaseWindow:
    """One occurrence of a phase: [start_s, end_s) seconds of schedule time.

    ``end_s`` is None for an open-ended last phase. ``cycle`` counts repeats.
    """

    index: int
    phase: Phase
    start_s: float
    end_s: float | None
    cycle: int


def phase_windows(timeline: Timeline, *, start_s: float = 0.0) -> Iterator[PhaseWindow]:
    """The phase windows in order; endless when the timeline repeats (the caller bounds it)."""
    t = start_s
    cycle = 0
    while True:
        for i, ph in enumerate(timeline.phases):
            end = None if ph.duration_s is None else t + ph.duration_s
            yield PhaseWindow(i, ph, t, end, cycle)
            if end is None:
                return
            t = end
        if not timeline.repeat:
            return
        cycle += 1


def phase_at(timeline: Timeline, t: float) -> PhaseWindow | None:
    """The window containing schedule time t >= 0; None once a non-repeating timeline is over."""
    if t < 0:
        t = 0.0
    phases = timeline.phases
    if timeline.repeat and all(p.duration_s is not None for p in phases):
        period = sum(p.duration_s for p in phases)  # type: ignore[misc]
        cycle = int(t // period)
        t0: float = cycle * period
        for i, ph in enumerate(phases):
            end = t0 + ph.duration_s  # type: ignore[operator]
            if t < end:
                return PhaseWindow(i, ph, t0, end, cycle)
            t0 = end
        # rounding put t at the very end of the period
        return PhaseWindow(0, phases[0], t0, t0 + phases[0].duration_s, cycle + 1)  # type: ignore[operator]
    for w in phase_windows(timeline):
        if w.end_s is None or t < w.end_s:
            return w
    return None


def message_times(window: PhaseWindow) -> Iterator[float]:
    """Offered send times of one window (schedule seconds): every 1/rate_hz from its start.

    Endless for an open-ended or as-fast-as-possible window (the caller bounds it);
    nothing for a silent one (rate 0). Times are computed as start + k / rate, so
    rounding does not accumulate over long phases.
    """
    rate = window.phase.rate_hz
    if rate == 0:
        return
    k = 0
    while True:
        t = window.start_s if rate is None else window.start_s + k / rate
        if window.end_s is not None and t >= window.end_s:
            return
        yield t
        k += 1


def chunk_and_burst(rate_bytes_per_s: float) -> int:
    """Chunk size (= bucket burst) for pacing at a rate: ~2 ms of traffic, 4 KiB..1 MiB.

    Small enough that a cap is smooth at the millisecond scale, large enough that
    the gate is called at most a few thousand times a second.
    """
    return int(min(1 << 20, max(4096, rate_bytes_per_s * 0.002)))


def mbps_to_bytes_per_s(mbps: float) -> float:
    """Megabits per second (10^6 bit/s) to bytes per second."""
    return mbps * 1e6 / 8.0


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
