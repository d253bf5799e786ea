"""Random mode's producer: batches made in-process, as production's random producer.

The batch lands directly in the engine's host memory (pinned on CUDA) like a
parsed socket batch, with the same batch size, shape and dtype, so a random run
and a socket run differ only in where the batches come from. Making a batch is
recorded in the parse columns (t_parse_start/end): it is the work that stands
in for receive + parse.

Two ways to make a batch. ``fresh``: ``torch.randn`` into the host array per batch,
as production's random producer does (tens of ms for 8 x 512 x 512 on a small
CPU, which can make the producer, not the consumer, the limit). Default: a few
random batches are drawn once and each batch is a copy of one of them into new
host memory (a memcpy), so random mode stays what the investigation means by it,
a feed with no data bottleneck, while the memory path is the socket path's. A
large batch is copied in parallel chunks (``pipeline.pinned.copy_into``, as the
engine's staging copy): one thread copies about 10 GB/s, so a 236 MB batch would
take 20-odd ms, as long as a fast model's step, and the baseline would measure
the copy, not the consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from simstream.clock import now

__all__ = ["RandomSource"]


class RandomSource:
    """``next()`` -> (data, release, t_start, t_end); data is (batch_size, *shape).

    ``host_alloc(shape, dtype) -> (array, release)`` is ``engine.host_array``;
    ``seed`` makes the content reproducible (it never affects timing maths);
    ``clock``: where the times are read (``simstream.clock.now``).
    """

    def __init__(
        self,
        batch_size: int,
        shape: Sequence[int],
        dtype: str,
        host_alloc: Callable[[tuple[int, ...], Any], tuple[np.ndarray, Callable[[], None]]],
        seed: int = 0,
        fresh: bool = False,
        pool: int = 4,
        clock: Callable[[], float] = now,
    ) -> None:
        self.clock = clock
        self.shape = (int(batch_size), *(int(d) for d in shape))
        self.dtype = np.dtype(dtype)
        self.host_alloc = host_alloc
        self.fresh = fresh
        self._gen = torch_generator(seed)
        self._pool = [] if fresh else [self._draw(np.empty(self.shape, self.dtype)) for _ in range(pool)]
        from .pinned import copy_into  # torch, as _draw: imported where batches are made

        self._copy = copy_into
        self._n = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def _draw(self, out: np.ndarray) -> np.ndarray:
        import torch

        if self.dtype.kind == "f" and self.dtype.itemsize >= 4:
            torch.randn(self.shape, out=torch.from_numpy(out), generator=self._gen)
        elif self.dtype.kind == "f":
            out[...] = torch.randn(self.shape, generator=self._gen).numpy()
        else:
            high = min(int(np.iinfo(self.dtype).max), 4096)
            out[...] = torch.randint(0, high + 1, self.shape, generator=self._gen).numpy()
        return out

    def next(self) -> tuple[np.ndarray, Callable[[], None], float, float]:
        t0 = self.clock()
        arr, release = self.host_alloc(self.shape, self.dtype)
        if self.fresh:
            self._draw(arr)
        else:
            self._copy(arr, self._pool[self._n % len(self._pool)])
            self._n += 1
        return arr, release, t0, self.clock()


def torch_generator(seed: int) -> Any:
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g
