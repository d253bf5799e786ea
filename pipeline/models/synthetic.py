"""A workload of known duration, so the consumer's capacity is set exactly in experiments.

Each batch occupies the compute stage for ``compute_ms + compute_ms_per_event * B``
milliseconds, then returns, per event, the sum of its first 16 values (a real data
dependency on the H2D'd batch at negligible cost).

How the time is spent, and why:
- CUDA: ``torch.cuda._sleep(cycles)``, a kernel that spins on the SM clock for a
  number of cycles, queued on the compute stream like any model kernel, so it
  overlaps H2D and D2H of other buffers exactly as a network would. Cycles per ms
  are calibrated once per device with CUDA events after a warm-up that raises the
  clocks (``calibration`` holds the figures). If the SM clock later changes
  (thermal or power capping), the duration scales with it: the engine's compute
  intervals measure what actually happened.
- CPU: a wait until a deadline on ``simstream.clock.now()`` made of
  ``time.sleep`` calls, which release the GIL: the stage is occupied for the
  stated time, like a host thread waiting on a GPU kernel, and the H2D and D2H
  threads keep running. A busy loop would hold the GIL and serialise the stages;
  a numpy workload would compete for the 2 cores with the stages it should
  overlap with. Sleep overshoots by the scheduler's wake-up latency
  (~0.1 ms idle, up to several ms on a loaded machine), never undershoots.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from simstream.clock import now


class SyntheticModel(torch.nn.Module):
    """Occupies the compute stage for ``compute_ms + compute_ms_per_event * B`` ms."""

    def __init__(self, *, compute_ms: float = 10.0, compute_ms_per_event: float = 0.0) -> None:
        super().__init__()
        if compute_ms < 0 or compute_ms_per_event < 0:
            raise ValueError(
                f"compute_ms and compute_ms_per_event must be >= 0, got {compute_ms}, {compute_ms_per_event}"
            )
        self.compute_ms = float(compute_ms)
        self.compute_ms_per_event = float(compute_ms_per_event)
        self.calibration: dict[str, Any] = {}
        self._cycles_per_ms: dict[torch.device, float] = {}

    def duration_ms(self, events: int) -> float:
        """Milliseconds one batch of ``events`` takes."""
        return self.compute_ms + self.compute_ms_per_event * events

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = now()
        ms = self.duration_ms(x.shape[0])
        probe = x.reshape(x.shape[0], -1)[:, :16].float().sum(1)
        if x.is_cuda:
            if ms > 0:
                torch.cuda._sleep(max(1, int(self.cycles_per_ms(x.device) * ms)))
        else:
            deadline = start + ms / 1000.0
            while (remaining := deadline - now()) > 0:
                time.sleep(remaining)
        return probe

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def cycles_per_ms(self, device: torch.device) -> float:
        """GPU spin cycles per millisecond on ``device``, calibrated on first use."""
        if device not in self._cycles_per_ms:
            self._cycles_per_ms[device] = self._calibrate(device)
        return self._cycles_per_ms[device]

    def _calibrate(self, device: torch.device, target_ms: float = 20.0, trials: int = 5) -> float:
        stream = torch.cuda.Stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed(cycles: int) -> float:
            with torch.cuda.stream(stream):
                start.record(stream)
                torch.cuda._sleep(cycles)
                end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end))

        # warm-up: ~100 ms of spinning so the SM clock is at its working speed
        guess = 1_000_000 / max(timed(1_000_000), 1e-3)
        timed(int(guess * 100))
        guess = 1_000_000 / max(timed(1_000_000), 1e-3)
        cycles = int(guess * target_ms)
        measured = [timed(cycles) for _ in range(trials)]
        rate = cycles / statistics.median(measured)
        self.calibration = {
            "device": str(device),
            "method": "torch.cuda._sleep",
            "cycles_per_ms": rate,
            "target_ms": target_ms,
            "measured_ms": measured,
        }
        return rate
