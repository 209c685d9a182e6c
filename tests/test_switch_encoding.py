"""Worker-side NAT8/INT32 encodings against an agreed block exponent."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from nina.wire import NAT8_ZERO, headroom_shift, nat8_to_int
from worker import switch_encoding as se


def _values(codes, eb, s):
    return se.decode_sums(nat8_to_int(codes, s), eb, s)


def test_exponent_bytes():
    x = np.array([[0.0, -3.0, 1.5], [0.0, 0.0, 0.0], [1e-40, 0, 0]], np.float32)
    assert se.exponent_bytes(x).tolist() == [128, 0, 0]


@given(st.integers(0, 2**31), st.sampled_from([1, 2, 4, 7, 32]))
def test_nat8_codes_are_neighbouring_powers(seed, n):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 256)) * np.exp(rng.uniform(-20, 20, (3, 1)))).astype(np.float32)
    s = headroom_shift(n)
    eb = se.exponent_bytes(x)
    codes = se.nat8_encode(x, eb, s, rng)
    got = _values(codes, eb, s).astype(np.float64)
    mag = np.abs(x.astype(np.float64))
    lo = 2.0 ** np.floor(np.log2(np.where(mag > 0, mag, 1)))
    resolution = np.ldexp(1.0, (eb.astype(int) - 126 - s)).reshape(-1, 1)
    ok_pow = np.isclose(np.abs(got), lo) | np.isclose(np.abs(got), 2 * lo)
    ok_small = (mag < resolution) & ((got == 0) | np.isclose(np.abs(got), resolution))
    assert (ok_pow | ok_small | ((mag == 0) & (got == 0))).all()
    assert (np.sign(got)[got != 0] == np.sign(x)[got != 0]).all()


def test_nat8_unbiased_including_below_resolution():
    rng = np.random.default_rng(7)
    s = headroom_shift(4)
    # one big value fixes the block exponent; the others sit far below its resolution
    x = np.array([[1000.0, 0.3, -2.7e-7, 1.1e-9] + [0.0] * 4], np.float32)
    reps = np.repeat(x, 200_000, axis=0)
    eb = se.exponent_bytes(reps)
    vals = _values(se.nat8_encode(reps, eb, s, rng), eb, s).astype(np.float64)
    mean, sem = vals.mean(0), vals.std(0, ddof=1) / np.sqrt(len(vals))
    nz = sem > 0
    assert (np.abs(mean - x[0])[nz] < 5 * sem[nz]).all()
    assert (mean[~nz] == x[0][~nz]).all()  # deterministic entries are exact (zeros, powers)
    # 1.1e-9 is below the resolution of a block topped by 1000: sent as zero code or min power
    codes = se.nat8_encode(reps[:1000], eb[:1000], s, rng)[:, 3]
    assert set(np.unique(codes).tolist()) <= {NAT8_ZERO, s}


def test_nat8_rejects_broken_exponent_agreement():
    x = np.array([[8.0]], np.float32)
    with pytest.raises(ValueError, match="agreed exponent"):
        se.nat8_encode(x, np.array([120]), 20, np.random.default_rng(0))
    # one power above the block's top (offset -1) is refused too, never sent as a zero code
    with pytest.raises(ValueError, match="agreed exponent"):
        se.nat8_encode(np.array([[4.0]], np.float32), np.array([127]), 20,
                       np.random.default_rng(0))
    # the top itself is fine: 2.0 has offset 0 against byte 127 (1.5's)
    assert se.nat8_encode(np.array([[2.0]], np.float32), np.array([127]), 20,
                          np.random.default_rng(0))[0, 0] == 0


def test_nat8_zero_negative_zero_subnormal():
    x = np.array([[0.0, -0.0, 1e-45, 4.0]], np.float32)
    codes = se.nat8_encode(x, se.exponent_bytes(x), 28, np.random.default_rng(0))
    assert codes[0, 0] == NAT8_ZERO and codes[0, 1] == NAT8_ZERO
    assert codes[0, 2] == NAT8_ZERO  # 1e-45 is far below 2^(e_top - 28)


def test_int32_round_trip_and_bounds():
    rng = np.random.default_rng(3)
    n = 8
    s = headroom_shift(n)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    eb = se.exponent_bytes(x)
    q = se.int32_encode(x, eb, s, rng)
    assert np.abs(q).max() <= 2**s
    back = se.decode_sums(q, eb, s)
    scale = np.ldexp(1.0, eb.astype(int) - 126 - s).reshape(-1, 1)
    assert (np.abs(back - x) <= scale * 1.0001).all()
    # n workers at the largest magnitude never wrap int32
    assert n * np.abs(q).max() < 2**31


def test_check_finite_names_index():
    with pytest.raises(ValueError, match="index 2"):
        se.check_finite(np.array([1.0, 2.0, np.nan]))


def test_int32_stochastic_rounding_is_unbiased():
    """E[decode(encode(x))] = x for values between grid points: each rounds up with probability
    equal to its fraction (a floor or round-to-nearest encoder fails this)."""
    rng = np.random.default_rng(11)
    s = headroom_shift(4)
    eb = np.uint8(130)                                  # e_top = 4: unit = 2^(4 - s)
    unit = np.ldexp(1.0, 4 - s)
    frac = np.array([0.5, 0.3, -0.7, 5.25, -2.9, 0.0, 3.0, 0.01])
    x = np.array([[15.0] + list(frac * unit)], np.float32)   # 15 fixes the block exponent
    assert se.exponent_bytes(x)[0] == eb
    scaled = x[0].astype(np.float64) / unit
    reps = np.repeat(x, 200_000, axis=0)
    q = se.int32_encode(reps, np.full(len(reps), eb), s, rng).astype(np.float64)
    # every draw is one of the two neighbouring integers
    assert ((q == np.floor(scaled)) | (q == np.ceil(scaled))).all()
    mean, sem = q.mean(0), q.std(0, ddof=1) / np.sqrt(len(q))
    random = sem > 0
    assert random.sum() == 6                            # all but the integers 0 and 3
    assert (np.abs(mean - scaled)[random] < 5 * sem[random]).all()
    assert (mean[~random] == scaled[~random]).all()
    # without a random source (rounding="nearest") it is round-to-nearest, deterministic
    near = se.int32_encode(x, np.array([eb]), s, None)[0]
    np.testing.assert_array_equal(near, np.rint(scaled))


def test_blocks_at_the_bottom_of_the_float_range():
    """An all-zero block (exponent byte 0) sends only zero codes; a block topped by the
    smallest normal float (byte 1) sends its powers, not zeros."""
    rng = np.random.default_rng(0)
    s = headroom_shift(2)
    zeros = np.zeros((1, 8), np.float32)
    assert se.exponent_bytes(zeros)[0] == 0
    assert (se.nat8_encode(zeros, np.array([0]), s, rng) == NAT8_ZERO).all()
    tiny = np.array([[np.finfo(np.float32).tiny, -np.finfo(np.float32).tiny, 0.0]], np.float32)
    eb = se.exponent_bytes(tiny)
    assert eb[0] == 1
    codes = se.nat8_encode(tiny, eb, s, rng)
    # 2^-126 is exactly a power: o = e_top - e = 1, deterministic; its sign in bit 7
    assert codes[0].tolist() == [1, 0x80 | 1, NAT8_ZERO]
    np.testing.assert_array_equal(_values(codes, eb, s)[0], tiny[0])


def test_natural_rounding_bit_trick_carries_exactly():
    """x = 1 + 2^-23 rounds up to 2 exactly when noise + mantissa reaches 2^23: noise 2^23 - 1
    carries (every mantissa bit counts), noise 2^23 - 2 does not. natural_code9 is the one
    bit trick the NAT8 encoding and the nat compressors share."""
    from worker.compress.natural import natural_code9
    bits = int(np.array([np.float32(1) + np.float32(2.0 ** -23)]).view(np.uint32)[0])
    assert natural_code9(bits, (1 << 23) - 1) == 128      # biased exponent of 2.0, sign 0
    assert natural_code9(bits, (1 << 23) - 2) == 127      # 1.0
    neg = bits | (1 << 31)
    assert natural_code9(neg, (1 << 23) - 1) == 0x100 | 128


def test_exponent_bytes_of_a_vector_and_of_stacked_blocks():
    assert se.exponent_bytes(np.array([0.5, -3.0], np.float32)) == 128
    blocks = np.array([[[1.0, 0], [0, 4.0]], [[0.25, 0], [0, 0]]], np.float32)
    assert se.exponent_bytes(blocks).tolist() == [[127, 129], [125, 0]]


def test_check_finite_names_the_first_bad_index():
    with pytest.raises(ValueError, match="inf at flat index 1"):
        se.check_finite(np.array([1.0, np.inf, np.nan]))
