"""Checks a Bitshuffle chunk (HDF5 filter 32008, hdf5plugin) must pass before the
native filter may decode it.

Why: the filter trusts the chunk's own headers to find its input. Given a stored
chunk of ``nbytes`` bytes it never bounds its reads by ``nbytes``; it reads

    uint64 BE  total uncompressed bytes (the output buffer is malloc'd this size)
    uint32 BE  block size in bytes (divided by the element size: elements per block)
    per block: uint32 BE compressed size n, then n bytes of LZ4 or zstd

and walks ``total / elem_size`` elements in blocks: ``size // block`` full blocks,
one last block of ``size % block`` rounded down to a multiple of 8 elements, then
``(size % 8) * elem_size`` bytes copied raw. Each block's input pointer is the
previous one plus ``4 + n``, and the walk does not stop at a failing block, so a
total larger than the data (one flipped byte) sends every later block to read a
"size" and an LZ4 stream from beyond the chunk: SIGSEGV inside libhdf5's read
(bench/fuzz_decode.py found four). The element size comes from the filter's
cd_values (slot 2); a zero there divides by zero.

The LZ4 and zstd block contents themselves are decoded with LZ4_decompress_safe /
ZSTD_decompress bounded by the block's ``n``, so only the headers need checking: a
walk over one uint32 per block, no decompression. That holds for the hdf5plugin
7.1.0 build in use (its bshuf_decompress_lz4_block calls LZ4_decompress_safe);
bitshuffle's own sources can be built with LZ4_decompress_fast, which reads as far
as the LZ4 stream says, and against such a build corrupt block contents would need
a walk over every LZ4 sequence too.

Everything here is a pure function of bytes and integers; each raises CodecError
with a one-line reason.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from simstream.codec._errors import CodecError

FILTER_ID = 32008
COMPRESS_NONE = 0
COMPRESS_LZ4 = 2
COMPRESS_ZSTD = 3
BLOCKED_MULT = 8  # the filter works in groups of 8 elements
HEADER_BYTES = 12
_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">QI")
_CODECS = {COMPRESS_NONE: "none", COMPRESS_LZ4: "lz4", COMPRESS_ZSTD: "zstd"}


def filter_compression(cd_values: Sequence[int], elem_size: int) -> tuple[int, int]:
    """Validate the filter's client data against the dataset's element size (bytes).

    cd_values as stored in the dataset's filter pipeline: (filter major version,
    minor version, element size, block size in elements, compression[, level]).
    Returns (compression code, block size in elements from cd_values; 0 = the
    filter's default). Raises CodecError when the filter would divide by zero,
    misread the elements, or fall back to decoding compressed bytes as plain.
    """
    if len(cd_values) < 3:
        raise CodecError(f"bitshuffle filter has {len(cd_values)} parameters, needs at least 3")
    if cd_values[2] != elem_size:
        raise CodecError(
            f"bitshuffle filter element size {cd_values[2]} disagrees with the "
            f"dataset's {elem_size}-byte elements"
        )
    block = cd_values[3] if len(cd_values) > 3 else 0
    if block % BLOCKED_MULT:
        raise CodecError(f"bitshuffle filter block size {block} is not a multiple of 8 elements")
    compression = cd_values[4] if len(cd_values) > 4 else COMPRESS_NONE
    if compression not in _CODECS:
        raise CodecError(f"bitshuffle filter compression {compression} is not 0, 2 (lz4) or 3 (zstd)")
    return compression, block


def check_chunk(
    buf: memoryview | bytes,
    start: int,
    nbytes: int,
    *,
    expected: int,
    elem_size: int,
    compression: int,
) -> None:
    """Check the stored chunk ``buf[start:start + nbytes]`` the filter will decode.

    ``expected``: bytes the chunk holds decoded (chunk elements x element size, what
    libhdf5 expects back); ``elem_size`` and ``compression`` as validated by
    ``filter_compression``. Passing means every read the filter makes lies inside
    the chunk and the walk ends exactly at its end. Raises CodecError naming the
    first thing that is wrong.
    """
    end = start + nbytes
    if start < 0 or end > len(buf):
        raise CodecError(f"bitshuffle chunk at bytes {start}..{end} lies outside the {len(buf)}-byte message")
    if compression == COMPRESS_NONE:
        # bitshuffle alone: the filter reads exactly nbytes, in place
        if nbytes != expected:
            raise CodecError(f"bitshuffle chunk holds {nbytes} bytes, its elements need {expected}")
        return
    if nbytes < HEADER_BYTES:
        raise CodecError(f"bitshuffle chunk of {nbytes} bytes is shorter than its 12-byte header")
    total, block_bytes = _HEADER.unpack_from(buf, start)
    if total != expected:
        raise CodecError(
            f"bitshuffle chunk header declares {total} uncompressed bytes, the chunk "
            f"holds {expected}"
        )
    if block_bytes == 0 or block_bytes % elem_size or (block_bytes // elem_size) % BLOCKED_MULT:
        raise CodecError(
            f"bitshuffle chunk block size {block_bytes} bytes is not a positive multiple "
            f"of 8 {elem_size}-byte elements"
        )
    size = total // elem_size
    block = block_bytes // elem_size
    last = size % block - size % block % BLOCKED_MULT
    nblocks = size // block + (1 if last else 0)
    pos = start + HEADER_BYTES
    last_header = end - 4
    unpack = _U32.unpack_from  # one call per block: ~0.1 us, the whole cost on good data
    for i in range(nblocks):
        if pos > last_header:
            raise CodecError(f"bitshuffle chunk ends inside the header of block {i} of {nblocks}")
        n = unpack(buf, pos)[0]
        pos += 4 + n
        if pos > end:
            raise CodecError(
                f"bitshuffle block {i} of {nblocks} declares {n} compressed bytes, "
                f"{pos - end} more than the chunk holds"
            )
    tail = size % BLOCKED_MULT * elem_size
    if pos + tail != end:
        raise CodecError(
            f"bitshuffle chunk blocks and {tail}-byte tail end at byte {pos + tail - start}, "
            f"the chunk holds {nbytes}"
        )
