"""Payloads: what LCLStreamer would send, one encoded batch per message.

Each message is one batch of B events (``source.batch_size``; the last message of
a finite stream may hold fewer) encoded as one HDF5 or npz file by
``simstream.codec``. Its arrays, all with first dimension B:

================================  =========  ================================================
name (HDF5 path from ``fields``)   dtype      content
================================  =========  ================================================
``detector_data``                  source     (B, *source.shape) images, see below
``timestamp``                      float64    seconds: a fixed epoch (``EPOCH_S``) + event / 120 Hz
``photon_wavelength``              float64    Ångström, ~1.30 with a small per-event spread
``simstream_sequence``             int64      the message's sequence number (all B equal)
``simstream_rank``                 int32      the emitting rank
``simstream_event``                int64      event index within the rank: seq * batch_size + i
``simstream_epoch``                int64      the emitter's start id (all B equal; ``epoch``)
other names in ``fields``          int64 or   constant per-event scalars (LCLStreamer's
                                   float64    IntValue/FloatValue); value from ``source.scalars``
                                              where the profile has it, else 0.0
================================  =========  ================================================

``detector_data``, ``timestamp`` and ``photon_wavelength`` (and extra scalars)
are sent when ``source.fields`` maps them (``detector_data`` always is). The
four ``simstream_*`` fields are simstream's own, so a receiver can count loss,
duplication and reordering: they are added to the fields automatically unless
already mapped, at HDF5 paths ``/simstream/sequence``, ``/simstream/rank``,
``/simstream/event`` and ``/simstream/epoch`` (npz keys: the names). The epoch
tells a restarted emitter's messages (sequence numbers from 0 again) from its
earlier life's: the emitter gives every run a new one, the factory's default
is 0. ``wire_fields(source)`` gives the full
mapping a receiver passes to ``simstream.codec.decode``. A real LCLStreamer
sends none of them; receivers must cope (``docs/formats.md``).

Content (``source.content``):

- ``peaks``: realistic diffraction images: a noisy background (diffuse scatter
  around the beam centre and a solvent ring, Poisson-like counts in ADU) from a
  small precomputed pool, plus ``source.peaks_per_event`` Gaussian Bragg-like
  spots per event, so compression ratios and parse costs are realistic.
- ``random``: noise as LCLStreamer's GenericRandomNumpyArray makes it: floats
  uniform in [0, 1); integers ``randint(0, 255)``, i.e. 0..254 whatever the dtype.
- ``constant``: every value 1.
- ``replay``: events of the detector dataset of real HDF5 or npz file(s)
  (``source.replay_path``; dataset path / key ``fields["detector_data"]``), cycled,
  reshaped to ``source.shape`` and cast to ``source.dtype``.

Images are in ADU; integer dtypes get the counts rounded and clipped to the
dtype's range.

Padding (``source.pad_from: [h, w]``, LCLStreamer's PeaknetPreprocessingPipeline):
the content is made at h x w and zero-padded to the last two dimensions of
``source.shape`` (``source.pad_style`` center or bottom-right), as ``numpy.pad``
with zeros does there. npz messages then carry ``detector_data_original_shape``
(int32 [B, C, h, w]) as the numpy branch's pipeline adds it.

``source.timestamp: random`` / ``source.wavelength: random`` draw those per event
as the numpy branch's GenericRandomTimestamp (uniform in [1.6e9, 1.7e9) s) and
GenericRandomWavelength (uniform in [0.1, 10) Å) do, seeded per event.

Determinism: the same source, seed, rank, epoch and sequence number give a
byte-identical payload (every random draw is seeded from (seed, rank, event);
timestamps are synthetic, never the wall clock).

Pool mode (``source.pool: N``): N full batches are encoded once; message ``seq``
is a copy of batch ``seq % N`` with its per-message fields (``timestamp`` and the
``simstream_*`` fields) rewritten in place at memory speed. In pool mode those
fields are not compressed, for that reason (see ``simstream.codec``); without a
pool every dataset gets the compression, as LCLStreamer's serializers do. The detector data
and wavelengths repeat with period N. A partial last batch is always encoded
afresh.

Payload lifetime: every ``message()`` call returns a new immutable ``bytes``
object; it stays valid as long as it is referenced. With ``scatter=True`` (what
the emitter uses) a pooled message's payload is a ``simstream.codec.Scatter``
instead: read-only views of the pool batch with its rewritten per-message bytes
in between, so a message costs a few small writes and no copy of the batch (the
transport writes the pieces with one scatter system call); it is as immutable
and stays valid as long as it is referenced. Messages made afresh are ``bytes``
either way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simstream import codec
from simstream.profile import ProfileError, Source
from simstream.records.contract import SIMSTREAM_FIELDS

__all__ = [
    "EPOCH_S",
    "EVENT_RATE_HZ",
    "SIMSTREAM_FIELDS",
    "EncodedMessage",
    "MessageFactory",
    "wire_fields",
]

EPOCH_S = 1_700_000_000.0  # 2023-11-14T22:13:20Z: synthetic timestamps start here
EVENT_RATE_HZ = 120.0  # LCLS repetition rate: event i is stamped EPOCH_S + i / 120
WAVELENGTH_A = 1.30
_KNOWN = ("detector_data", "timestamp", "photon_wavelength", *SIMSTREAM_FIELDS)
_PER_MESSAGE = ("timestamp", *SIMSTREAM_FIELDS)  # rewritten in place in pool mode
_BACKGROUNDS = 4  # distinct background images in the peaks pool


@dataclass(frozen=True)
class EncodedMessage:
    """One message a rank sends, encoded (not ``simstream.wire.Message``, a message
    as framed on the wire)."""

    seq: int  # sequence number within the rank, from 0
    events: int  # batch size of this message (the last one may be partial)
    payload: bytes | bytearray | memoryview | codec.Scatter  # the encoded HDF5/npz file


def wire_fields(source: Source) -> dict[str, str]:
    """Every field a message carries: ``source.fields`` plus the simstream fields.

    Raises ProfileError if a simstream field's default path is taken by another field.
    """
    fields = dict(source.fields)
    taken = {p.strip("/"): n for n, p in fields.items()}
    for name, path in SIMSTREAM_FIELDS.items():
        if name in fields:
            continue
        target = path if source.format == "hdf5" else name
        if target.strip("/") in taken:
            raise ProfileError(
                [f"source.fields.{taken[target.strip('/')]}: path {target!r} is reserved "
                 f"for {name}; map {name} elsewhere in source.fields"]
            )
        fields[name] = target
    return fields


def _scalars(source: Source) -> dict[str, int | float]:
    # ``source.scalars`` (name -> value) is where a profile can set the values of
    # LCLStreamer's IntValue/FloatValue sources.
    return dict(getattr(source, "scalars", None) or {})


class MessageFactory:
    """Messages of one rank, generated and encoded on demand.

    Construction does the slow, one-off work (the pool, HDF5 templates for the
    full and the partial last batch), so that ``message()`` costs the same from
    its first call.

    ``message(seq)`` -> EncodedMessage; ``batch(seq)`` -> the arrays before
    encoding (in pool mode: what ``message(seq)`` decodes to). Raises ProfileError
    at construction for a source it cannot generate (e.g. an unreadable replay
    file), ValueError for a ``seq`` out of range.
    """

    def __init__(self, source: Source, *, rank: int = 0, seed: int = 0, epoch: int = 0,
                 scatter: bool = False) -> None:
        self.source = source
        self.scatter = scatter
        self.rank = rank
        self.seed = seed
        self.epoch = int(epoch)
        self.fields = wire_fields(source)
        self.batch_size = source.batch_size
        self.total_messages: int | None = (
            None if source.total_events is None else math.ceil(source.total_events / source.batch_size)
        )
        self._scalars = _scalars(source)
        self._content = _content(source, seed, rank, self.fields)
        self._per_message = [n for n in _PER_MESSAGE if n in self.fields]
        self._pool_mode = bool(source.pool)
        self._pool: list[codec.Rewriter] = []
        if source.pool:
            full = source.pool
            if self.total_messages is not None:
                full = min(full, source.total_events // source.batch_size)  # type: ignore[operator]
            for k in range(full):
                payload = self._encode(self._fresh(k, self.batch_size))
                self._pool.append(codec.Rewriter(payload, self._per_message, fields=self.fields))
        if source.format == "hdf5" and source.compression == "none":
            # build the HDF5 templates now (about a second for 118 MB messages), so
            # message() runs at its steady speed from the first call on
            sizes = {self.batch_size}
            if self.total_messages is not None:
                sizes = {self.events_in(0), self.events_in(self.total_messages - 1)}
            for n in sizes:
                self._encode(self._fresh(0, n))

    # -- sizes

    def events_in(self, seq: int) -> int:
        """Events in message ``seq``. Raises ValueError if there is no such message."""
        if seq < 0 or (self.total_messages is not None and seq >= self.total_messages):
            raise ValueError(f"seq {seq} is out of range (messages: {self.total_messages})")
        if self.source.total_events is None:
            return self.batch_size
        return min(self.batch_size, self.source.total_events - seq * self.batch_size)

    # -- arrays

    def _timestamps(self, events: np.ndarray) -> np.ndarray:
        if self.source.timestamp == "random":
            return np.array([_rng(self.seed, self.rank, int(e), 4).uniform(1.6e9, 1.7e9)
                             for e in events], dtype=np.float64)
        return EPOCH_S + events / EVENT_RATE_HZ

    def _per_message_values(self, seq: int, n: int) -> dict[str, np.ndarray]:
        events = seq * self.batch_size + np.arange(n, dtype=np.int64)
        values: dict[str, np.ndarray] = {
            "timestamp": self._timestamps(events),
            "simstream_sequence": np.full(n, seq, dtype=np.int64),
            "simstream_rank": np.full(n, self.rank, dtype=np.int32),
            "simstream_event": events,
            "simstream_epoch": np.full(n, self.epoch, dtype=np.int64),
        }
        return {k: values[k] for k in self._per_message}

    def _fresh(self, seq: int, n: int) -> dict[str, np.ndarray]:
        events = seq * self.batch_size + np.arange(n, dtype=np.int64)
        out: dict[str, np.ndarray] = {"detector_data": np.asarray(self._content(events))}
        if "photon_wavelength" in self.fields:
            if self.source.wavelength == "random":
                waves = [_rng(self.seed, self.rank, int(e), 3).uniform(0.1, 10.0) for e in events]
            else:
                waves = [WAVELENGTH_A + 0.002 * _rng(self.seed, self.rank, int(e), 3).standard_normal()
                         for e in events]
            out["photon_wavelength"] = np.array(waves, dtype=np.float64)
        for name in self.fields:
            if name not in _KNOWN:
                value = self._scalars.get(name, 0.0)
                dtype = np.int64 if isinstance(value, int) and not isinstance(value, bool) else np.float64
                out[name] = np.full(n, value, dtype=dtype)
        out.update(self._per_message_values(seq, n))
        return {k: out[k] for k in self.fields if k in out}

    def _pooled(self, seq: int, n: int) -> codec.Rewriter | None:
        if self._pool and n == self.batch_size:
            return self._pool[seq % len(self._pool)]
        return None

    def batch(self, seq: int) -> dict[str, np.ndarray]:
        """The arrays of message ``seq`` (name -> array, first dimension = events)."""
        n = self.events_in(seq)
        pooled = self._pooled(seq, n)
        if pooled is None:
            return self._fresh(seq, n)
        arrays = codec.decode(pooled.message, fields=self.fields)
        arrays.update(self._per_message_values(seq, n))
        return arrays

    # -- messages

    def _encode(self, arrays: dict[str, np.ndarray]) -> bytes:
        s = self.source
        original_shapes = None
        if s.format == "npz" and s.pad_from is not None:
            n = len(arrays["detector_data"])
            channels = int(np.prod(s.shape[:-2], dtype=np.int64)) if len(s.shape) > 2 else 1
            original_shapes = {"detector_data": [n, channels, *s.pad_from]}
        return codec.encode(
            arrays,
            format=s.format,
            fields=self.fields,
            compression=s.compression,
            compression_level=s.compression_level,
            # a pool rewrites the per-message fields in place: they stay unfiltered
            filter_per_event=not self._pool_mode,
            original_shapes=original_shapes,
        )

    def cheap(self, seq: int) -> bool:
        """Whether ``message(seq)`` costs next to nothing (a pooled scatter payload:
        a few small writes, no copy of the batch), so a caller need not build it in
        a worker thread."""
        return self.scatter and self._pooled(seq, self.events_in(seq)) is not None

    def message(self, seq: int) -> EncodedMessage:
        """Message ``seq``, encoded; its payload is a new immutable bytes object (a
        Scatter for a pooled message with ``scatter=True``)."""
        n = self.events_in(seq)
        pooled = self._pooled(seq, n)
        payload: bytes | codec.Scatter
        if pooled is None:
            payload = self._encode(self._fresh(seq, n))
        elif self.scatter:
            payload = pooled.parts(self._per_message_values(seq, n))
        else:
            payload = pooled(self._per_message_values(seq, n))
        return EncodedMessage(seq=seq, events=n, payload=payload)


# ----------------------------------------------------------------------------
# content


def _rng(seed: int, rank: int, event: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, rank, event, stream])


def _to_dtype(img: np.ndarray, dtype: np.dtype, *, integral: bool = False) -> np.ndarray:
    """``img`` as ``dtype``; integers rounded (skipped when ``integral``) and clipped.

    May work in place on ``img`` when it is float32/float64.
    """
    if dtype.kind == "f":
        return img.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    if img.dtype.kind != "f":
        return np.clip(img, info.min, info.max).astype(dtype)
    if not integral:
        img = np.rint(img)
    np.clip(img, info.min, info.max, out=img)
    return img.astype(dtype)


def _content(
    source: Source, seed: int, rank: int, fields: dict[str, str]
) -> Callable[[np.ndarray], np.ndarray]:
    shape = tuple(source.shape)
    dtype = np.dtype(source.dtype)
    if source.pad_from is not None:
        inner = _content(source.model_copy(update={"shape": [*shape[:-2], *source.pad_from],
                                                   "pad_from": None}), seed, rank, fields)
        h, w = source.pad_from
        return _Padded(inner, shape, dtype, (h, w), source.pad_style)
    if source.content == "peaks":
        return _Peaks(shape, dtype, source.peaks_per_event, seed, rank)
    if source.content == "random":
        return _Random(shape, dtype, seed, rank)
    if source.content == "constant":
        return lambda events: np.ones((len(events), *shape), dtype=dtype)
    return _Replay(source, fields)


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(panels, H, W): the last two dims are an image, the leading ones panels."""
    if len(shape) == 1:
        return 1, 1, shape[0]
    return int(np.prod(shape[:-2], dtype=np.int64)), shape[-2], shape[-1]


@functools.lru_cache(maxsize=4)
def _backgrounds(image: tuple[int, int, int], seed: int) -> np.ndarray:
    """A pool of background images (ADU), shared by every rank of one seed.

    Read-only; built once per (image shape, seed) in a process: Poisson-like
    noise over 1920x1920 pixels takes a good fraction of a second.
    """
    panels, h, w = image
    rng = np.random.default_rng([seed, 0xB6])
    y = np.arange(h, dtype=np.float32)[:, None] - (h - 1) / 2
    x = np.arange(w, dtype=np.float32)[None, :] - (w - 1) / 2
    r = np.sqrt(y * y + x * x)
    scale = max(h, w) / 2
    # diffuse scatter falling off from the beam centre plus a solvent ring
    level = 6.0 + 30.0 * np.exp(-((r / (0.45 * scale)) ** 2)) + 12.0 * np.exp(
        -(((r - 0.6 * scale) / (0.04 * scale)) ** 2)
    )
    level = level.astype(np.float32)
    pool = np.empty((_BACKGROUNDS, panels, h, w), dtype=np.float32)
    for i in range(_BACKGROUNDS):
        # Poisson-like counts: normal with variance = mean, rounded, never negative
        noise = rng.standard_normal((panels, h, w), dtype=np.float32)
        noise *= np.sqrt(level)
        noise += level
        np.rint(noise, out=noise)
        np.maximum(noise, 0.0, out=noise)
        pool[i] = noise
    pool.flags.writeable = False
    return pool


class _Peaks:
    """Gaussian Bragg-like spots on a noisy background, in ADU."""

    RADIUS = 5  # spot window half-width, pixels

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, peaks: int, seed: int, rank: int) -> None:
        self.shape, self.dtype, self.peaks, self.seed, self.rank = shape, dtype, peaks, seed, rank
        self.image = _image_shape(shape)
        self.pool = _backgrounds(self.image, seed)
        d = np.arange(-self.RADIUS, self.RADIUS + 1)
        self.dy = d[None, :, None]
        self.dx = d[None, None, :]

    def __call__(self, events: np.ndarray) -> np.ndarray:
        panels, h, w = self.image
        out = np.empty((len(events), panels, h, w), dtype=np.float32)
        for i, e in enumerate(events):
            rng = _rng(self.seed, self.rank, int(e), 1)
            out[i] = self.pool[rng.integers(_BACKGROUNDS)]
            k = self.peaks
            if k == 0:
                continue
            panel = rng.integers(panels, size=k)
            cy = rng.uniform(0, h, size=k)
            cx = rng.uniform(0, w, size=k)
            sigma = rng.uniform(0.7, 2.0, size=k)
            amp = 50.0 + rng.exponential(400.0, size=k)
            rows = np.floor(cy).astype(np.int64)[:, None, None] + self.dy
            cols = np.floor(cx).astype(np.int64)[:, None, None] + self.dx
            dist2 = (rows - cy[:, None, None]) ** 2 + (cols - cx[:, None, None]) ** 2
            vals = amp[:, None, None] * np.exp(-dist2 / (2 * sigma[:, None, None] ** 2))
            rows, cols = np.broadcast_arrays(rows, cols)
            pidx = np.broadcast_to(panel[:, None, None], rows.shape)
            ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
            np.add.at(out[i], (pidx[ok], rows[ok], cols[ok]), np.rint(vals[ok]).astype(np.float32))
        # counts are whole numbers already (rounded background and spots)
        return _to_dtype(out.reshape(len(events), *self.shape), self.dtype, integral=True)


class _Padded:
    """Content made at (h, w) and zero-padded to the shape's last two dimensions."""

    def __init__(self, inner: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...],
                 dtype: np.dtype, hw: tuple[int, int], style: str) -> None:
        self.inner, self.shape, self.dtype = inner, shape, dtype
        dh, dw = shape[-2] - hw[0], shape[-1] - hw[1]
        top, left = (dh // 2, dw // 2) if style == "center" else (0, 0)
        self.window = (slice(top, top + hw[0]), slice(left, left + hw[1]))

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = np.zeros((len(events), *self.shape), dtype=self.dtype)
        out[(..., *self.window)] = self.inner(events)
        return out


class _Random:
    """Noise as LCLStreamer's GenericRandomNumpyArray makes it."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, seed: int, rank: int) -> None:
        self.shape, self.dtype, self.seed, self.rank = shape, dtype, seed, rank

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = np.empty((len(events), *self.shape), dtype=self.dtype)
        for i, e in enumerate(events):
            rng = _rng(self.seed, self.rank, int(e), 2)
            if self.dtype.kind == "f":
                gen = np.float64 if self.dtype == np.float64 else np.float32
                out[i] = rng.random(self.shape, dtype=gen)
            else:
                # randint(low=0, high=255).astype(dtype): 0..254 in every integer dtype
                # (int8 wraps 128..254 round to negative values, as astype does)
                out[i] = rng.integers(0, 255, size=self.shape, dtype=np.uint8).astype(self.dtype)
        return out


class _Replay:
    """Events of real HDF5/npz files, cycled."""

    def __init__(self, source: Source, fields: dict[str, str]) -> None:
        paths = source.replay_path
        self.paths = [paths] if isinstance(paths, str) else list(paths or [])
        self.key = fields["detector_data"]
        self.shape = tuple(source.shape)
        self.dtype = np.dtype(source.dtype)
        self.need = int(np.prod(self.shape, dtype=np.int64))
        self.parts: list[tuple[int, Any]] = []  # (events, array-like indexable by event)
        self._files: list[Any] = []
        for i, p in enumerate(self.paths):
            where = "source.replay_path" + (f"[{i}]" if not isinstance(paths, str) else "")
            self.parts.append(self._open(Path(p), where))
        self.total = sum(n for n, _ in self.parts)
        if self.total == 0:
            raise ProfileError(["source.replay_path: the replay files hold no events"])

    def _open(self, p: Path, where: str) -> tuple[int, Any]:
        try:
            with p.open("rb") as fh:
                head = fh.read(8)
        except OSError as e:
            raise ProfileError([f"{where}: {p}: cannot read: {e.strerror or e}"]) from None
        key = self.key.strip("/")
        if head == codec._hdf5.MAGIC:
            import h5py

            f = h5py.File(p, "r")
            self._files.append(f)
            obj = f.get(key)
            if not isinstance(obj, h5py.Dataset):
                have: list[str] = []
                f.visititems(lambda n, o: have.append("/" + n) if isinstance(o, h5py.Dataset) else None)
                f.close()
                raise ProfileError(
                    [f"{where}: {p} has no dataset /{key} (fields.detector_data); "
                     f"datasets: {', '.join(have) or 'none'}"]
                )
            arr: Any = obj
        elif head[:4] == codec._npz.MAGIC:
            with np.load(p, allow_pickle=False) as z:
                name = self.key if self.key in z.files else key
                if name not in z.files:
                    raise ProfileError(
                        [f"{where}: {p} has no key {self.key!r} (fields.detector_data); "
                         f"keys: {', '.join(z.files)}"]
                    )
                arr = z[name]
        else:
            raise ProfileError([f"{where}: {p} is neither HDF5 nor npz"])
        if arr.dtype.kind not in "biuf":
            raise ProfileError([f"{where}: {p}: /{key} has dtype {arr.dtype}, not numeric"])
        if len(arr.shape) < 1:
            raise ProfileError([f"{where}: {p}: /{key} is a scalar, not a list of events"])
        per_event = int(np.prod(arr.shape[1:], dtype=np.int64))
        if per_event != self.need:
            raise ProfileError(
                [f"{where}: {p}: /{key} has events of shape {tuple(arr.shape[1:])} "
                 f"({per_event} values); source.shape {list(self.shape)} needs {self.need}"]
            )
        return int(arr.shape[0]), arr

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = np.empty((len(events), *self.shape), dtype=self.dtype)
        for i, e in enumerate(events):
            g = int(e) % self.total
            for n, arr in self.parts:
                if g < n:
                    out[i] = _to_dtype(np.asarray(arr[g]).reshape(self.shape), self.dtype)
                    break
                g -= n
        return out

    def close(self) -> None:
        for f in self._files:
            f.close()


