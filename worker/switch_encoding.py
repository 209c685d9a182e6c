"""Worker side of the switch encodings: float chunks <-> the integers the switch adds.

A block (one packet's chunk) has an agreed exponent byte b (the max over workers of each
worker's biased float32 max exponent, agreed through the switch). Every value of the block,
after natural rounding, is at most 2^e_top with e_top = b - 126, and the switch represents
2^e_top as the integer 2^S (S = headroom_shift(n)). See docs/protocol.md.

- NAT8: C_nat rounds x to +-2^e; the code stores the offset o = e_top - e (0..S). Powers below
  the resolution 2^(e_top - S) are rounded, unbiased, to 0 or to 2^(e_top - S).
- INT32: x * 2^(S - e_top), stochastically rounded to an integer (unbiased).
"""
from __future__ import annotations

import numpy as np

from nina.wire import NAT8_SIGN, NAT8_ZERO, integer_scale, cm_codes_to_int

_EXP_MASK = np.uint32(0x7F800000)
_MANT_BITS = 23


def exponent_bytes(x: np.ndarray) -> np.ndarray:
    """Biased float32 exponent of max |x| along the last axis (0 for all-zero rows)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits & _EXP_MASK) >> _MANT_BITS).max(axis=-1).astype(np.uint8)


def check_finite(x: np.ndarray, what: str = "gradient") -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"{what} has a non-finite value {x.ravel()[i]} at flat index {i}")


def _natural_round_bits(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """C_nat by the bit trick: add random mantissa bits, truncate the mantissa."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    noise = rng.integers(0, 1 << _MANT_BITS, size=bits.shape, dtype=np.uint32)
    return ((bits & np.uint32(0x7FFFFFFF)) + noise) & _EXP_MASK  # |C(x)| bits, sign dropped


def nat8_encode(x: np.ndarray, exp_byte: np.ndarray, shift: int,
                rng: np.random.Generator) -> np.ndarray:
    """Rows of x (one per packet) -> NAT8 codes against each row's agreed exponent byte."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    eb = np.asarray(exp_byte, np.int64).reshape(-1, 1)
    mag_exp = (_natural_round_bits(x, rng) >> _MANT_BITS).astype(np.int64)  # biased exp of |C(x)|
    off = (eb + 1) - mag_exp  # biased e_top is exp_byte + 1
    if (off[mag_exp > 0] < 0).any():
        raise ValueError("a value exceeds its block's agreed exponent (exponent agreement broken)")
    # Below resolution: keep 2^(e_top - S) with probability 2^(S - off), else zero (unbiased).
    small = off > shift
    keep = rng.random(x.shape) < np.ldexp(1.0, np.minimum(shift - off, 0))
    off = np.where(small, np.where(keep, shift, -1), off)
    codes = np.where(x < 0, NAT8_SIGN, 0) | np.clip(off, 0, 0x7F)
    zero = (mag_exp == 0) | (off < 0)
    return np.where(zero, NAT8_ZERO, codes).astype(np.uint8)


def int32_encode(x: np.ndarray, exp_byte: np.ndarray, shift: int,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Rows of x -> fixed-point int32 with scale 2^(S - e_top); stochastic rounding if rng."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    scaled = x / integer_scale(np.asarray(exp_byte).reshape(-1, 1), shift)
    if rng is None:
        q = np.rint(scaled)
    else:
        q = np.floor(scaled + rng.random(scaled.shape))
    return q.astype(np.int32)


def decode_sums(sums: np.ndarray, exp_byte: np.ndarray, shift: int) -> np.ndarray:
    """int32 sums of a row block -> float32 values."""
    scale = integer_scale(np.asarray(exp_byte).reshape(-1, 1), shift)
    with np.errstate(over="ignore"):   # beyond float32's range becomes inf; callers check
        return (np.atleast_2d(sums).astype(np.float64) * scale).astype(np.float32)


def decode_cm(codes: np.ndarray, exp_byte: np.ndarray, shift: int) -> np.ndarray:
    """C_M codes of a row block (switch-compressed sums) -> float32 values."""
    return decode_sums(cm_codes_to_int(np.atleast_2d(codes)), exp_byte, shift)


def nat8_values(codes: np.ndarray, exp_byte: np.ndarray, shift: int) -> np.ndarray:
    """What a row of NAT8 codes means as floats (a worker's contribution, for checking)."""
    from nina.wire import nat8_to_int
    return decode_sums(nat8_to_int(np.atleast_2d(codes), shift), exp_byte, shift)
