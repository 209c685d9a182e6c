"""Random dithering (Horvath et al., "Natural Compression for Distributed Deep Learning").

Both operators send ||x||_p and, per coordinate, a sign and a random level of |x_i|/||x||_p:
  D_sta^{p,s}  levels 0, 1/s, 2/s, ..., 1           (QSGD-style standard dithering)
  D_nat^{p,s}  levels 0, 2^(1-s), 2^(2-s), ..., 1/2, 1  (natural dithering)
rounding to one of the two levels around t_i = |x_i|/||x||_p with the probabilities that keep
the mean. Natural dithering is C_nat applied to t_i, with the powers under 2^(1-s) re-rounded
to 0 or 2^(1-s) -- exactly the two-level rule there, and the same random source.

Encoding (both): norm as little-endian float32 | levels 0..s packed in ceil(log2(s+1)) bits
each (bitpack layout) | sign bit plane (np.packbits, d bits; 1 = negative).
"""
from __future__ import annotations

import math
import struct

import numpy as np

from .base import FLOAT32_MAX, Compressor, Reader, take_chunked
from .bitpack import bits_for, pack_uint, packed_size, unpack_uint
from .errors import CompressedFormatError, CompressorInputError, CompressorSpecError
from .natural import natural_codes

P_VALUES = (1.0, 2.0, math.inf)
MAX_NAT_LEVELS = 127  # 2^(1-s) must stay a normal float32 (>= 2^-126)
MAX_STA_LEVELS = 1 << 16  # t * s in float32 must resolve the fractional part
BLOCK = 1 << 16  # elements per block of float32 temporaries


def check_p(p) -> int | float:
    """The norm index as 1, 2 or math.inf (ints print as p=1 / p=2 in specs)."""
    try:
        pf = float(p)
    except (TypeError, ValueError):
        pf = math.nan
    if pf not in P_VALUES:
        raise CompressorSpecError(f"norm p={p!r} not supported; use 1, 2 or inf")
    return pf if pf == math.inf else int(pf)


def check_levels(s, limit: int, who: str) -> int:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= limit:
        raise CompressorSpecError(f"{who}: levels s={s!r} must be an integer in 1..{limit}")
    return int(s)


def _blockwise_sum(x: np.ndarray, reduce_) -> float:
    """Sum of float32 reductions of blocks of x in a Python float (float64): accurate to ~1e-6
    without a float64 copy of x; a block whose float32 result overflows is redone in float64."""
    total = 0.0
    with np.errstate(over="ignore"):
        for i in range(0, x.size, BLOCK):
            b = x[i:i + BLOCK]
            v = float(reduce_(b))
            total += v if math.isfinite(v) else float(reduce_(b.astype(np.float64)))
    return total


def p_norm(x: np.ndarray, p: float, amax: float, who: str) -> np.float32:
    """||x||_p rounded to the float32 that goes on the wire, never below max|x| (so t <= 1)."""
    if p == math.inf:
        norm = amax
    elif p == 1:
        norm = _blockwise_sum(x, lambda b: np.abs(b).sum())
    else:
        norm = math.sqrt(_blockwise_sum(x, lambda b: np.dot(b, b)))
    if norm > FLOAT32_MAX:
        raise CompressorInputError(
            f"{who}: ||x||_{p:g} = {norm:.3g} overflows float32; scale the gradient down")
    return max(np.float32(norm), np.float32(amax))


def omega_sta(d: int, s: int, p: float) -> float:
    """Variance bound of D_sta^{p,s}: min(d^(2/r)/s^2, d^(1/r)/s), r = min(p, 2).

    For p = 2 this is QSGD's min(d/s^2, sqrt(d)/s) (Alistarh et al., Lemma 3.1). For p = 1 the
    first term must be d^2/s^2 (d/s^2 fails, e.g. x = ones(d)); derivation in the docs.
    """
    r = min(p, 2.0)
    return min(d ** (2 / r) / s ** 2, d ** (1 / r) / s)


def omega_nat(d: int, s: int, p: float) -> float:
    """Variance bound of D_nat^{p,s}: 1/8 + d^(1/r) 2^(1-s) min(1, d^(1/r) 2^(1-s)), r = min(p,2)
    (Horvath et al., natural dithering theorem)."""
    a = d ** (1 / min(p, 2.0)) * 2.0 ** (1 - s)
    return 1 / 8 + a * min(1.0, a)


def standard_levels(x: np.ndarray, norm: np.float32, s: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Random level l_i in 0..s with E[l_i] = s |x_i| / norm (unbiased up to float32 rounding)."""
    out = np.empty(x.size, np.uint8 if s < 256 else np.uint32)
    for i in range(0, x.size, BLOCK):  # blocks bound the float32 temporaries
        t = np.abs(x[i:i + BLOCK])
        t /= norm   # correctly rounded, so |x_i| <= norm gives t <= 1
        t *= np.float32(s)
        lev = out[i:i + BLOCK]
        lev[:] = t  # truncation = floor, t >= 0
        t -= lev    # fractional part: probability of the upper level
        lev += rng.random(t.size, dtype=np.float32) < t
    return out


def _sign_plane(x: np.ndarray) -> bytes:
    return np.packbits(np.signbit(x)).tobytes()


class _Dither(Compressor):
    unbiased = True
    max_levels = 1

    def __init__(self, s: int = 7, p: float = math.inf, seed=None):
        super().__init__(seed)
        self.s = check_levels(s, self.max_levels, self.name)
        self.p = check_p(p)
        self.width = bits_for(self.s + 1)

    def params(self):
        return {"s": self.s, "p": self.p}

    def _encode(self, x, amax, shape):
        norm = p_norm(x, self.p, amax, self.name)
        if norm == 0:
            levels = np.zeros(x.size, np.uint8)
        else:
            levels = self._levels(x, norm)
        return struct.pack("<f", norm) + pack_uint(levels, self.width) + _sign_plane(x)

    def _decode(self, data, shape):
        d = int(np.prod(shape))
        r = Reader(data, self.name)
        (norm,) = r.unpack("<f")
        levels = unpack_uint(r.take(packed_size(self.width, d)), self.width, d)
        signs = np.unpackbits(r.array(np.uint8, -(-d // 8)), count=d)
        r.done()
        if levels.max() > self.s:
            raise CompressedFormatError(f"{self.spec}: level code above s={self.s}")
        # one table of every signed value, indexed by sign << width | level
        mag = self.level_values() * np.float32(norm)
        table = np.zeros(2 << self.width, np.float32)
        table[:self.s + 1], table[1 << self.width:(1 << self.width) + self.s + 1] = mag, -mag
        return take_chunked(table, levels, signs, self.width)


class DitherSta(_Dither):
    """Standard random dithering D_sta^{p,s}."""

    name = "dither_sta"
    max_levels = MAX_STA_LEVELS

    def __init__(self, s: int = 7, p: float = 2.0, seed=None):
        super().__init__(s, p, seed)

    def omega(self, d: int) -> float:
        return omega_sta(d, self.s, self.p)

    def _levels(self, x, norm):
        return standard_levels(x, norm, self.s, self.rng)

    def level_values(self) -> np.ndarray:
        return (np.arange(self.s + 1) / self.s).astype(np.float32)


class DitherNat(_Dither):
    """Natural dithering D_nat^{p,s}: levels are powers of two."""

    name = "dither_nat"
    max_levels = MAX_NAT_LEVELS

    def omega(self, d: int) -> float:
        return omega_nat(d, self.s, self.p)

    def _levels(self, x, norm):
        # exponent field of 2^(j-s) is 127 + j - s; level j = field - 127 + s, 0 for zero
        min_field = 128 - self.s
        field = np.arange(512) & 0xFF
        lut = np.where(field >= min_field, field - min_field + 1, 0).astype(np.uint8)
        out = np.empty(x.size, np.uint8)
        for i in range(0, x.size, BLOCK):
            t = np.abs(x[i:i + BLOCK])
            t /= norm
            natural_codes(t.view(np.uint32), self.rng, min_field=min_field, lut=lut,
                          out=out[i:i + BLOCK])
        return out

    def level_values(self) -> np.ndarray:
        j = np.arange(self.s + 1)
        return np.where(j > 0, np.ldexp(1.0, j - self.s), 0.0).astype(np.float32)
