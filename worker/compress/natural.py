"""Natural compression C_nat (Horvath et al.): round each float to one of its two neighbouring
powers of two, at random and unbiased, by the float32 bit trick.

For x = +-2^e (1 + m), m in [0,1): add a uniform random integer in [0, 2^23) to the 32-bit
pattern and clear the mantissa. The exponent field gains a carry exactly when the random number
is >= 2^23 (1 - m), i.e. with probability m, so E[C(x)] = 2^e (1-m) + 2^(e+1) m = x. The same
holds for subnormals (they round to 0 or to 2^-126). omega = 1/8: the worst case is |x| = 4/3 2^e.

Overflow: |x| in [2^127, 2^128) would round up to 2^128 = inf; such values saturate to 2^127
instead (the one biased case; it needs |x| >= 1.7e38).

Encodings:
  nat9  sign bit plane (ceil(d/8) bytes, np.packbits order) + d bytes of biased exponent
        (0 = zero): 9 bits per element, no header.
  nat8  1 header byte `ref` (biased exponent of the largest power the tensor can round to) +
        d bytes, each sign << 7 | o with 2^(ref-127-o) the value for o in 0..126, o = 127 zero.
        Powers below 2^(ref-127-126) (more than 126 binades under the max) are rounded again,
        unbiased, to 0 or to that smallest power: 2^e becomes 2^min with probability
        2^(e-min), else 0 -- the same rule as the switch's NAT8 encoding.
"""
from __future__ import annotations

import numpy as np

from nina.jit import njit, rand_u32, rand_u64, seed_state

from .base import Compressor, Reader, take_chunked

_MANTISSA_BITS = 23
_MAX_FIELD = 254  # biased exponent of 2^127, the largest finite power of two


def exponent_field(v: float) -> int:
    """Biased float32 exponent field of |v| (0 for zero and subnormals)."""
    return int(np.float32(abs(v)).view(np.uint32) >> _MANTISSA_BITS)


@njit
def natural_code9(bits, r23):
    """The natural-compression bit trick on one float32 bit pattern (as int64): add a uniform
    random r23 in [0, 2^23) and truncate the mantissa. Returns sign << 8 | biased exponent of
    the power of two it rounded to (exponent 255: 2^127 rounded up; callers saturate it).
    The switch encoding NAT8 (worker/switch_encoding.py) uses this same function."""
    return (bits + r23) >> _MANTISSA_BITS


@njit
def _natural_codes(u, state, min_field, lut, out):
    for i in range(u.size):
        c = natural_code9(np.int64(u[i]), rand_u32(state) >> (32 - _MANTISSA_BITS))
        e = c & 0xFF
        if e != 0 and e < min_field:
            # 2^e -> 2^min w.p. 2^(e-min), else 0: keeps the mean (exact to 2^-64)
            d = min_field - e
            keep = d < 64 and (rand_u64(state) >> np.uint64(64 - d)) == 0   # top d bits zero
            c = (c & 0x100) | (min_field if keep else 0)
        out[i] = lut[c]


_IDENTITY9 = np.arange(512, dtype=np.uint16)


def natural_codes(u: np.ndarray, rng: np.random.Generator, *, min_field: int = 1,
                  lut: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """C_nat of float32 bit patterns `u` (flat uint32) as 9-bit codes sign << 8 | exponent.

    Exponent 255 means 2^127 rounded up: callers saturate it (their tables map it to 254).
    min_field > 1: powers with exponent field in [1, min_field) are re-rounded, unbiased, to 0
    or 2^(min_field-127).
    lut: if given, the codes are mapped through it and the mapped array returned.
    out: optional destination (length u.size, dtype of lut or uint16).
    The random bits come from a compiled generator seeded from `rng` (one draw per call).
    """
    if lut is None:
        lut = _IDENTITY9
    if out is None:
        out = np.empty(u.size, lut.dtype)
    _natural_codes(np.ascontiguousarray(u, np.uint32).ravel(), seed_state(rng),
                   int(min_field), np.ascontiguousarray(lut), out)
    return out


def _power_lut(fields: np.ndarray) -> np.ndarray:
    """float32 value of biased exponent fields (0 -> 0.0; 255, never produced, -> inf)."""
    with np.errstate(over="ignore"):
        return np.where(fields > 0, np.ldexp(1.0, fields - 127), 0).astype(np.float32)


class Nat9(Compressor):
    """C_nat with the 9-bit encoding: sign + full 8-bit biased exponent."""

    name = "nat9"
    unbiased = True
    summable_in_switch = True  # its values are powers of two: the switch's NAT8 can sum them

    def omega(self, d: int) -> float:
        return 1 / 8

    # code9 -> exponent byte; 255 (2^127 rounded up) saturates to 254
    _EXPONENT_LUT = np.minimum(np.arange(512) & 0xFF, _MAX_FIELD).astype(np.uint8)

    def _encode(self, x, amax, shape):
        nsign = -(-x.size // 8)
        buf = np.empty(nsign + x.size, np.uint8)
        buf[:nsign] = np.packbits(np.signbit(x))  # C_nat keeps the sign
        natural_codes(x.view(np.uint32), self.rng, lut=self._EXPONENT_LUT, out=buf[nsign:])
        return buf.tobytes()

    def _decode(self, data, shape):
        d = int(np.prod(shape))
        r = Reader(data, self.name)
        signs = np.unpackbits(r.array(np.uint8, -(-d // 8)), count=d)
        exps = r.array(np.uint8, d)
        r.done()
        table = _power_lut(np.arange(512) & 0xFF)
        table[256:] *= -1
        return take_chunked(table, exps, signs, 8)


class Nat8(Compressor):
    """C_nat with the 8-bit encoding: sign + 7-bit exponent offset below the tensor's max."""

    name = "nat"
    unbiased = True
    summable_in_switch = True

    ZERO = 0x7F  # offset code meaning zero

    def omega(self, d: int) -> float:
        # Exact C_nat bound; the re-rounding of powers > 126 binades under the max adds at most
        # d * 2^-250 (negligible, see docs/compressors.md).
        return 1 / 8

    @staticmethod
    def reference_field(amax: float) -> int:
        e = exponent_field(amax)
        return 0 if amax == 0 else min(e + 1, _MAX_FIELD)

    def _encode(self, x, amax, shape):
        ref = self.reference_field(amax)
        min_field = max(ref - 126, 1)
        code9 = np.arange(512)
        sign, exp = code9 >> 8, code9 & 0xFF
        off = np.where(exp == 0, self.ZERO, ref - np.minimum(exp, ref))
        lut = ((sign << 7) | np.clip(off, 0, self.ZERO)).astype(np.uint8)
        buf = np.empty(1 + x.size, np.uint8)
        buf[0] = ref
        # the table also saturates: exponent 255 (2^127 rounded up) gets offset 0, i.e. 2^127
        natural_codes(x.view(np.uint32), self.rng, min_field=min_field, lut=lut, out=buf[1:])
        return buf.tobytes()

    def _decode(self, data, shape):
        d = int(np.prod(shape))
        r = Reader(data, self.name)
        (ref,) = r.unpack("<B")
        body = r.array(np.uint8, d)
        r.done()
        return take_chunked(self.value_lut(ref), body)

    @classmethod
    def value_lut(cls, ref: int) -> np.ndarray:
        """float32 meaning of each of the 256 codes for reference exponent field `ref`."""
        code = np.arange(256)
        off = code & 0x7F
        mag = np.where(off == cls.ZERO, 0.0, np.ldexp(1.0, ref - 127 - off))
        return np.where(code >> 7, -mag, mag).astype(np.float32)
