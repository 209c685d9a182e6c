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

from nina.jit import (counter_key, draw32, draw32_from, draw64, draw_base, index_key, njit,
                      njit_threaded, threaded)

from .base import INF_BITS, Compressor, Reader, new_payload, non_finite_error

_MANTISSA_BITS = 23
_MAX_FIELD = 254  # biased exponent of 2^127, the largest finite power of two
BLOCK = 1 << 16   # elements per unit of work (a thread takes whole blocks; a multiple of 8)


def exponent_field(v: float) -> int:
    """Biased float32 exponent field of |v| (0 for zero and subnormals)."""
    return int(np.float32(abs(v)).view(np.uint32) >> _MANTISSA_BITS)


@njit
def natural_code9(bits, r23):
    """The natural-compression bit trick on one float32 bit pattern: add a uniform random
    r23 in [0, 2^23) and truncate the mantissa. Returns sign << 8 | biased exponent of the
    power of two it rounded to (exponent 255: 2^127 rounded up; callers saturate it).
    For a finite float (bits <= 0xFF7FFFFF) the sum stays below 2^32, so it is done in
    32-bit words, 16 to a vector register. The switch encoding NAT8
    (worker/switch_encoding.py) uses this same function."""
    return np.uint32(np.uint32(np.uint32(bits) + np.uint32(r23)) >> np.uint32(_MANTISSA_BITS))


@njit
def code9_at(u, i, kb):
    """C_nat code of element i of the bit patterns u, with its counter-based draw (kb: the
    index_key of i)."""
    return natural_code9(u[i], np.uint32(draw32(kb, i) >> np.uint32(32 - _MANTISSA_BITS)))


@njit
def code9_from(u, lo, j, base):
    """code9_at(u, lo + j, kb) for base = draw_base(kb, lo): the form the block loops use
    (see nina.jit.draw32_from)."""
    return natural_code9(u[lo + j], np.uint32(draw32_from(base, j) >> np.uint32(32 - _MANTISSA_BITS)))


@njit
def reround_low(c, min_field, r64):
    """A code whose power 2^e has exponent field e in [1, min_field): 2^min w.p. 2^(e-min),
    else 0 (the top min-e bits of the 64-bit draw r64 all zero); keeps the mean (exact to
    2^-64)."""
    d = np.int64(min_field) - np.int64(c & 0xFF)
    keep = d < 64 and (np.uint64(r64) >> np.uint64(64 - d)) == 0
    return np.uint32((c & 0x100) | (min_field if keep else 0))


@njit
def _has_low(low, min_field):
    """low = min over a block of (exponent field - 1) as uint32 (zeros wrap to 2^32-1): does
    any power of the block lie in [1, min_field)?"""
    return np.int64(low) < np.int64(min_field) - 1


# ---- the element kernels: a pass per block of BLOCK elements, vectorised; the rare powers
# below min_field (never for nat9; for nat only far below the max) get a scalar second pass

def _codes_lut(b0, b1, u, key, min_field, lut, out):
    n = u.size
    for b in range(b1):   # from 0, so the element indices are provably >= 0 (see njit_threaded)
        if b < b0:
            continue
        lo = b * BLOCK
        cnt = min(BLOCK, n - lo)   # (a loop from 0: numba's range(lo, hi) does not vectorise)
        kb = index_key(key[0], key[1], lo)   # blocks never straddle a multiple of 2^32
        base = draw_base(kb, lo)
        low = np.uint32(0xFFFFFFFF)
        for j in range(cnt):
            c = code9_from(u, lo, j, base)
            low = min(low, np.uint32((c & np.uint32(0xFF)) - np.uint32(1)))
            out[lo + j] = lut[c]
        if _has_low(low, min_field):
            for i in range(lo, lo + cnt):
                c = code9_at(u, i, kb)
                e = c & 0xFF
                if e != 0 and e < min_field:
                    out[i] = lut[reround_low(c, min_field, draw64(key, i, 0))]


@njit
def nat8_byte(c, ref):
    """Code sign << 7 | o of the 9-bit code c under reference field ref (o = 127: zero;
    exponent 255, 2^127 rounded up, saturates to o = 0 when ref = 254)."""
    e = np.uint32(c & np.uint32(0xFF))
    off = np.uint32(ref - min(e, ref))
    off = np.uint32(127) if e == 0 else min(off, np.uint32(127))
    return np.uint8(((c >> np.uint32(8)) << np.uint32(7)) | off)


@njit
def reference_of_bits(top):
    """Nat8.reference_field of max|x| given as its bit pattern: the biased exponent of the
    largest power it can round to (0 for an all-zero tensor)."""
    return 0 if top == 0 else min((np.int64(top) >> _MANTISSA_BITS) + 1, _MAX_FIELD)


def _nat8_blocks(b0, b1, u, key, out, block_top):
    """nat's first pass: each block's codes against the block's own reference (its max is
    found first, from memory; the block, 256 KiB, is then encoded from the cache)."""
    n = u.size
    for b in range(b1):   # from 0, so the element indices are provably >= 0 (see njit_threaded)
        if b < b0:
            continue
        lo = b * BLOCK
        cnt = min(BLOCK, n - lo)   # (a loop from 0: numba's range(lo, hi) does not vectorise)
        top = np.uint32(0)
        for j in range(cnt):
            top = max(top, np.uint32(u[lo + j] & np.uint32(0x7FFFFFFF)))
        block_top[b] = top
        if top >= np.uint32(0x7F800000):   # inf or NaN: the caller raises
            continue
        ref = np.uint32(reference_of_bits(top))
        min_field = max(np.int64(ref) - 126, 1)
        kb = index_key(key[0], key[1], lo)   # blocks never straddle a multiple of 2^32
        base = draw_base(kb, lo)
        low = np.uint32(0xFFFFFFFF)
        for j in range(cnt):
            c = code9_from(u, lo, j, base)
            low = min(low, np.uint32((c & np.uint32(0xFF)) - np.uint32(1)))
            out[lo + j] = nat8_byte(c, ref)
        if _has_low(low, min_field):
            for i in range(lo, lo + cnt):
                c = code9_at(u, i, kb)
                e = c & 0xFF
                if e != 0 and e < min_field:
                    out[i] = nat8_byte(reround_low(c, min_field, draw64(key, i, 0)), ref)


def _nat8_rebase(b0, b1, out, key, block_top, ref, min_field):
    """nat's second pass, over the codes only: a block whose reference was below the
    tensor's moves its offsets up by the difference. An offset pushed past 126 (a power below
    the tensor's smallest, 2^(min_field-127)) is re-rounded to it or to 0 with an independent
    draw (stream 1): 2^e -> 2^m_b -> 2^m has probability 2^(e-m_b) 2^(m_b-m) = 2^(e-m), the
    one-pass rule, so the tensor stays unbiased."""
    n = out.size
    for b in range(b1):   # from 0, so the element indices are provably >= 0 (see njit_threaded)
        if b < b0:
            continue
        shift = np.int64(ref) - reference_of_bits(block_top[b])
        if shift == 0:
            continue
        lo = b * BLOCK
        cnt = min(BLOCK, n - lo)
        sh = np.uint32(shift)
        worst = np.uint32(0)   # the largest shifted offset of a non-zero code
        for j in range(cnt):
            o = np.uint32(out[lo + j]) & np.uint32(127)
            worst = max(worst, np.uint32(0) if o == 127 else o + sh)
        rare = worst > 126   # some powers fall below 2^(min_field-127): keep their codes
        orig = out[lo:lo + cnt].copy() if rare else out[lo:lo]
        for j in range(cnt):
            c = np.uint32(out[lo + j])
            o = c & np.uint32(127)
            o2 = np.uint32(127) if o == 127 else min(o + sh, np.uint32(127))
            out[lo + j] = np.uint8((c & np.uint32(128)) | o2)
        if rare:
            bref = reference_of_bits(block_top[b])
            for j in range(cnt):
                o = np.int64(orig[j]) & 127
                if o != 127 and o + shift > 126:
                    c9 = ((np.int64(orig[j]) >> 7) << 8) | (bref - o)
                    out[lo + j] = nat8_byte(reround_low(c9, min_field, draw64(key, lo + j, 1)),
                                            np.uint32(ref))


def _nat9_encode(b0, b1, u, key, signs, exps, block_max):
    n = u.size
    for b in range(b1):   # from 0, so the element indices are provably >= 0 (see njit_threaded)
        if b < b0:
            continue
        lo = b * BLOCK
        cnt = min(BLOCK, n - lo)
        hi = lo + cnt
        kb = index_key(key[0], key[1], lo)
        base = draw_base(kb, lo)
        top = np.uint32(0)   # max |x| bits: the finiteness check, in the same pass
        for j in range(cnt):   # exponent 255 (2^127 rounded up) saturates to 254
            top = max(top, np.uint32(u[lo + j] & np.uint32(0x7FFFFFFF)))
            exps[lo + j] = np.uint8(min(code9_from(u, lo, j, base) & np.uint32(0xFF),
                                        np.uint32(254)))
        block_max[b] = top
        for jj in range(cnt >> 3):   # sign plane, MSB first (np.packbits order)
            j = (lo >> 3) + jj
            s = np.uint32(0)
            for t in range(8):
                s |= (u[8 * j + t] >> np.uint32(31)) << np.uint32(7 - t)
            signs[j] = np.uint8(s)
        if hi & 7:   # the last, partial byte; padding bits are 0
            s = np.uint32(0)
            for i in range(hi & ~7, hi):
                s |= (u[i] >> np.uint32(31)) << np.uint32(7 - (i & 7))
            signs[hi >> 3] = np.uint8(s)


@njit
def nat8_value_bits(code, ref):
    """float32 bit pattern of code under reference field ref: +-2^(ref-127-o), o = 127 zero;
    exponent fields below 1 give the subnormal (or 0) that float32 rounding of the power
    gives, so this equals Nat8.value_lut for every ref and code (tested)."""
    c = np.int32(code)
    o = c & 127
    f = np.int32(ref) - o
    sub = np.uint32(1) << np.uint32(max(f + 22, 0))
    mag = np.uint32(f << 23) if f >= 1 else (sub if f >= -22 else np.uint32(0))
    mag = np.uint32(0) if o == 127 else mag
    return np.uint32(mag | np.uint32((c >> 7) << 31))


def _nat8_decode(b0, b1, codes, ref, out):
    n = codes.size
    for b in range(b1):   # from 0, so the element indices are provably >= 0 (see njit_threaded)
        if b < b0:
            continue
        lo = b * BLOCK
        for j in range(min(BLOCK, n - lo)):
            out[lo + j] = nat8_value_bits(codes[lo + j], ref)


def _nat9_decode(b0, b1, signs, exps, out):
    n = exps.size
    for b in range(b1):   # from 0, so the element indices are provably >= 0 (see njit_threaded)
        if b < b0:
            continue
        lo = b * BLOCK
        cnt = min(BLOCK, n - lo)
        hi = lo + cnt
        for jj in range(cnt >> 3):   # +-2^(e-127) is sign << 31 | e << 23 (e=0: +-0)
            j = (lo >> 3) + jj
            s = np.uint32(signs[j])
            for t in range(8):
                i = 8 * j + t
                out[i] = (((s >> np.uint32(7 - t)) & np.uint32(1)) << np.uint32(31)) | \
                    (np.uint32(exps[i]) << np.uint32(23))
        for i in range(hi & ~7, hi):
            s = np.uint32(signs[i >> 3])
            out[i] = (((s >> np.uint32(7 - (i & 7))) & np.uint32(1)) << np.uint32(31)) | \
                (np.uint32(exps[i]) << np.uint32(23))


_CODES_LUT = njit_threaded(_codes_lut)
_NAT8_BLOCKS = njit_threaded(_nat8_blocks)
_NAT8_REBASE = njit_threaded(_nat8_rebase)
_NAT9_ENCODE = njit_threaded(_nat9_encode)
_NAT8_DECODE = njit_threaded(_nat8_decode)
_NAT9_DECODE = njit_threaded(_nat9_decode)


def _blocks(n: int) -> int:
    return -(-n // BLOCK)


_IDENTITY9 = np.arange(512, dtype=np.uint16)


def natural_codes(u: np.ndarray, rng: np.random.Generator, *, min_field: int = 1,
                  lut: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """C_nat of float32 bit patterns `u` (flat uint32) as 9-bit codes sign << 8 | exponent.

    Exponent 255 means 2^127 rounded up: callers saturate it (their tables map it to 254).
    min_field > 1: powers with exponent field in [1, min_field) are re-rounded, unbiased, to 0
    or 2^(min_field-127).
    lut: if given, the codes are mapped through it and the mapped array returned.
    out: optional destination (length u.size, dtype of lut or uint16).
    The random bits are counter-based draws (nina.jit.draw32) under a key taken from `rng`
    (one key per call).
    """
    if lut is None:
        lut = _IDENTITY9
    if out is None:
        out = np.empty(u.size, lut.dtype)
    u = np.ascontiguousarray(u, np.uint32).ravel()
    threaded(_CODES_LUT, _blocks(u.size))(u, counter_key(rng), int(min_field),
                                          np.ascontiguousarray(lut), out)
    return out


class Nat9(Compressor):
    """C_nat with the 9-bit encoding: sign + full 8-bit biased exponent."""

    name = "nat9"
    unbiased = True
    summable_in_switch = True  # its values are powers of two: the switch's NAT8 can sum them
    scans_in_encode = True     # needs no max|x|: one pass over the tensor instead of two

    def omega(self, d: int) -> float:
        return 1 / 8

    def _encode(self, x, amax, shape):
        nsign = -(-x.size // 8)
        data, buf = new_payload(nsign + x.size)   # encoded in place: no copy afterwards
        block_max = np.empty(_blocks(x.size), np.uint32)
        threaded(_NAT9_ENCODE, block_max.size)(x.view(np.uint32), counter_key(self.rng),
                                               buf[:nsign], buf[nsign:], block_max)
        del buf
        if block_max.max() >= INF_BITS:
            raise non_finite_error(x.reshape(shape), x.reshape(shape), self.name)
        return data

    def _decode(self, data, shape):
        out = np.empty(int(np.prod(shape)), np.float32)
        self._decode_into(data, shape, out)
        return out

    def _decode_into(self, data, shape, out):
        d = out.size
        r = Reader(data, self.name)
        signs = r.array(np.uint8, -(-d // 8))
        exps = r.array(np.uint8, d)
        r.done()
        threaded(_NAT9_DECODE, _blocks(d))(signs, exps, out.view(np.uint32))


class Nat8(Compressor):
    """C_nat with the 8-bit encoding: sign + 7-bit exponent offset below the tensor's max."""

    name = "nat"
    unbiased = True
    summable_in_switch = True
    scans_in_encode = True   # its first pass finds max|x|: the floats are read once

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
        # One pass over the floats, each block coded against its own max; then, with the
        # tensor's max known, one pass over the codes moves the blocks with a smaller max up
        # (amax, when a caller has it, is that same max: finding it costs nothing here)
        data, buf = new_payload(1 + x.size)   # encoded in place: no copy afterwards
        body = buf[1:]
        block_top = np.empty(_blocks(x.size), np.uint32)
        key = counter_key(self.rng)
        threaded(_NAT8_BLOCKS, block_top.size)(x.view(np.uint32), key, body, block_top)
        top = int(block_top.max())
        if top >= INF_BITS:
            raise non_finite_error(x.reshape(shape), x.reshape(shape), self.name)
        ref = reference_of_bits(top)
        buf[0] = ref
        # nat8_byte saturates: exponent 255 (2^127 rounded up) gets offset 0, i.e. 2^127
        threaded(_NAT8_REBASE, block_top.size)(body, key, block_top, ref, max(ref - 126, 1))
        return data

    def _decode(self, data, shape):
        out = np.empty(int(np.prod(shape)), np.float32)
        self._decode_into(data, shape, out)
        return out

    def _decode_into(self, data, shape, out):
        r = Reader(data, self.name)
        (ref,) = r.unpack("<B")
        body = r.array(np.uint8, out.size)
        r.done()
        threaded(_NAT8_DECODE, _blocks(out.size))(body, ref, out.view(np.uint32))

    @classmethod
    def value_lut(cls, ref: int) -> np.ndarray:
        """float32 meaning of each of the 256 codes for reference exponent field `ref`."""
        code = np.arange(256)
        off = code & 0x7F
        mag = np.where(off == cls.ZERO, 0.0, np.ldexp(1.0, ref - 127 - off))
        return np.where(code >> 7, -mag, mag).astype(np.float32)
