"""A hostile Bitshuffle chunk is refused before hdf5plugin's filter runs.

bench/fuzz_decode.py (seed 0) found messages whose Bitshuffle chunk header declares
more uncompressed bytes than the chunk holds; hdf5plugin's filter then follows block
"sizes" read from beyond the chunk and the process dies with SIGSEGV inside
libhdf5's read. ``simstream.codec._bitshuffle_guard`` checks every header the filter
trusts. Every decode of an edited message here runs in a child process, so a
regression fails the test instead of killing pytest.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

import h5py
import hdf5plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simstream import codec
from simstream.codec import _bitshuffle_guard as guard
from simstream.codec._errors import CodecError

FIELDS = {"detector_data": "/data/data", "timestamp": "/data/timestamp"}
PATH = "data/data"


# --------------------------------------------------------------------------
# messages and where their Bitshuffle bytes lie


@cache
def message(shape: tuple[int, ...], dtype: str, compression: str = "bitshuffle_lz4") -> bytes:
    """A good message as the emitter makes it: /data/data filtered, one event per chunk."""
    data = np.random.default_rng(7).random(shape) * 100
    arrays = {"detector_data": data.astype(dtype), "timestamp": np.arange(shape[0], dtype=np.float64)}
    # only the detector data filtered: the layout below walks one Bitshuffle dataset
    return codec.encode(arrays, fields=FIELDS, compression=compression, filter_per_event=False)


@cache
def expected_data(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return (np.random.default_rng(7).random(shape) * 100).astype(dtype)


@dataclass(frozen=True)
class Layout:
    """Byte positions, in the message, of what the Bitshuffle filter trusts."""

    chunks: tuple[tuple[int, int], ...]  # (offset, stored size) per chunk, in event order
    blocks: tuple[tuple[int, ...], ...]  # offset of each block's uint32 size, per chunk
    cd_offset: int  # first uint32 of the filter's cd_values
    cd_values: tuple[int, ...]
    filter_offset: int  # the filter message entry: id, name length, flags, cd count


@cache
def layout(msg: bytes) -> Layout:
    with h5py.File(io.BytesIO(msg), "r") as fh:
        dsid = fh[PATH].id
        fid, _flags, cd, name = dsid.get_create_plist().get_filter(0)
        assert fid == guard.FILTER_ID
        found: dict[int, tuple[int, int]] = {}
        dsid.chunk_iter(lambda c: found.__setitem__(c.chunk_offset[0], (c.byte_offset, c.size)))
        chunks = tuple(found[i] for i in sorted(found))
    blocks = []
    for off, _size in chunks:
        # the filter's walk: full blocks, a last block rounded down to 8 elements
        total, block_bytes = struct.unpack_from(">QI", msg, off)
        size, block = total // cd[2], block_bytes // cd[2]
        nblocks = size // block + (1 if size % block >= 8 else 0)
        pos, starts = off + guard.HEADER_BYTES, []
        for _ in range(nblocks):
            starts.append(pos)
            pos += 4 + struct.unpack_from(">I", msg, pos)[0]
        blocks.append(tuple(starts))
    cd_bytes = struct.pack(f"<{len(cd)}I", *cd)
    assert msg.count(cd_bytes) == 1
    cd_offset = msg.index(cd_bytes)
    name_at = msg.index(name)
    assert msg.count(name) == 1
    return Layout(chunks, tuple(blocks), cd_offset, tuple(cd), name_at - 8)


def patch(msg: bytes, at: int, new: bytes) -> bytes:
    return msg[:at] + new + msg[at + len(new):]


# Each edit takes the layout of the good message it started from: an edited message
# is never parsed in this process.


def set_total(msg: bytes, lay: Layout, chunk: int, total: int) -> bytes:
    return patch(msg, lay.chunks[chunk][0], struct.pack(">Q", total))


def set_block_bytes(msg: bytes, lay: Layout, chunk: int, value: int) -> bytes:
    return patch(msg, lay.chunks[chunk][0] + 8, struct.pack(">I", value))


def set_block_size(msg: bytes, lay: Layout, chunk: int, block: int, value: int) -> bytes:
    return patch(msg, lay.blocks[chunk][block], struct.pack(">I", value))


def set_cd(msg: bytes, lay: Layout, slot: int, value: int) -> bytes:
    return patch(msg, lay.cd_offset + 4 * slot, struct.pack("<I", value))


def set_filter_id(msg: bytes, lay: Layout, fid: int) -> bytes:
    return patch(msg, lay.filter_offset, struct.pack("<H", fid))


def set_cd_count(msg: bytes, lay: Layout, count: int) -> bytes:
    return patch(msg, lay.filter_offset + 6, struct.pack("<H", count))


# --------------------------------------------------------------------------
# decoding in a child process

CHILD = r"""
import hashlib, json, pickle, sys
from simstream import codec
for i, payload in enumerate(pickle.load(sys.stdin.buffer)):
    print(json.dumps({"start": i}), flush=True)
    try:
        a = codec.decode(payload, fields={"d": "/data/data"})["d"]
        out = {"i": i, "outcome": "ok", "sha": hashlib.sha256(a.tobytes()).hexdigest()}
    except codec.CodecError as e:
        out = {"i": i, "outcome": "codec", "reason": str(e)}
    except Exception as e:
        out = {"i": i, "outcome": "other", "reason": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
"""


def decode_elsewhere(payloads: list[bytes]) -> list[dict[str, str]]:
    """Decode each payload in one child process; fail naming the input that killed it."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], input=pickle.dumps(payloads), capture_output=True, timeout=120
    )
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    if proc.returncode != 0:
        started = [x["start"] for x in lines if "start" in x]
        sig = -proc.returncode
        what = signal.Signals(sig).name if 0 < sig < 65 else f"status {proc.returncode}"
        pytest.fail(
            f"the decoder died ({what}) on input {started[-1] if started else '?'}: "
            f"{proc.stderr.decode()[-300:]}"
        )
    results = [x for x in lines if "outcome" in x]
    assert len(results) == len(payloads)
    return results


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


# --------------------------------------------------------------------------
# the inputs bench/fuzz_decode.py found (seed 0), rebuilt from a good message

M16 = ((4, 16, 16), "uint16")  # the seed message shape of fuzz inputs 42,646 and 45,940
M64 = ((3, 1, 8, 8), "float64")  # ... of fuzz input 71,091
MBLOCKS = ((2, 1, 3, 1001), "float32")  # a full block, a last block and 3 raw elements

FUZZ_FOUND = [
    # (message, chunk, header total written there): two flipped bytes each
    (M16, 3, 1728053760),  # input 42,646 (also BITSHUFFLE_SEGFAULT in test_campaign_hostile)
    (M16, 1, 57344),  # input 45,940
    (M64, 2, 11207168),  # input 71,091
]


def test_the_fuzz_crashes_are_a_decode_error() -> None:
    payloads = [set_total(message(*m), layout(message(*m)), chunk, total)
                for m, chunk, total in FUZZ_FOUND]
    for (m, chunk, total), r in zip(FUZZ_FOUND, decode_elsewhere(payloads), strict=True):
        per_chunk = int(np.prod(m[0][1:])) * np.dtype(m[1]).itemsize
        assert r["outcome"] == "codec", r
        assert r["reason"] == (
            f"dataset /{PATH} chunk {chunk}: bitshuffle chunk header declares {total} "
            f"uncompressed bytes, the chunk holds {per_chunk}"
        )


def header_edits() -> list[tuple[str, bytes, str]]:
    """(what, payload, expected reason fragment): one edit of each field the filter trusts."""
    m16, mb, mz = message(*M16), message(*MBLOCKS), message(*MBLOCKS, "bitshuffle_zstd")
    l16, lb, lz = layout(m16), layout(mb), layout(mz)
    n0 = struct.unpack_from(">I", mb, lb.blocks[0][0])[0]
    out = [
        ("total one element short", set_total(mb, lb, 0, 12008), "declares 12008 uncompressed"),
        ("total one block more", set_total(mb, lb, 1, 12012 + 8192), "declares 20204 uncompressed"),
        ("total 2**64-1", set_total(m16, l16, 0, 2**64 - 1), "uncompressed bytes, the chunk holds 512"),
        ("zstd total larger", set_total(mz, lz, 0, 1 << 20), "declares 1048576 uncompressed"),
        ("block size 0", set_block_bytes(mb, lb, 0, 0), "block size 0 bytes"),
        ("block size not whole elements", set_block_bytes(mb, lb, 0, 8190), "block size 8190 bytes"),
        ("block size 3 elements", set_block_bytes(mb, lb, 0, 12), "block size 12 bytes"),
        ("block size 2**32-1", set_block_bytes(mb, lb, 0, 2**32 - 1), "block size 4294967295"),
        ("block size 16 elements", set_block_bytes(mb, lb, 0, 64), "block 2 of 188 declares"),
        ("block larger than the data", set_block_bytes(mb, lb, 1, 4 * 4096), "tail end at byte"),
        ("block 0 size 2**32-1", set_block_size(mb, lb, 0, 0, 2**32 - 1), "declares 4294967295 compressed"),
        ("block 0 size 2**31", set_block_size(mb, lb, 0, 0, 2**31), "declares 2147483648 compressed"),
        ("block 0 size one more", set_block_size(mb, lb, 0, 0, n0 + 1), "block 1 of 2 declares"),
        ("block 0 size one less", set_block_size(mb, lb, 0, 0, n0 - 1), "tail end at byte"),
        ("last block past the end", set_block_size(mb, lb, 1, 1, 1 << 20), "block 1 of 2 declares 1048576"),
        ("zstd block past the end", set_block_size(mz, lz, 0, 0, 1 << 16), "declares 65536 compressed"),
        ("cd element size 0", set_cd(mb, lb, 2, 0), "element size 0 disagrees"),
        ("cd element size 1", set_cd(mb, lb, 2, 1), "element size 1 disagrees"),
        ("cd element size 2**31", set_cd(mb, lb, 2, 2**31), "element size 2147483648"),
        ("cd block size 12", set_cd(mb, lb, 3, 12), "block size 12 is not a multiple of 8"),
        ("cd compression none", set_cd(mb, lb, 4, 0), "its elements need 12012"),
        ("cd compression 7", set_cd(mb, lb, 4, 7), "compression 7 is not"),
        ("cd count 4 (no compression)", set_cd_count(mb, lb, 4), "its elements need 12012"),
        ("cd count 2", set_cd_count(mb, lb, 2), "has 2 parameters"),
        ("filter id 32004 (LZ4)", set_filter_id(mb, lb, 32004), "uses HDF5 filter 32004"),
        ("filter id 32015 (zstd)", set_filter_id(mb, lb, 32015), "uses HDF5 filter 32015"),
        ("filter id 32001 (blosc)", set_filter_id(mb, lb, 32001), "uses HDF5 filter 32001"),
    ]
    return out


def test_each_field_the_filter_trusts_is_checked() -> None:
    edits = header_edits()
    results = decode_elsewhere([p for _w, p, _r in edits])
    for (what, _p, fragment), r in zip(edits, results, strict=True):
        assert r["outcome"] == "codec", (what, r)
        assert fragment in r["reason"], (what, r["reason"])


def test_lz4_and_zstd_block_contents_are_decoded_safely() -> None:
    """Flipped bytes inside the compressed blocks (headers intact) reach the filter,
    which bounds LZ4_decompress_safe / ZSTD_decompress by the block's size: a
    decode error or wrong numbers, never a crash."""
    rng = np.random.default_rng(3)
    payloads = []
    for comp in ("bitshuffle_lz4", "bitshuffle_zstd"):
        msg = message(*MBLOCKS, comp)
        lay = layout(msg)
        for _ in range(60):
            buf = bytearray(msg)
            chunk = int(rng.integers(len(lay.chunks)))
            starts = lay.blocks[chunk]
            b = int(rng.integers(len(starts)))
            n = struct.unpack_from(">I", msg, starts[b])[0]
            for _ in range(int(rng.integers(1, 9))):
                buf[starts[b] + 4 + int(rng.integers(n))] ^= int(rng.integers(1, 256))
            payloads.append(bytes(buf))
    results = decode_elsewhere(payloads)
    assert {r["outcome"] for r in results} <= {"ok", "codec"}
    assert any(r["outcome"] == "codec" for r in results)


# --------------------------------------------------------------------------
# random edits of the header fields: never a crash


BASES = [(M16, "bitshuffle_lz4"), (MBLOCKS, "bitshuffle_lz4"), (MBLOCKS, "bitshuffle_zstd"),
         (M64, "bitshuffle_zstd")]
Edit = tuple[str, int, int, int]  # (field, chunk or slot, block or byte, value)


@st.composite
def edit_lists(draw: st.DrawFn) -> tuple[int, tuple[Edit, ...]]:
    """1-3 random edits to what the filter trusts, in one of the BASES (by index).

    Drawn as small tuples, applied by ``apply``: a failing example prints readably.
    """
    base = draw(st.integers(0, len(BASES) - 1))
    (shape, dtype), comp = BASES[base]
    lay = layout(message(shape, dtype, comp))
    per_chunk = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    u32 = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2 * per_chunk),
                    st.sampled_from([0, 1, 8, 2**31, 2**32 - 1]))
    edits: list[Edit] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("total", "block_bytes", "block_size", "cd", "cd_count",
                                     "filter_id", "flip")))
        chunk = draw(st.integers(0, len(lay.chunks) - 1))
        if kind == "total":
            value = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 4 * per_chunk),
                                   st.sampled_from([per_chunk - 1, per_chunk + 1, 2 * per_chunk])))
            edits.append((kind, chunk, 0, value))
        elif kind == "block_bytes":
            edits.append((kind, chunk, 0, draw(u32)))
        elif kind == "block_size":
            edits.append((kind, chunk, draw(st.integers(0, len(lay.blocks[chunk]) - 1)), draw(u32)))
        elif kind == "cd":
            edits.append((kind, draw(st.integers(0, len(lay.cd_values) - 1)), 0, draw(u32)))
        elif kind == "cd_count":
            edits.append((kind, 0, 0, draw(st.integers(0, 8))))
        elif kind == "filter_id":
            edits.append((kind, 0, 0, draw(st.sampled_from(sorted(hdf5plugin.FILTERS.values())))))
        else:  # one byte of the chunk header or of a block size, xor'd
            at = draw(st.integers(0, 12 + 4 * len(lay.blocks[chunk]) - 1))
            edits.append((kind, chunk, at, draw(st.integers(1, 255))))
    return base, tuple(edits)


def apply(spec: tuple[int, tuple[Edit, ...]]) -> bytes:
    base, edits = spec
    (shape, dtype), comp = BASES[base]
    msg = message(shape, dtype, comp)
    lay = layout(msg)
    for kind, a, b, value in edits:
        if kind == "total":
            msg = set_total(msg, lay, a, value)
        elif kind == "block_bytes":
            msg = set_block_bytes(msg, lay, a, value)
        elif kind == "block_size":
            msg = set_block_size(msg, lay, a, b, value)
        elif kind == "cd":
            msg = set_cd(msg, lay, a, value)
        elif kind == "cd_count":
            msg = set_cd_count(msg, lay, value)
        elif kind == "filter_id":
            msg = set_filter_id(msg, lay, value)
        else:
            at = lay.chunks[a][0] + b if b < 12 else lay.blocks[a][(b - 12) // 4] + (b - 12) % 4
            msg = patch(msg, at, bytes([msg[at] ^ value]))
    return msg


@given(st.lists(edit_lists(), min_size=12, max_size=12))
@settings(max_examples=max(4, settings().max_examples // 6))  # a child process per example
def test_random_header_edits_never_crash(batch: list[tuple[int, tuple[Edit, ...]]]) -> None:
    payloads = [apply(spec) for spec in batch]
    results = decode_elsewhere(payloads)
    for spec, payload, r in zip(batch, payloads, results, strict=True):
        assert r["outcome"] in ("ok", "codec"), (spec, r)
        if payload == message(*BASES[spec[0]][0], BASES[spec[0]][1]):  # edits that undo themselves
            assert r["outcome"] == "ok", (spec, r)


# --------------------------------------------------------------------------
# good messages still decode, whatever their shape, dtype, chunking and block size


@given(
    dtype=st.sampled_from(["uint8", "int16", "uint16", "int32", "float32", "float64", "complex64"]),
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=4).map(tuple),
    chunk_fraction=st.floats(0.01, 1.0),
    nelems=st.sampled_from([0, 8, 16, 64, 256, 2048]),
    cname=st.sampled_from(["lz4", "zstd", "none"]),  # none: bitshuffle alone
    seed=st.integers(0, 2**16),
)
def test_good_bitshuffle_messages_decode_to_what_was_written(
    dtype: str, shape: tuple[int, ...], chunk_fraction: float, nelems: int, cname: str, seed: int
) -> None:
    # chunks that do not divide the shape leave edge chunks partly filled
    chunks = tuple(max(1, round(d * chunk_fraction)) for d in shape)
    data = (np.random.default_rng(seed).random(shape) * 50).astype(dtype)
    b = io.BytesIO()
    with h5py.File(b, "w") as fh:
        fh.create_dataset(PATH, data=data, chunks=chunks,
                          compression=hdf5plugin.Bitshuffle(nelems=nelems, cname=cname))
    out = codec.decode(b.getvalue(), fields={"d": "/" + PATH})["d"]
    assert out.dtype == data.dtype and out.shape == data.shape
    assert out.tobytes() == data.tobytes()


@pytest.mark.parametrize("m", [M16, M64, MBLOCKS])
@pytest.mark.parametrize("compression", ["bitshuffle_lz4", "bitshuffle_zstd"])
def test_emitter_messages_decode_unchanged(m: tuple[tuple[int, ...], str], compression: str) -> None:
    out = codec.decode(message(*m, compression), fields={"d": "/" + PATH})["d"]
    assert sha(out) == sha(expected_data(*m))


# --------------------------------------------------------------------------
# the pure checks, on bytes made here


def chunk_bytes(total: int, block_bytes: int, sizes: list[int], tail: int) -> bytes:
    out = struct.pack(">QI", total, block_bytes)
    for n in sizes:
        out += struct.pack(">I", n) + b"\0" * n
    return out + b"\0" * tail


@pytest.mark.parametrize(("elems", "elem_size", "block", "nblocks", "tail"), [
    (256, 2, 4096, 1, 0),  # one last block, smaller than the block size
    (3003, 4, 2048, 2, 12),  # a full block, a last one of 952, 3 elements raw
    (4096, 4, 2048, 2, 0),  # full blocks only
    (5, 8, 2048, 0, 40),  # fewer than 8 elements: all raw
])
def test_check_chunk_accepts_the_layout_the_filter_walks(
    elems: int, elem_size: int, block: int, nblocks: int, tail: int
) -> None:
    buf = chunk_bytes(elems * elem_size, block * elem_size, [7] * nblocks, tail)
    guard.check_chunk(buf, 0, len(buf), expected=elems * elem_size, elem_size=elem_size,
                      compression=guard.COMPRESS_LZ4)
    framed = b"x" * 5 + buf + b"y" * 3  # the chunk inside a message
    guard.check_chunk(framed, 5, len(buf), expected=elems * elem_size, elem_size=elem_size,
                      compression=guard.COMPRESS_ZSTD)
    with pytest.raises(CodecError, match="tail end at byte"):
        guard.check_chunk(framed, 5, len(buf) + 1, expected=elems * elem_size,
                          elem_size=elem_size, compression=guard.COMPRESS_LZ4)


@pytest.mark.parametrize(("buf", "nbytes", "match"), [
    (chunk_bytes(512, 8192, [239], 0)[:11], 11, "shorter than its 12-byte header"),
    (chunk_bytes(513, 8192, [239], 0), None, "declares 513 uncompressed bytes, the chunk holds 512"),
    (chunk_bytes(512, 8192, [], 0), None, "ends inside the header of block 0 of 1"),
    (chunk_bytes(512, 8192, [239], 0)[:-1], None, "declares 239 compressed bytes, 1 more"),
    (chunk_bytes(512, 8192, [239], 1), None, "end at byte 255, the chunk holds 256"),
    (chunk_bytes(512, 24, [239], 0), None, "block size 24 bytes is not a positive multiple of 8"),
    (chunk_bytes(512, 8191, [239], 0), None, "block size 8191 bytes"),
    (chunk_bytes(512, 8192, [239], 0), 400, "outside the"),
])
def test_check_chunk_names_what_is_wrong(buf: bytes, nbytes: int | None, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        guard.check_chunk(buf, 0, len(buf) if nbytes is None else nbytes, expected=512,
                          elem_size=2, compression=guard.COMPRESS_LZ4)


def test_plain_bitshuffle_chunks_must_hold_every_element() -> None:
    guard.check_chunk(b"\0" * 64, 0, 64, expected=64, elem_size=4, compression=guard.COMPRESS_NONE)
    with pytest.raises(CodecError, match="holds 60 bytes, its elements need 64"):
        guard.check_chunk(b"\0" * 60, 0, 60, expected=64, elem_size=4,
                          compression=guard.COMPRESS_NONE)


@pytest.mark.parametrize(("cd", "elem_size", "result"), [
    ((0, 4, 4, 0, 2), 4, (2, 0)),
    ((0, 4, 2, 16, 3, 5), 2, (3, 16)),
    ((0, 4, 8), 8, (0, 0)),
    ((0, 4, 4, 2048), 4, (0, 2048)),
    ((0, 4), 4, "has 2 parameters"),
    ((0, 4, 0, 0, 2), 4, "element size 0 disagrees"),
    ((0, 4, 8, 0, 2), 4, "element size 8 disagrees"),
    ((0, 4, 4, 12, 2), 4, "block size 12 is not a multiple of 8"),
    ((0, 4, 4, 0, 1), 4, "compression 1 is not"),
])
def test_filter_compression(cd: tuple[int, ...], elem_size: int, result: object) -> None:
    if isinstance(result, str):
        with pytest.raises(CodecError, match=result):
            guard.filter_compression(cd, elem_size)
    else:
        assert guard.filter_compression(cd, elem_size) == result


# --------------------------------------------------------------------------
# the same trust one level up: libhdf5 copies a whole chunk out of whatever the
# filter pipeline returned, so a chunk that comes out short is a heap over-read
# (SIGSEGV for a big chunk) whichever filter made it


def hostile_file(compression: str, chunk1: bytes, *, mask: int = 0, missing: bool = False,
                 fletcher32: bool = False) -> bytes:
    """Two 1 MiB events; event 1's chunk stored as ``chunk1`` with filter mask ``mask``
    (bytes written as given: h5py's direct chunk write runs no filter)."""
    shape = (3, 1, 512, 512)
    if compression == "bitshuffle_lz4":
        opts: dict[str, object] = {"compression": hdf5plugin.Bitshuffle(cname="lz4")}
    else:
        opts = {"compression": "gzip", "shuffle": compression == "gzip_with_shuffle"}
    b = io.BytesIO()
    with h5py.File(b, "w") as fh:
        d = fh.create_dataset(PATH, shape=shape, dtype=np.float32, chunks=(1, 1, 512, 512),
                              fletcher32=fletcher32, **opts)  # type: ignore[arg-type]
        d[0] = 1.0
        if not missing:
            d[2] = 2.0
        d.id.write_direct_chunk((1, 0, 0, 0), chunk1, filter_mask=mask)
    return b.getvalue()


def test_chunks_the_pipeline_would_return_short_are_refused() -> None:
    import zlib

    short = zlib.compress(b"\0" * 64)
    long = zlib.compress(b"\0" * (4 << 20))
    cases = [
        # (what, payload, reason fragment)
        ("gzip: a short deflate stream", hostile_file("gzip", short), "inflates to 64 of its 1048576 bytes"),
        ("gzip+shuffle: a short deflate stream", hostile_file("gzip_with_shuffle", short),
         "inflates to 64 of its 1048576 bytes"),
        ("gzip: a long deflate stream", hostile_file("gzip", long), "inflates to more than its 1048576"),
        ("gzip: not deflate", hostile_file("gzip", b"\1" * 300), "chunk 1: not a deflate stream"),
        ("gzip, a chunk missing: short stream", hostile_file("gzip", short, missing=True),
         "its filters give 64 bytes, the chunk holds 1048576"),
        ("gzip+fletcher32: short stream", hostile_file("gzip", short + b"\0" * 4, fletcher32=True),
         "its filters give 64 bytes, the chunk holds 1048576"),
        ("gzip: chunk stored unfiltered, short", hostile_file("gzip", b"\0" * 64, mask=1),
         "its filters give 64 bytes, the chunk holds 1048576"),
        ("bitshuffle: chunk stored unfiltered, short", hostile_file("bitshuffle_lz4", b"\0" * 6000, mask=1),
         "its filters give 6000 bytes, the chunk holds 1048576"),
    ]
    results = decode_elsewhere([p for _w, p, _r in cases])
    for (what, _p, fragment), r in zip(cases, results, strict=True):
        assert r["outcome"] == "codec", (what, r)
        assert fragment in r["reason"], (what, r["reason"])


def test_native_filter_parameters_must_agree_with_the_dataset() -> None:
    """libhdf5 un-shuffles with the element size in shuffle's cd_values and refuses a
    deflate level above 9 even to read; the codec inflates gzip itself, so it
    refuses both as libhdf5 would have read them differently or not at all."""
    msg = message(*M16, "gzip_with_shuffle")  # uint16: shuffle's cd_values hold 2
    shuffle_cd, deflate_cd = msg.index(b"shuffle\0") + 8, msg.index(b"deflate\0") + 8
    assert msg[shuffle_cd:shuffle_cd + 4] == struct.pack("<I", 2)
    cases = [
        (patch(msg, shuffle_cd, struct.pack("<I", 4)), "shuffle filter element size 4 disagrees"),
        (patch(msg, shuffle_cd, struct.pack("<I", 0)), "shuffle filter element size 0 disagrees"),
        (patch(msg, deflate_cd, struct.pack("<I", 10)), "deflate level 10 is not 0..9"),
    ]
    for (_p, fragment), r in zip(cases, decode_elsewhere([p for p, _f in cases]), strict=True):
        assert r["outcome"] == "codec" and fragment in r["reason"], r


def test_a_chunk_the_index_lists_but_a_read_misses_reads_as_libhdf5_reads_it() -> None:
    """Found by comparing the codec's own inflate with libhdf5's over the seed-0 fuzz
    inputs: a flipped byte in a chunk's B-tree key (its extra, element-size
    coordinate) leaves the chunk listed by chunk_iter but not found by a read,
    which gives the fill value. The codec reads what libhdf5 reads."""
    m = ((3, 1, 8, 8), "float64")
    msg = message(*m, "gzip")
    with h5py.File(io.BytesIO(msg), "r") as fh:
        c = fh[PATH].id.get_chunk_info_by_coord((1, 0, 0, 0))
    key = struct.pack("<II", c.size, 0) + struct.pack("<5Q", 1, 0, 0, 0, 0)
    assert msg.count(key) == 1
    bad = patch(msg, msg.index(key) + 8 + 4 * 8 + 4, b"\xf9")
    child = (
        "import sys, hashlib, io, h5py, hdf5plugin; from simstream import codec\n"
        "b = sys.stdin.buffer.read()\n"
        "a = codec.decode(b, fields={'d': '/data/data'})['d']\n"
        "with h5py.File(io.BytesIO(b), 'r') as fh: r = fh['data/data'][()]\n"
        "print(hashlib.sha256(a.tobytes()).hexdigest(), hashlib.sha256(r.tobytes()).hexdigest())\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], input=bad, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    ours, stock = proc.stdout.decode().split()
    expected = expected_data(*m).copy()
    expected[1] = 0.0  # the fill value
    assert ours == stock == sha(expected)
