"""Random mode's producer: batches made in-process, as production's random producer.

The batch lands directly in the engine's host memory (pinned on CUDA) like a
parsed socket batch, with the same batch size, shape and dtype, so a random run
and a socket run differ only in where the batches come from. Making a batch is
recorded in the parse columns (t_parse_start/end): it is the work that stands
in for receive + parse.
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
    ``seed`` makes the content reproducible (it never affects timing maths).
    """

    def __init__(
        self,
        batch_size: int,
        shape: Sequence[int],
        dtype: str,
        host_alloc: Callable[[tuple[int, ...], Any], tuple[np.ndarray, Callable[[], None]]],
        seed: int = 0,
    ) -> None:
        self.shape = (int(batch_size), *(int(d) for d in shape))
        self.dtype = np.dtype(dtype)
        self.host_alloc = host_alloc
        self.rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def next(self) -> tuple[np.ndarray, Callable[[], None], float, float]:
        t0 = now()
        arr, release = self.host_alloc(self.shape, self.dtype)
        if self.dtype in (np.float32, np.float64):
            self.rng.standard_normal(out=arr, dtype=self.dtype.type)
        elif self.dtype.kind == "f":
            arr[...] = self.rng.standard_normal(self.shape, dtype=np.float32)
        else:
            info = np.iinfo(self.dtype)
            arr[...] = self.rng.integers(0, min(int(info.max), 4096), self.shape, dtype=self.dtype,
                                         endpoint=True)
        return arr, release, t0, now()
