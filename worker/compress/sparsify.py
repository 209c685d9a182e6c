"""Sparsifiers: keep some coordinates, send (indices, values).

Encoding: uint32 LE count | count indices (sorted, ascending) packed in ceil(log2 d) bits each
(bitpack layout) | the kept values (float32 LE, or another operator's payload in compose.py).

Random sparsification S^q keeps q of the d coordinates uniformly at random (without
replacement) and scales them by d/q: unbiased, omega = d/q - 1 (exact, for every x).
"""
from __future__ import annotations

import abc
import struct

import numpy as np

from .base import Compressor, Reader
from .bitpack import bits_for, pack_uint, packed_size, unpack_uint
from .errors import CompressedFormatError, CompressorInputError, CompressorSpecError


def check_count(value, what: str, who: str) -> int | float:
    """A kept-count parameter: an int >= 1 (a count) or a float in (0, 1] (a fraction of d)."""
    if isinstance(value, bool):
        raise CompressorSpecError(f"{who}: {what}={value!r} must be a count or a fraction")
    if isinstance(value, (int, np.integer)):
        if value < 1:
            raise CompressorSpecError(f"{who}: {what}={value} must be >= 1")
        return int(value)
    if isinstance(value, float) and 0 < value <= 1:
        return value
    raise CompressorSpecError(
        f"{who}: {what}={value!r} must be an integer count >= 1 or a fraction in (0, 1]")


def resolve_count(value: int | float, d: int, what: str, who: str) -> int:
    """Number of kept coordinates for a tensor of d elements (fractions round, at least 1)."""
    count = max(1, round(value * d)) if isinstance(value, float) else value
    if count > d:
        raise CompressorInputError(
            f"{who}: {what}={value} asks for {count} coordinates but the tensor has d={d}")
    return count


def encode_indices(idx: np.ndarray, d: int) -> bytes:
    return struct.pack("<I", idx.size) + pack_uint(idx, bits_for(d))


def decode_indices(r: Reader, d: int, who: str) -> np.ndarray:
    (count,) = r.unpack("<I")
    if not 1 <= count <= d:
        raise CompressedFormatError(f"{who}: {count} kept coordinates for d={d}")
    width = bits_for(d)
    idx = unpack_uint(r.take(packed_size(width, count)), width, count).astype(np.intp)
    if idx[-1] >= d or np.any(np.diff(idx) <= 0):
        raise CompressedFormatError(f"{who}: indices not strictly increasing below d={d}")
    return idx


class Sparsifier(Compressor):
    """Base of the (indices, float32 values) operators."""

    @abc.abstractmethod
    def select(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted kept indices and their (scaled) float32 values."""

    def _encode(self, x, amax, shape):
        idx, vals = self.select(x)
        return encode_indices(idx, x.size) + vals.astype("<f4", copy=False).tobytes()

    def _decode(self, data, shape):
        d = int(np.prod(shape))
        r = Reader(data, self.name)
        idx = decode_indices(r, d, self.name)
        vals = r.array("<f4", idx.size)
        r.done()
        out = np.zeros(d, np.float32)
        out[idx] = vals
        return out


class RandK(Sparsifier):
    """S^q: q uniformly random coordinates scaled by d/q."""

    name = "randk"
    unbiased = True

    def __init__(self, q: int | float = 0.01, seed=None):
        super().__init__(seed)
        self.q = check_count(q, "q", self.name)

    def params(self):
        return {"q": self.q}

    def kept(self, d: int) -> int:
        return resolve_count(self.q, d, "q", self.name)

    def omega(self, d: int) -> float:
        return d / self.kept(d) - 1

    def select(self, x):
        d = x.size
        q = self.kept(d)
        idx = np.sort(self.rng.choice(d, size=q, replace=False, shuffle=False))
        vals = x[idx]
        if q < d:
            vals *= np.float32(d / q)
        return idx, vals
