"""Which device the consumer runs on, and how GPU event times map onto the host clock.

CUDA events carry GPU timestamps with no epoch: ``a.elapsed_time(b)`` gives the
milliseconds between two events and nothing else. ``GpuClock`` ties them to
``simstream.clock.now()`` by recording an *anchor* event on an idle stream of its
own, waiting for it, and noting the host time just before the record and just
after the wait. The anchor's GPU timestamp lies between those two host times,
so the midpoint is its host time and half the gap is the alignment error
(typically 10-50 microseconds). Any later event's host time is then
``anchor_host + anchor.elapsed_time(event) / 1000``. The anchor is renewed every
``interval_s`` so the drift between the GPU and host oscillators (parts per
million) stays far below the anchor error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simstream.clock import now
from simstream.errors import UsageError


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device for ``spec``: ``auto`` (CUDA when present, else CPU), ``cpu``,
    ``cuda`` or ``cuda:N``.

    Raises UsageError for an unknown spec or a CUDA device that is not present.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise UsageError(f"device: unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"device: {spec!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise UsageError(f"device: {spec!r} asked for, but torch sees no CUDA device")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"device: {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """One line naming the device, for logs and benchmark output."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{device} {props.name} (compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda})"
        )
    return f"cpu ({torch.get_num_threads()} torch threads, torch {torch.__version__})"


@dataclass(frozen=True)
class Anchor:
    """A CUDA event whose host time is known to within ``error_s`` seconds."""

    event: torch.cuda.Event
    host_time: float
    error_s: float


class GpuClock:
    """Maps CUDA event timestamps onto ``simstream.clock.now()`` (Unix seconds)."""

    def __init__(self, device: torch.device, interval_s: float = 1.0) -> None:
        self.device = device
        self.interval_s = interval_s
        self._stream = torch.cuda.Stream(device)
        self.max_error_s = 0.0
        self.anchors = 0
        self._anchor = self._take()

    def _take(self) -> Anchor:
        event = torch.cuda.Event(enable_timing=True)
        t_before = now()
        event.record(self._stream)
        event.synchronize()
        t_after = now()
        error = (t_after - t_before) / 2
        self.max_error_s = max(self.max_error_s, error)
        self.anchors += 1
        return Anchor(event, (t_before + t_after) / 2, error)

    def current(self) -> Anchor:
        """The anchor to time the next batch with; renewed when older than ``interval_s``."""
        if now() - self._anchor.host_time >= self.interval_s:
            self._anchor = self._take()
        return self._anchor

    @staticmethod
    def host_time(anchor: Anchor, event: torch.cuda.Event) -> float:
        """Host time (Unix seconds) of a *completed* event."""
        return anchor.host_time + anchor.event.elapsed_time(event) / 1000.0
