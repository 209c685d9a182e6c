"""Packing of unsigned integer fields of any width 1..32 into bytes, vectorised.

Layout of `count` values of `width` = 8a + b bits (b < 8):
  1. if b > 0: the low b bits of each value as one continuous bit stream, most significant bit
     first, value after value, zero-padded to a whole byte (ceil(count*b/8) bytes);
  2. a byte planes: plane j holds bits [b+8j, b+8j+8) of every value, one byte per value.
Total: ceil(count*b/8) + a*count bytes, i.e. width*count bits plus < 8 bits of padding.
Planes instead of one interleaved stream keep both directions free of per-element loops; the
b-bit stream is built 8 values (= b bytes) at a time in uint64 lanes, a slice of the input at
a time so the temporaries stay small.
"""
from __future__ import annotations

import numpy as np

from .errors import CompressedFormatError

SLICE_GROUPS = 1 << 15  # groups of 8 values per slice: 2^18 values


def packed_size(width: int, count: int) -> int:
    a, b = divmod(width, 8)
    return -(-count * b // 8) + a * count


def uint_dtype(width: int) -> np.dtype:
    """Smallest unsigned dtype holding `width` bits."""
    return np.dtype(np.uint8 if width <= 8 else np.uint16 if width <= 16 else np.uint32)


def bits_for(n_values: int) -> int:
    """Bits of a field that must hold 0..n_values-1 (at least 1)."""
    return max(1, int(n_values - 1).bit_length())


def pack_uint(values: np.ndarray, width: int) -> bytes:
    if not 1 <= width <= 32:
        raise ValueError(f"field width {width} not in 1..32")
    v = np.asarray(values)
    a, b = divmod(width, 8)
    parts = []
    if b:
        parts.append(_pack_low(v, b))
    for j in range(a):
        parts.append(((v >> (b + 8 * j)) & 0xFF).astype(np.uint8).tobytes())
    return b"".join(parts)


def unpack_uint(buf, width: int, count: int) -> np.ndarray:
    """Inverse of pack_uint (values in uint_dtype(width)); `buf` must be exactly
    packed_size(width, count) bytes."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if raw.size != packed_size(width, count):
        raise CompressedFormatError(
            f"packed field: {raw.size} bytes for {count} values of {width} bits")
    a, b = divmod(width, 8)
    dt = uint_dtype(width)
    low_bytes = -(-count * b // 8)
    out = _unpack_low(raw[:low_bytes], b, count).astype(dt, copy=False) if b \
        else np.zeros(count, dt)
    for j in range(a):
        plane = raw[low_bytes + j * count: low_bytes + (j + 1) * count]
        out |= plane.astype(dt) << dt.type(b + 8 * j)
    return out


def _pack_low(v: np.ndarray, b: int) -> bytes:
    n = v.size
    if b == 1:
        return np.packbits((v & 1).astype(np.uint8, copy=False)).tobytes()
    mask = (1 << b) - 1
    shifts = [np.uint64(b * (7 - j)) for j in range(8)]
    parts = []
    step = 8 * SLICE_GROUPS
    for start in range(0, n, step):
        chunk = v[start:start + step]
        groups = -(-chunk.size // 8)
        lanes = np.zeros(groups * 8, np.uint8)
        lanes[:chunk.size] = chunk & mask
        lanes = lanes.reshape(groups, 8)
        acc = np.zeros(groups, np.uint64)
        for j in range(8):  # 8 column passes, not a per-element loop
            acc |= lanes[:, j].astype(np.uint64) << shifts[j]
        # acc holds 8b significant bits; its low b bytes, big-endian, continue the stream
        parts.append(acc.astype(">u8").view(np.uint8).reshape(groups, 8)[:, 8 - b:].tobytes())
    return b"".join(parts)[:-(-n * b // 8)]


def _unpack_low(raw: np.ndarray, b: int, n: int) -> np.ndarray:
    if b == 1:
        return np.unpackbits(raw, count=n)
    out = np.empty(n, np.uint8)
    mask = np.uint64((1 << b) - 1)
    shifts = [np.uint64(b * (7 - j)) for j in range(8)]
    step = 8 * SLICE_GROUPS
    for start in range(0, n, step):
        m = min(step, n - start)
        groups = -(-m // 8)
        chunk = raw[start // 8 * b: start // 8 * b + groups * b]
        words = np.zeros((groups, 8), np.uint8)
        flat = np.zeros(groups * b, np.uint8)
        flat[:chunk.size] = chunk  # the last slice may end inside its final group
        words[:, 8 - b:] = flat.reshape(groups, b)
        acc = words.view(">u8").reshape(groups).astype(np.uint64)
        lanes = np.empty((groups, 8), np.uint8)
        for j in range(8):
            lanes[:, j] = (acc >> shifts[j]) & mask
        out[start:start + m] = lanes.reshape(-1)[:m]
    return out
