"""The C_nat kernels' counter-based random source (nina.jit.draw32) and the kernels built on it.

The draws are a keyed hash of the element index instead of a sequential generator, so that
the encode loops vectorise and split over threads. These tests check what that must not
cost: uniform draws, no correlation between elements of one tensor (the variance of a whole
tensor's rounding error is the sum of its elements'), the same bytes for every thread count,
and exact agreement of the vectorised decode with the reference tables.
"""
from __future__ import annotations

import numpy as np
import pytest

from nina import jit
from nina.jit import counter_key, draw32, draw32_from, draw_base, index_key, mix32
from worker.compress import get_compressor
from worker.compress.errors import CompressorInputError, NonFiniteError
from worker.compress.natural import BLOCK, Nat8

Z = 6.0
KEY = np.array([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0],
               np.uint32)


def numpy_draws(kb: int, idx: np.ndarray) -> np.ndarray:
    """The documented formula, in numpy uint32 arithmetic: mixer(i * G + key)."""
    with np.errstate(over="ignore"):
        x = (idx.astype(np.uint32) * np.uint32(0x9E3779B9) + np.uint32(kb)).astype(np.uint32)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


@jit.njit
def _draws(kb, lo, n, out):
    for j in range(n):
        out[j] = draw32(kb, lo + j)


def draws(n: int, lo: int = 0, key=KEY) -> np.ndarray:
    out = np.empty(n, np.uint32)
    _draws(index_key(key[0], key[1], lo), lo, n, out)
    return out


def test_compiled_draws_are_the_documented_formula():
    idx = np.arange(1 << 12)
    np.testing.assert_array_equal(draws(idx.size), numpy_draws(int(KEY[0]), idx))
    # the mixer is a bijection: 2^16 distinct inputs give 2^16 distinct outputs
    assert np.unique(numpy_draws(0, np.arange(1 << 16))).size == 1 << 16
    assert int(mix32(np.uint32(5))) == int(numpy_draws(5, np.array([0]))[0])


@jit.njit
def _draws_from(kb, lo, n, out):
    base = draw_base(kb, lo)
    for j in range(n):
        out[j] = draw32_from(base, j)


def test_block_form_of_the_draws_is_the_same_word():
    # the encode loops draw from a block's base: the same words as draw32 of lo + j
    for lo in (0, 1, BLOCK, 12345 * BLOCK, (1 << 32) - 100, (1 << 32) + 7):
        kb = index_key(KEY[0], KEY[1], lo)
        got = np.empty(300, np.uint32)
        _draws_from(kb, lo, got.size, got)
        np.testing.assert_array_equal(got, draws(got.size, lo=lo))


def test_index_key_is_k0_below_2_32_and_differs_above():
    k0, k1 = KEY[0], KEY[1]
    assert index_key(k0, k1, 0) == k0 and index_key(k0, k1, (1 << 32) - 1) == k0
    above = {int(index_key(k0, k1, h << 32)) for h in range(1, 5)}
    assert k0 not in above and len(above) == 4
    # the same low word in another 2^32 range gets another draw
    assert draws(4, lo=1 << 32)[0] != draws(4)[0]


def test_draws_are_uniform():
    n = 1 << 20
    r = draws(n)
    for shift in (24, 9):   # the top byte; and the 23-bit threshold's low bits
        counts = np.bincount((r >> np.uint32(shift)) & np.uint32(0xFF), minlength=256)
        chi2 = ((counts - n / 256) ** 2 / (n / 256)).sum()
        assert chi2 < 255 + Z * np.sqrt(2 * 255), f"chi2 {chi2:.0f} over 255 buckets"
    # one index across many keys (exact by construction: the key is uniform)
    keys = counter_key(np.random.default_rng(1))
    col = np.array([draws(1, lo=7, key=counter_key(np.random.default_rng(s)))[0]
                    for s in range(4000)]) / 2.0 ** 32
    assert abs(col.mean() - 0.5) < Z * np.sqrt(1 / 12 / col.size)
    assert keys.dtype == np.uint32 and keys.size == jit.KEY_WORDS


@pytest.mark.parametrize("gap", [1, 2, 3, 7, 8, 64, 4096, 1 << 16])
def test_draws_of_nearby_indices_are_uncorrelated(gap):
    n = 1 << 19
    r = draws(n + gap).astype(np.float64) / 2.0 ** 32 - 0.5
    a, b = r[:n], r[gap:]
    corr = float(np.mean(a * b) / np.mean(a * a))
    assert abs(corr) < Z / np.sqrt(n), f"gap {gap}: correlation {corr:.2e}"
    # bit by bit, the 23 bits the rounding uses flip between the two half of the time
    flips = ((draws(n + gap)[:n] ^ draws(n + gap)[gap:]) >> np.uint32(9))
    for bit in range(23):
        p = float(((flips >> np.uint32(bit)) & np.uint32(1)).mean())
        assert abs(p - 0.5) < Z * 0.5 / np.sqrt(n), f"gap {gap}, bit {bit}: {p:.4f}"


def test_carry_probability_of_the_bit_trick_on_counter_draws():
    r = draws(400_000) >> np.uint32(9)
    for m in (0.1, 0.5, 0.9):
        carry = (r + np.uint32(round(m * (1 << 23)))) >= (1 << 23)
        assert abs(carry.mean() - m) < Z * np.sqrt(m * (1 - m) / r.size)


@pytest.mark.parametrize("spec,value", [("nat9", 1.5), ("nat", 1.5), ("nat9", -1.2),
                                        ("nat", 3.9)])
def test_a_tensors_rounding_errors_add_up_without_covariance(spec, value):
    """x constant: each element rounds to 2^e or 2^(e+1) with the same probability m, so
    the sum of one call has variance d (2^e)^2 m (1 - m) exactly when the elements' draws are
    independent; correlated neighbours would show as a larger (or smaller) variance."""
    d, calls = 4096, 3000
    op = get_compressor(spec, seed=11)
    x = np.full(d, value, np.float32)
    sums = np.array([op(x).astype(np.float64).sum() for _ in range(calls)])
    lo = 2.0 ** np.floor(np.log2(abs(value)))
    m = abs(value) / lo - 1
    var = d * lo ** 2 * m * (1 - m)
    assert abs(sums.mean() - d * value) < Z * np.sqrt(var / calls)
    rel_se = np.sqrt(2 / (calls - 1))
    assert abs(sums.var(ddof=1) / var - 1) < Z * rel_se, (sums.var(ddof=1), var)


def mixed(d: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(d) * np.exp2(rng.integers(-20, 20, d))).astype(np.float32)
    x[:5] = [1e30, 3e-37, -2e-38, 1e-40, -0.0]   # nat: these need the second, 64-bit draw
    return x


@pytest.mark.skipif(jit.max_threads() < 2 or not jit.COMPILED, reason="needs 2 threads")
@pytest.mark.parametrize("spec", ["nat", "nat9", "dither_nat:s=4,p=inf"])
def test_same_seed_same_bytes_for_every_thread_count(spec):
    x = mixed(3 * BLOCK + 13)   # several blocks and a partial sign byte
    before = jit.threads()
    try:
        out = {}
        for t in (1, 2):
            jit.set_threads(t)
            c = get_compressor(spec, seed=3).compress(x)
            out[t] = (c.data, get_compressor(spec).decompress(c).tobytes())
    finally:
        jit.set_threads(before)
    assert out[1] == out[2]


@pytest.mark.skipif(jit.max_threads() < 2 or not jit.COMPILED, reason="needs 2 threads")
def test_threads_split_the_blocks_into_ranges_run_at_once():
    import threading
    calls, met = [], threading.Barrier(2, timeout=10)

    def kernel(b0, b1, tag):   # each range's thread waits for the other: they overlap
        met.wait()
        calls.append((b0, b1, tag, threading.current_thread().name))
    before = jit.threads()
    try:
        jit.set_threads(2)
        jit.threaded(kernel, 5)("x")
    finally:
        jit.set_threads(before)
    assert sorted(c[:3] for c in calls) == [(0, 2, "x"), (2, 5, "x")]
    assert len({c[3] for c in calls}) == 2
    jit.set_threads(1)
    try:
        jit.threaded(lambda b0, b1: calls.append((b0, b1)), 5)()   # one thread: one range
    finally:
        jit.set_threads(before)
    assert calls[-1] == (0, 5)


def test_set_threads_refuses_bad_counts():
    with pytest.raises(ValueError, match="threads must be"):
        jit.set_threads(0)
    with pytest.raises(ValueError, match="threads must be"):
        jit.set_threads(jit.max_threads() + 1)


def test_nat9_sign_plane_is_packbits_across_blocks():
    x = mixed(2 * BLOCK + 13)
    c = get_compressor("nat9", seed=0).compress(x)
    nsign = -(-x.size // 8)
    signs = np.frombuffer(c.data, np.uint8, nsign)
    np.testing.assert_array_equal(signs, np.packbits(np.signbit(x)))
    y = get_compressor("nat9").decompress(c)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(x))
    ax, ay = np.abs(x.astype(np.float64)), np.abs(y.astype(np.float64))
    lo = np.exp2(np.floor(np.log2(np.where(ax > 0, ax, 1))))
    ok = (ay == lo) | (ay == 2 * lo) | (ax == 0) & (ay == 0) | (ax < 2.0 ** -126)
    assert ok.all()


def test_nat8_decode_equals_the_value_tables_for_every_reference():
    op = get_compressor("nat")
    body = np.arange(256, dtype=np.uint8)
    for ref in range(256):
        data = bytes([ref]) + body.tobytes()
        got = op.decompress(type(op.compress(np.ones(1, np.float32)))(
            data, (256,), 8 * len(data), op.spec))
        with np.errstate(over="ignore"):   # ref 255: its offset 0 is 2^128 = inf
            want = Nat8.value_lut(ref)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32),
                                      err_msg=f"ref {ref}")


@pytest.mark.parametrize("spec", ["nat", "nat9", "none", "randk:q=3"])
def test_decompress_into_a_buffer(spec):
    x = mixed(1000).reshape(10, 100)
    op = get_compressor(spec, seed=2)
    c = op.compress(x)
    buf = np.full((10, 100), np.nan, np.float32)
    assert op.decompress(c, out=buf) is buf
    np.testing.assert_array_equal(buf, op.decompress(c))


@pytest.mark.parametrize("bad,what", [
    (np.zeros((10, 100), np.float64), "float64"), (np.zeros((100, 10), np.float32), "shape"),
    (np.zeros((100, 10), np.float32).T, "C-contiguous"), ([0.0] * 1000, "list")])
def test_decompress_out_must_fit(bad, what):
    op = get_compressor("nat", seed=2)
    c = op.compress(np.ones((10, 100), np.float32))
    with pytest.raises(CompressorInputError, match=what) as e:
        op.decompress(c, out=bad)
    assert "\n" not in str(e.value)


def test_nat9_finds_a_nan_in_its_encoding_pass():
    x = np.ones((3, BLOCK), np.float32)
    x[2, 17] = np.nan
    with pytest.raises(NonFiniteError, match="flat index 131089 is not finite") as e:
        get_compressor("nat9").compress(x)
    assert e.value.index == 2 * BLOCK + 17 and "(3, 65536)" in str(e.value)


def test_a_bad_thread_count_in_the_environment_is_one_line():
    import os
    import subprocess
    import sys
    env = dict(os.environ, NINA_THREADS="two")
    p = subprocess.run([sys.executable, "-c", "import nina.jit"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0
    assert p.stderr.strip() == "nina: NINA_THREADS='two': give a whole number of threads >= 1"


def test_nat_blocks_with_a_smaller_max_are_rebased_unbiased():
    """nat codes each block against its own max, then moves blocks up to the tensor's max.
    Powers that only the tensor's max pushes out of range (more than 126 binades below it)
    are re-rounded then, with a draw independent of the first: still unbiased, and only the
    values 0 and the smallest power appear."""
    small = np.array([3e-36, -1e-35, 5e-40, 2.0 ** -114 * 1.5, 1e-3, -0.0], np.float32)
    reps = BLOCK // small.size
    x = np.zeros(2 * BLOCK, np.float32)
    x[0] = 1024.0                               # block 0: reference 2^11, smallest 2^-115
    x[BLOCK:BLOCK + reps * small.size] = np.tile(small, reps)   # block 1: its own max 1e-3
    op = get_compressor("nat", seed=8)
    s = np.stack([op(x)[BLOCK:BLOCK + reps * small.size].reshape(reps, small.size)
                  for _ in range(40)]).reshape(-1, small.size).astype(np.float64)
    mean, se = s.mean(axis=0), s.std(axis=0, ddof=1) / np.sqrt(s.shape[0])
    for j in range(4):
        assert abs(mean[j] - small[j]) < Z * se[j], (j, mean[j], small[j], se[j])
    for j in range(3):   # the ones below 2^-115: values 0 or +-2^-115 only
        assert set(np.unique(np.abs(s[:, j]))) <= {0.0, 2.0 ** -115}
    assert abs(mean[4] - 1e-3) < Z * se[4]
    assert np.signbit(s[:, 5]).all() and (s[:, 5] == 0).all()
    # the tensor's reference came from block 0
    assert op.compress(x).data[0] == 127 + 11


def test_nat_two_stage_rerounding_is_unbiased():
    """A power re-rounded within its block (far below the block's max) and again when the
    block is rebased (the tensor's max is higher still): the second draw must be independent
    of the first, or the probability would be 2^-max(d1, d2) instead of 2^-(d1 + d2)."""
    x = np.zeros(2 * BLOCK, np.float32)
    x[0] = 2.0 ** 23        # the tensor: reference field 151, smallest power 2^-102
    x[BLOCK] = 2.0 ** 20    # block 1: reference field 148, smallest power 2^-105
    tiny, mid = 1.25 * 2.0 ** -107, 1.25 * 2.0 ** -104   # below 2^-105; between the two
    x[BLOCK + 1::2] = tiny
    x[BLOCK + 2::2] = mid
    op = get_compressor("nat", seed=9)
    ys = np.stack([op(x)[BLOCK + 1:] for _ in range(30)]).astype(np.float64)
    smallest = 2.0 ** -102
    for part, value in ((ys[:, 0::2], tiny), (ys[:, 1::2], mid)):
        assert set(np.unique(part)) <= {0.0, smallest}
        p = value / smallest   # P(smallest) that keeps the mean: 5/128 and 5/16
        hits = float((part == smallest).mean())
        assert abs(hits - p) < Z * np.sqrt(p * (1 - p) / part.size), (hits, p)
