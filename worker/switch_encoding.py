"""Worker side of the switch encodings: float chunks <-> the integers the switch adds.

A block (one packet's chunk) has an agreed exponent byte b (the max over workers of each
worker's biased float32 max exponent, agreed through the switch). Every value of the block,
after natural rounding, is at most 2^e_top with e_top = b - 126, and the switch represents
2^e_top as the integer 2^S (S = headroom_shift(n)). See docs/protocol.md.

- NAT8: C_nat rounds x to +-2^e (the bit trick of worker.compress.natural, the same function);
  the code stores the offset o = e_top - e (0..S). Powers below the resolution 2^(e_top - S)
  are rounded, unbiased, to 0 or to 2^(e_top - S).
- INT32: x * 2^(S - e_top), stochastically rounded to an integer (unbiased).
- NAT8 + C_M: uplink as NAT8; the switch returns C_M codes +-2^p of the integer sums.

The work is compiled (nina.jit) and written once: `nat8_row` (a block), `int32_value` and
`result_value` (an element) are what the all-reduce client's compiled window step calls, and
the array functions below (used by tests, tools, the codec objects) loop over them. One codec
object per switch encoding (`codec_for`) says what a packet holds, how to encode and decode a
block, what a worker's contribution means, and that the first window needs priming.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nina.jit import draw_base, njit, rand_u32, rand_u64, seed_state
from nina.wire import (CAPACITY, FLAG_CM, NAT8_MAG, NAT8_SIGN, NAT8_ZERO, Encoding, MsgType,
                       integer_scale, nat8_to_int, payload_layout, result_parts)
from worker.compress.natural import code9_from, reround_low

_EXP_MASK = np.uint32(0x7F800000)
_MANT_BITS = 23
_SIGN, _ZERO, _MAG = NAT8_SIGN, NAT8_ZERO, NAT8_MAG


def exponent_bytes(x: np.ndarray) -> np.ndarray:
    """Biased float32 exponent of max |x| along the last axis (0 for all-zero rows)."""
    x = np.ascontiguousarray(x, np.float32)
    shape = x.shape[:-1] if x.ndim else ()
    rows = x.view(np.uint32).reshape(-1, x.shape[-1] if x.ndim else 1)
    out = np.empty(rows.shape[0], np.uint8)
    _row_exponents(rows, out)
    return out.reshape(shape)


@njit
def _row_exponents(rows, out):
    # compiled, so a call's memory holds no full-size temporaries (masks, shifts); the max of
    # the masked exponent bits, shifted once per row, is a loop that vectorises (a compare
    # and branch per element did not: 8.7 ms against 1-2 for 4M elements)
    for r in range(rows.shape[0]):
        row = rows[r]
        m = np.uint32(0)
        for j in range(row.size):
            m = max(m, np.uint32(row[j] & _EXP_MASK))
        out[r] = m >> _MANT_BITS


def check_finite(x: np.ndarray, what: str = "gradient") -> None:
    flat = np.ascontiguousarray(x).ravel()
    i = _first_nonfinite(flat) if flat.dtype == np.float32 else _first_false(np.isfinite(flat))
    if i >= 0:
        raise ValueError(f"{what} has a non-finite value {flat[i]} at flat index {i}")


@njit
def _first_nonfinite(flat):
    # the exponent bits all set is inf or nan; no full-size boolean temporary
    bits = flat.view(np.uint32)
    for i in range(bits.size):
        if bits[i] & _EXP_MASK == _EXP_MASK:
            return i
    return -1


def _first_false(ok: np.ndarray) -> int:
    return int(np.argmin(ok)) if not ok.all() else -1


# ---- per element, compiled ----------------------------------------------------------------

@njit
def nat8_row(bits, eb, shift, state, out):
    """One block's float32 bit patterns (uint32 row) -> their NAT8 codes in out (uint8, as
    long), against exponent byte eb; returns -1, or the index of the first element that rounds
    above 2^e_top (exponent agreement broken; out is then not all written).

    The rounding draws are counter-based under a key the block takes from `state` (the
    client's stream): code9_from(u, 0, j, base) for element j, so the loop has no chain through a
    state and vectorises, as the natural compressor's block loops do (worker.compress.natural).
    Powers below the resolution 2^(e_top - S), rare, get a second, scalar pass: 2^(e_top - S)
    with probability 2^(S - off), else zero (unbiased; the nat compressor's rule, its
    smallest power's field eb + 1 - S), with 64-bit draws from `state`."""
    ref = np.uint32(eb + 1)                    # biased e_top
    min_field = np.int64(eb) + 1 - shift
    base = draw_base(rand_u32(state), 0)
    n = min(bits.size, out.size)
    u = bits[:n]
    o = out[:n]
    top = np.uint32(0)
    low = np.uint32(0xFFFFFFFF)
    for j in range(n):
        c9 = code9_from(u, 0, j, base)   # sign << 8 | exponent field
        e = c9 & np.uint32(0xFF)               # biased exponent of |C(x)|
        top = max(top, e)
        low = min(low, np.uint32(e - np.uint32(1)))   # zeros wrap to the top
        off = np.uint32(ref - min(e, ref))
        code = np.uint32(min(off, np.uint32(shift))) | (np.uint32(_SIGN) * (u[j] >> np.uint32(31)))
        o[j] = np.uint8(_ZERO) if e == 0 else np.uint8(code)
    if top > ref:
        for j in range(n):
            c9 = code9_from(u, 0, j, base)   # sign << 8 | exponent field
            if (c9 & np.uint32(0xFF)) > ref:
                return j
    if np.int64(low) < min_field - 1:          # some power in [1, min_field): re-round it
        for j in range(n):
            c9 = code9_from(u, 0, j, base)   # sign << 8 | exponent field
            e = np.int64(c9 & np.uint32(0xFF))
            if e != 0 and e < min_field:
                if (reround_low(c9, min_field, rand_u64(state)) & np.uint32(0xFF)) == 0:
                    o[j] = _ZERO
    return -1


@njit
def int32_value(x, inv_scale, stochastic, state):
    """One float -> fixed point x / scale, rounded at random (unbiased) or to nearest. Per
    element with sequential draws: counter-based ones (as nat8_row's) measured slower here,
    two 32-bit mixes and their conversions against one xorshift step."""
    scaled = np.float64(x) * inv_scale
    if stochastic:
        q = np.floor(scaled + np.float64(rand_u64(state) >> np.uint64(11)) * 2.0 ** -53)
    else:
        q = np.rint(scaled)
    return np.int32(np.int64(q))


@njit
def result_value(v, cm, scale):
    """One result element (an int32 sum, or with cm a C_M code) -> float32 (float64 math,
    as decode_sums: beyond float32's range becomes inf, callers check)."""
    if cm:
        if v == _ZERO:
            return np.float32(0.0)
        m = np.float64(np.int64(1) << (v & _MAG))
        return np.float32(-m * scale if v & _SIGN else m * scale)
    return np.float32(np.float64(v) * scale)


# ---- rows, compiled loops over the per-element functions ----------------------------------

@njit
def _nat8_rows(bits, eb, shift, state, out):
    for r in range(bits.shape[0]):
        if nat8_row(bits[r], np.int64(eb[r]), shift, state, out[r]) >= 0:
            return r
    return -1


@njit
def _int32_rows(x, inv_scale, stochastic, state, out):
    for r in range(x.shape[0]):
        for e in range(x.shape[1]):
            out[r, e] = int32_value(x[r, e], inv_scale[r], stochastic, state)


@njit
def _result_rows(vals, cm, scale, out):
    for r in range(vals.shape[0]):
        for e in range(vals.shape[1]):
            out[r, e] = result_value(np.int64(vals[r, e]), cm, scale[r])


def _rows(x, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.atleast_2d(np.asarray(x, dtype)))


def nat8_encode(x: np.ndarray, exp_byte: np.ndarray, shift: int,
                rng: np.random.Generator) -> np.ndarray:
    """Rows of x (one per packet) -> NAT8 codes against each row's agreed exponent byte."""
    x = _rows(x, np.float32)
    eb = np.ascontiguousarray(np.broadcast_to(np.asarray(exp_byte, np.int64).ravel(),
                                              (x.shape[0],)))
    out = np.empty(x.shape, np.uint8)
    if _nat8_rows(x.view(np.uint32), eb, int(shift), seed_state(rng), out) >= 0:
        raise ValueError("a value exceeds its block's agreed exponent (exponent agreement broken)")
    return out


def inverse_scale(exp_byte, shift: int) -> np.ndarray:
    """1 / integer_scale: the factor from floats to the switch's integers, per row."""
    return 1.0 / integer_scale(np.asarray(exp_byte).ravel(), shift)


def int32_encode(x: np.ndarray, exp_byte: np.ndarray, shift: int,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Rows of x -> fixed-point int32 with scale 2^(S - e_top); stochastic rounding if rng."""
    x = _rows(x, np.float64)
    inv = np.ascontiguousarray(np.broadcast_to(inverse_scale(exp_byte, shift), (x.shape[0],)))
    out = np.empty(x.shape, np.int32)
    state = seed_state(rng) if rng is not None else np.ones(1, np.uint64)
    _int32_rows(x, inv, rng is not None, state, out)
    return out


def _decode(vals, exp_byte, shift: int, cm: bool) -> np.ndarray:
    vals = _rows(vals, np.int64)
    scale = np.ascontiguousarray(np.broadcast_to(integer_scale(np.asarray(exp_byte).ravel(),
                                                               shift), (vals.shape[0],)))
    out = np.empty(vals.shape, np.float32)
    _result_rows(vals, cm, scale, out)
    return out


def decode_sums(sums: np.ndarray, exp_byte: np.ndarray, shift: int) -> np.ndarray:
    """int32 sums of a row block -> float32 values."""
    return _decode(sums, exp_byte, shift, False)


def decode_cm(codes: np.ndarray, exp_byte: np.ndarray, shift: int) -> np.ndarray:
    """C_M codes of a row block (switch-compressed sums) -> float32 values."""
    return _decode(codes, exp_byte, shift, True)


def nat8_values(codes: np.ndarray, exp_byte: np.ndarray, shift: int) -> np.ndarray:
    """What a row of NAT8 codes means as floats (a worker's contribution, for checking)."""
    return decode_sums(nat8_to_int(np.atleast_2d(codes), shift), exp_byte, shift)


# ---- one codec object per switch encoding -------------------------------------------------

@dataclass(frozen=True)
class SwitchCodec:
    """A switch encoding as the worker sees it: `k` elements per update, results in `parts` packets of `part_k` elements (`result_flags` on them), and whether the
    first window needs a priming exchange (block exponent agreement: every encoding does)."""
    name: str
    encoding: Encoding
    cm: bool
    shift: int
    stochastic: bool = True   # INT32 rounding; NAT8 always rounds at random (C_nat)
    needs_priming: bool = True

    @property
    def k(self) -> int:
        return CAPACITY[self.encoding]

    @property
    def result_flags(self) -> int:
        return FLAG_CM if self.cm else 0

    @property
    def parts(self) -> int:
        return result_parts(self.encoding, self.result_flags)

    @property
    def part_k(self) -> int:
        return payload_layout(MsgType.RESULT, self.encoding, self.result_flags).capacity

    def encode(self, rows: np.ndarray, exps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Float rows -> the wire elements this worker sends (ValueError: agreement broken)."""
        if self.encoding == Encoding.NAT8:
            return nat8_encode(rows, exps, self.shift, rng)
        return int32_encode(rows, exps, self.shift, rng if self.stochastic else None)

    def decode(self, payload: np.ndarray, exps: np.ndarray) -> np.ndarray:
        """Result elements (sums or C_M codes) -> float32 sums."""
        return _decode(payload, exps, self.shift, self.cm)

    def meaning(self, sent: np.ndarray, exps: np.ndarray) -> np.ndarray:
        """What this worker's sent elements contribute to the sum, as floats."""
        ints = nat8_to_int(sent, self.shift) if self.encoding == Encoding.NAT8 else sent
        return decode_sums(ints, exps, self.shift)


def codec_for(encoding: Encoding, cm: bool, shift: int, rounding: str = "stochastic") -> \
        SwitchCodec:
    """The codec of a job: INT32, NAT8 or NAT8+C_M (C_M exists on NAT8 jobs only)."""
    enc = Encoding(encoding)
    cm = bool(cm) and enc == Encoding.NAT8
    name = enc.name + ("+C_M" if cm else "")
    return SwitchCodec(name, enc, cm, shift, stochastic=rounding == "stochastic")


def _warm() -> None:
    """Load (or, on a machine's first run, compile) the compiled row loops at import, so the
    first block a worker encodes does not pay for it."""
    x = np.zeros((1, 4), np.float32)
    eb = np.zeros(1, np.uint8)
    nat8_encode(x, eb, 20, np.random.default_rng(0))
    int32_encode(x, eb, 20, np.random.default_rng(0))
    int32_encode(x, eb, 20)
    decode_cm(np.zeros((1, 4), np.uint8), eb, 20)
    decode_sums(np.zeros((1, 4), np.int32), eb, 20)
    decode_sums(np.zeros((1, 4), ">i4"), eb, 20)
    exponent_bytes(x)
    check_finite(x[0])


_warm()
