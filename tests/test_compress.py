"""worker.compress: encodings, value sets, edge cases, errors, registry, error feedback.

Statistical properties (unbiasedness, omega) are in test_compress_stats.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from worker.compress import (Compressed, CompressedFormatError, CompressorInputError,
                             CompressorSpecError, ErrorFeedback, NonFiniteError, get_compressor,
                             list_compressors)
from worker.compress.bitpack import bits_for, pack_uint, packed_size, unpack_uint
from worker.compress.dithering import omega_nat, omega_sta
from worker.compress.registry import REGISTRY

VECTOR_SPECS = [
    "none", "nat", "nat9", "dither_nat:s=4,p=inf", "dither_nat:s=3,p=2", "dither_nat:s=2,p=1",
    "dither_sta:s=8,p=2", "dither_sta:s=1,p=inf", "dither_sta:s=5,p=1", "randk:q=0.25",
    "randk:q=3", "topk:k=0.1", "nat_randk:q=0.25", "nat_topk:k=4", "sparse_dither:s=1",
    "sparse_dither:s=6", "spherical:block=4,bits=5",
]
RANDOM_SPECS = [s for s in VECTOR_SPECS if not s.startswith(("none", "topk", "spherical"))]

# derandomized: the same examples every run (deterministic, like the seeded draws)
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True)

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-2.0 ** 100,
                     max_value=2.0 ** 100)
vectors = hnp.arrays(np.float32, st.integers(1, 300), elements=finite32)


def gaussian(d, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(d) * scale).astype(np.float32)


def roundtrip_from_bytes(c: Compressed) -> np.ndarray:
    """Decode with a fresh operator rebuilt from the codec, from a copy of the raw bytes."""
    alone = Compressed(data=bytes(bytearray(c.data)), shape=tuple(c.shape), bits=c.bits,
                       codec=str(c.codec))
    return get_compressor(alone.codec, seed=12345).decompress(alone)


def _kept_count(spec: str) -> int | None:
    """The integer q/k of a random-k/top-k spec (a fraction never exceeds d): None otherwise."""
    name, _, args = spec.partition(":")
    if not name.endswith(("randk", "topk")):
        return None
    value = dict(a.split("=") for a in args.split(","))["q" if "randk" in name else "k"]
    return None if "." in value else int(value)


def is_power_of_two(v: np.ndarray) -> np.ndarray:
    m, _ = np.frexp(np.abs(v.astype(np.float64)))
    return m == 0.5


# ---------------------------------------------------------------- byte encodings, round trips
@pytest.mark.parametrize("spec", VECTOR_SPECS)
@PROPERTY
@given(x=vectors)
def test_roundtrip_from_bytes_alone(spec, x):
    op = get_compressor(spec, seed=3)
    need = _kept_count(spec)
    if need is not None and x.size < need:   # the one refusal: more kept than d
        with pytest.raises(CompressorInputError, match=f"asks for {need} .* d={x.size}$"):
            op.compress(x)
        return
    c = op.compress(x)
    y = op.decompress(c)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.isfinite(y).all()
    assert c.bits == 8 * len(c.data)
    np.testing.assert_array_equal(roundtrip_from_bytes(c), y)


@PROPERTY
@given(x=vectors)
def test_encoding_sizes(x):
    d = x.size
    sizes = {
        "none": 4 * d,
        "nat": 1 + d,
        "nat9": -(-d // 8) + d,
        "dither_nat:s=4,p=inf": 4 + packed_size(3, d) + -(-d // 8),
        "dither_sta:s=8,p=2": 4 + packed_size(4, d) + -(-d // 8),
        "dither_sta:s=1,p=2": 4 + packed_size(1, d) + -(-d // 8),
        "topk:k=1": 4 + packed_size(bits_for(d), 1) + 4,
        "nat_topk:k=1": 4 + packed_size(bits_for(d), 1) + 1 + 1,
        "spherical:block=4,bits=5": packed_size(5, -(-d // 4)) + 2 * -(-d // 4),
    }
    for spec, n in sizes.items():
        c = get_compressor(spec, seed=0).compress(x)
        assert len(c.data) == n, spec
        assert c.bits == 8 * n


def test_randk_size_and_bits_per_element():
    d, q = 1000, 100
    c = get_compressor("randk:q=0.1", seed=0).compress(gaussian(d))
    assert len(c.data) == 4 + packed_size(bits_for(d), q) + 4 * q
    assert c.bits_per_element == pytest.approx((32 + q * (10 + 32) + 4) / d, abs=0.01)
    c = get_compressor("nat_randk:q=0.1", seed=0).compress(gaussian(d))
    assert len(c.data) == 4 + packed_size(bits_for(d), q) + 1 + q


def test_nat8_layout_is_sign_and_offset_below_reference():
    x = np.array([1.0, -1.0, 0.0, -0.0, 0.25, -64.0], np.float32)
    op = get_compressor("nat", seed=0)
    c = op.compress(x)
    ref = c.data[0]
    assert ref == 127 + 6 + 1  # 64 = 2^6; 2^7 is the largest power it can round to
    codes = np.frombuffer(c.data[1:], np.uint8)
    assert list(codes[:4]) == [ref - 127, 0x80 | (ref - 127), 0x7F, 0xFF]  # +-1 exact, +-0
    assert codes[4] == ref - 125  # 0.25 = 2^-2 has biased exponent 125
    assert codes[5] == 0x80 | 1  # -64 = -2^6, one below the reference 2^7


def test_nat9_layout_is_sign_plane_then_exponent_bytes():
    x = np.array([1.0, -2.0, 0.0, -0.5, 2.0 ** -126, 2.0 ** 127, -0.0, 8.0, 4.0], np.float32)
    c = get_compressor("nat9", seed=0).compress(x)  # powers of two are kept exactly
    signs = np.unpackbits(np.frombuffer(c.data[:2], np.uint8), count=9)
    assert list(signs) == [0, 1, 0, 1, 0, 0, 1, 0, 0]
    assert list(c.data[2:]) == [127, 128, 0, 126, 1, 254, 0, 130, 129]


def test_dither_layout_norm_levels_signs():
    x = np.array([4.0, -2.0, 1.0, 0.0], np.float32)  # p=inf: t = 1, 1/2, 1/4, 0 (all levels)
    c = get_compressor("dither_nat:s=3,p=inf", seed=0).compress(x)
    assert np.frombuffer(c.data[:4], "<f4")[0] == 4.0
    levels = unpack_uint(c.data[4:5], 2, 4)
    assert list(levels) == [3, 2, 1, 0]
    assert list(np.unpackbits(np.frombuffer(c.data[5:], np.uint8), count=4)) == [0, 1, 0, 0]


@PROPERTY
@given(width=st.integers(1, 32), data=st.data())
def test_bitpack_roundtrip(width, data):
    n = data.draw(st.integers(0, 70))
    vals = np.array(data.draw(st.lists(st.integers(0, (1 << width) - 1), min_size=n,
                                       max_size=n)), dtype=np.uint64).astype(np.uint32)
    buf = pack_uint(vals, width)
    assert len(buf) == packed_size(width, n)
    assert 0 <= len(buf) * 8 - width * n < 8  # a continuous stream: < 1 byte of padding
    np.testing.assert_array_equal(unpack_uint(buf, width, n), vals)


@pytest.mark.parametrize("spec", VECTOR_SPECS)
def test_truncated_or_foreign_payload_is_rejected(spec):
    x = gaussian(50)
    c = get_compressor(spec, seed=0).compress(x)
    op = get_compressor(spec)
    with pytest.raises(CompressedFormatError):
        op.decompress(Compressed(c.data[:-1], c.shape, c.bits - 8, c.codec))
    with pytest.raises(CompressedFormatError):
        op.decompress(Compressed(c.data + b"\0", c.shape, c.bits + 8, c.codec))
    other = "nat9" if spec != "nat9" else "nat"
    with pytest.raises(CompressedFormatError, match="cannot decode"):
        get_compressor(other).decompress(c)


# ---------------------------------------------------- the values are what the operator claims
@PROPERTY
@given(x=vectors)
def test_nat_outputs_are_neighbouring_powers_of_two(x):
    for spec in ("nat9", "nat"):
        y = get_compressor(spec, seed=1)(x).astype(np.float64)
        x64 = x.astype(np.float64)
        nz = y != 0
        assert is_power_of_two(y[nz]).all()
        assert (np.signbit(y) == np.signbit(x64)).all()
        amax = np.abs(x64).max()
        # nat8 may round values > 126 binades under the max to 0 or its smallest power
        ok_range = (np.abs(x64) >= 2.0 ** -126) & (np.abs(x64) * 2.0 ** 124 >= amax)
        lo = 2.0 ** np.floor(np.log2(np.abs(x64[ok_range])))
        got = np.abs(y[ok_range])
        assert ((got == lo) | (got == 2 * lo)).all()
        assert (np.abs(y) <= 2.0 ** 127).all()


def test_nat_never_returns_input_unchanged():
    x = gaussian(10_000)
    for spec in ("nat", "nat9"):
        y = get_compressor(spec, seed=0)(x)
        assert is_power_of_two(y).all()
        assert np.mean(y != x) > 0.99


@pytest.mark.parametrize("spec", ["dither_nat:s=4,p=inf", "dither_nat:s=3,p=2",
                                  "dither_nat:s=5,p=1"])
def test_natural_dithering_levels(spec):
    op = get_compressor(spec, seed=2)
    x = gaussian(500) * np.float32(3)
    y = op(x).astype(np.float64)
    norm = np.linalg.norm(x.astype(np.float64), op.p)
    t, r = np.abs(x) / norm, np.abs(y) / norm
    allowed = np.array([0.0] + [2.0 ** (j - op.s) for j in range(1, op.s + 1)])
    assert np.isin(np.round(r, 5), np.round(allowed, 5)).all()
    # the chosen level is one of the two around t
    lo = np.where(t >= 2.0 ** (1 - op.s), 2.0 ** np.floor(np.log2(np.maximum(t, 1e-300))), 0)
    hi = np.where(lo > 0, 2 * lo, 2.0 ** (1 - op.s))
    assert (np.isclose(r, lo, rtol=1e-5, atol=0) | np.isclose(r, hi, rtol=1e-5)
            | (r == 0) & (lo == 0)).all()
    assert ((y == 0) | (np.sign(y) == np.sign(x))).all()


@pytest.mark.parametrize("spec", ["dither_sta:s=8,p=2", "dither_sta:s=3,p=inf",
                                  "dither_sta:s=20,p=1", "sparse_dither:s=1",
                                  "sparse_dither:s=4"])
def test_standard_dithering_levels(spec):
    op = get_compressor(spec, seed=2)
    x = gaussian(400)
    p = getattr(op, "p", 2)
    y = op(x).astype(np.float64)
    norm = np.linalg.norm(x.astype(np.float64), p)
    lev = np.abs(y) / norm * op.s
    assert np.allclose(lev, np.round(lev), atol=1e-4)
    assert (np.abs(np.round(lev) - np.abs(x) / norm * op.s) < 1 + 1e-5).all()
    assert ((y == 0) | (np.sign(y) == np.sign(x))).all()


def test_sparse_dither_uses_bitmap_or_index_list_whichever_is_shorter():
    op = get_compressor("sparse_dither:s=1", seed=0)
    d = 4096
    spiky = np.zeros(d, np.float32)
    spiky[[5, 100, 4000]] = [1.0, -1.0, 1.0]  # t = 1/sqrt(3) each: few nonzeros
    c = op.compress(spiky)
    assert c.data[8] == 1 and len(c.data) < 30  # index list
    flat = np.ones(d, np.float32)  # t = 1/64: ~64 nonzeros of 4096 -> list still shorter
    assert op.compress(flat).data[8] == 1
    c = get_compressor("sparse_dither:s=64", seed=0).compress(flat)  # every coord nonzero
    assert c.data[8] == 0
    np.testing.assert_array_equal(roundtrip_from_bytes(c), flat)


def test_randk_keeps_exactly_q_scaled_coordinates():
    x = gaussian(1000) + np.float32(5)  # no zeros
    for spec, q in (("randk:q=0.1", 100), ("randk:q=37", 37), ("randk:q=1.0", 1000)):
        y = get_compressor(spec, seed=4)(x)
        nz = np.flatnonzero(y)
        assert nz.size == q
        np.testing.assert_array_equal(y[nz], x[nz] * np.float32(1000 / q))


def test_topk_keeps_the_largest():
    x = gaussian(1000)
    y = get_compressor("topk:k=0.05", seed=0)(x)
    kept = y != 0
    assert kept.sum() == 50
    np.testing.assert_array_equal(y[kept], x[kept])
    assert np.abs(x[kept]).min() >= np.abs(x[~kept]).max()
    op = get_compressor("topk:k=50")
    assert op.delta(1000) == 0.05 and op.omega(1000) is None and not op.unbiased


def test_nat_randk_values_are_powers_on_q_coordinates():
    x = gaussian(512) + np.float32(3)
    y = get_compressor("nat_randk:q=64", seed=1)(x)
    nz = np.flatnonzero(y)
    assert nz.size == 64 and is_power_of_two(y[nz]).all()
    scaled = x[nz].astype(np.float64) * 8
    assert (np.abs(y[nz]) >= np.abs(scaled) / 2).all() and (np.abs(y[nz]) <= 2 * np.abs(scaled)).all()


def test_spherical_picks_best_codeword_and_contracts():
    op = get_compressor("spherical:block=8,bits=6,codebook_seed=7", seed=0)
    x = gaussian(8 * 300)
    y = op(x)
    blocks, out = x.reshape(-1, 8).astype(np.float64), y.reshape(-1, 8).astype(np.float64)
    cb = op.codebook.astype(np.float64)
    cos = blocks @ cb.T / np.linalg.norm(blocks, axis=1, keepdims=True)
    best = np.abs(cos).argmax(1)
    # each output block is a multiple of the best codeword, of the projection's length
    proj = (blocks * cb[best]).sum(1)
    np.testing.assert_allclose(out, proj[:, None] * cb[best], rtol=1e-2, atol=1e-6)
    err = ((out - blocks) ** 2).sum() / (blocks ** 2).sum()
    assert 0 < err < 1
    expected = 1 - (np.abs(cos).max(1) ** 2 * (blocks ** 2).sum(1)).sum() / (blocks ** 2).sum()
    assert err == pytest.approx(expected, abs=0.01)
    # the codebook is shared through codebook_seed only
    assert np.array_equal(get_compressor(op.spec, seed=99).codebook, op.codebook)
    assert not np.array_equal(get_compressor("spherical:block=8,bits=6,codebook_seed=8").codebook,
                              op.codebook)


def test_spherical_bits_per_element():
    c = get_compressor("spherical:block=8,bits=8", seed=0).compress(gaussian(8000))
    assert c.bits_per_element == 3.0


# ----------------------------------------------------------------------------- edge values
@pytest.mark.parametrize("spec", VECTOR_SPECS)
def test_all_zero_tensor(spec):
    x = np.zeros(64, np.float32)
    x[::2] = -0.0
    c = get_compressor(spec, seed=0).compress(x)
    y = get_compressor(spec, seed=0).decompress(c)
    assert (y == 0).all()


def test_negative_zero_keeps_its_sign_in_nat():
    x = np.array([-0.0, 0.0, 1.0], np.float32)
    for spec in ("nat", "nat9"):
        y = get_compressor(spec, seed=0)(x)
        assert list(np.signbit(y)) == [True, False, False]


def test_subnormals_round_to_zero_or_smallest_normal():
    x = np.full(1000, 1e-40, np.float32)
    for spec in ("nat", "nat9"):
        y = get_compressor(spec, seed=0)(x)
        assert set(np.unique(y)) <= {0.0, np.float32(2.0 ** -126)}


def test_huge_values_never_overflow():
    x = np.array([3e38, -3.4e38, 1.5e38, -1.7e38, 1.0], np.float32)
    for spec in ("nat", "nat9"):
        for seed in range(20):
            y = get_compressor(spec, seed=seed)(x)
            assert np.isfinite(y).all()
            assert (np.abs(y[:2]) == 2.0 ** 127).all()  # saturated (documented bias)
            assert np.abs(y[2]) in (2.0 ** 126, 2.0 ** 127)
    for spec in ("none", "dither_nat:s=4,p=inf", "dither_sta:s=4,p=inf", "topk:k=2",
                 "spherical:block=2,bits=3"):
        assert np.isfinite(get_compressor(spec, seed=0)(x)).all()


@pytest.mark.parametrize("spec", ["dither_sta:s=4,p=2", "dither_nat:s=4,p=1", "sparse_dither"])
def test_norm_overflow_is_a_clear_error(spec):
    with pytest.raises(CompressorInputError, match="overflows float32"):
        get_compressor(spec).compress(np.full(4, 3e38, np.float32))


# ----------------------------------------------------------------------- determinism
@pytest.mark.parametrize("spec", VECTOR_SPECS)
def test_fixed_seed_is_deterministic(spec):
    x = gaussian(300, seed=5)
    a = get_compressor(spec, seed=11).compress(x).data
    b = get_compressor(spec, seed=11).compress(x).data
    assert a == b
    if spec in RANDOM_SPECS:
        assert get_compressor(spec, seed=12).compress(x).data != a


def test_generator_can_be_passed_in():
    x = gaussian(100)
    a = get_compressor("nat", seed=np.random.default_rng(3)).compress(x).data
    b = get_compressor("nat", seed=np.random.default_rng(3)).compress(x).data
    assert a == b


# -------------------------------------------------------------------------- input errors
def test_nan_and_inf_report_first_bad_index():
    x = np.ones((4, 5), np.float32)
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    with pytest.raises(NonFiniteError, match="flat index 7") as e:
        get_compressor("nat").compress(x)
    assert e.value.index == 7
    x[1, 2] = 0
    with pytest.raises(NonFiniteError, match="flat index 15"):
        get_compressor("dither_sta").compress(x)


def test_float64_overflowing_float32_is_reported():
    x = np.array([1.0, 1e300], np.float64)
    with pytest.raises(NonFiniteError, match="index 1 overflows float32"):
        get_compressor("none").compress(x)


@pytest.mark.parametrize("bad", [np.arange(4), np.ones(3, bool), np.ones(3, np.complex64),
                                 np.array([1.0, "a"], object)])
def test_non_float_dtypes_rejected(bad):
    with pytest.raises(CompressorInputError, match="dtype"):
        get_compressor("nat").compress(bad)


def test_float16_and_float64_are_computed_in_float32():
    x32 = gaussian(64)
    ref = get_compressor("nat", seed=1).compress(x32).data
    assert get_compressor("nat", seed=1).compress(x32.astype(np.float64)).data == ref
    x16 = x32.astype(np.float16)
    assert (get_compressor("nat", seed=1).compress(x16).data
            == get_compressor("nat", seed=1).compress(x16.astype(np.float32)).data)


def test_empty_tensor_rejected():
    with pytest.raises(CompressorInputError, match="empty"):
        get_compressor("nat").compress(np.zeros((3, 0), np.float32))


@pytest.mark.parametrize("spec, match", [
    ("dither_nat:s=0", "levels"), ("dither_sta:s=-2", "levels"), ("dither_nat:s=128", "1..127"),
    ("dither_nat:p=3", "1, 2, inf"), ("dither_sta:p=0.5", "1, 2, inf"), ("randk:q=0", ">= 1"),
    ("randk:q=1.5", "fraction"), ("topk:k=-1", ">= 1"), ("randk:q=abc", "count nor a fraction"),
    ("sparse_dither:s=0", "levels"), ("spherical:bits=17", "1..16"), ("powersgd:r=0", "rank"),
    ("spherical:bits=16,block=128", "too large"),
    ("dither_nat:t=3", "unknown parameter 't'"), ("dither_nat:s", "key=value"),
    ("dither_nat:s=2,s=3", "twice"), ("nat:s=2", "accepted: none"),
])
def test_bad_parameters(spec, match):
    with pytest.raises(CompressorSpecError, match=match):
        get_compressor(spec)


def test_unknown_name_lists_known_names():
    with pytest.raises(CompressorSpecError) as e:
        get_compressor("gzip:level=9")
    for name in REGISTRY:
        assert name in str(e.value)
    with pytest.raises(CompressorSpecError):
        get_compressor("")
    assert issubclass(CompressorSpecError, ValueError)


@pytest.mark.parametrize("spec", ["randk:q=11", "topk:k=11", "nat_randk:q=11"])
def test_more_kept_than_d_rejected(spec):
    with pytest.raises(CompressorInputError, match="d=10"):
        get_compressor(spec).compress(gaussian(10))


# ----------------------------------------------------------------------------- registry
def test_registry_specs_round_trip_and_describe():
    names = [n for n, _ in list_compressors()]
    assert set(REGISTRY) <= set(names) and "ef+<spec>" in names
    for spec in VECTOR_SPECS + ["powersgd:r=3", "nat8", "identity", "qsgd"]:
        op = get_compressor(spec)
        assert get_compressor(op.spec).spec == op.spec
    assert get_compressor("dither_nat:s=4,p=inf").spec == "dither_nat:s=4,p=inf"
    assert get_compressor("dither_sta:p=2,s=8").spec == "dither_sta:s=8,p=2"
    assert get_compressor("randk:q=0.1").spec == "randk:q=0.1"
    assert get_compressor(" NAT ").spec == "nat"


def test_switch_summable_flags():
    summable = {n for n in REGISTRY if get_compressor(n).summable_in_switch}
    assert summable == {"none", "nat", "nat9"}


def test_omega_formulas():
    assert get_compressor("nat").omega(10) == 1 / 8
    assert get_compressor("randk:q=0.1").omega(1000) == pytest.approx(9)
    assert get_compressor("nat_randk:q=0.1").omega(1000) == pytest.approx(9 / 8 * 10 - 1)
    assert omega_sta(100, 5, 2) == pytest.approx(min(100 / 25, 10 / 5))
    assert omega_sta(100, 20, 2) == pytest.approx(100 / 400)
    assert omega_sta(100, 5, math.inf) == omega_sta(100, 5, 2)
    assert omega_sta(100, 5, 1) == pytest.approx(min(100 ** 2 / 25, 100 / 5))
    a = 10 * 2.0 ** -3
    assert omega_nat(100, 4, 2) == pytest.approx(1 / 8 + a * min(1, a))
    assert omega_nat(100, 4, 1) == pytest.approx(1 / 8 + 100 / 8 * 1)
    for spec in ("topk", "spherical", "powersgd", "nat_topk"):
        assert get_compressor(spec).omega(100) is None


# ------------------------------------------------------------------------- error feedback
def test_error_feedback_accumulates_the_residual():
    ef = get_compressor("ef+topk:k=3", seed=0)
    assert isinstance(ef, ErrorFeedback)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(20).astype(np.float32) for _ in range(30)]
    sent = np.zeros(20)
    e = np.zeros(20, np.float32)
    for x in xs:
        c = ef.compress(x)
        y = ef.decompress(c)
        np.testing.assert_allclose(ef.residual(), e + x - y, rtol=0, atol=1e-6)  # e+x-C(e+x)
        # top-k was applied to the corrected vector e + x, not to x
        np.testing.assert_array_equal(y, get_compressor("topk:k=3")(e + x))
        e = ef.residual()
        sent += y
    # nothing is lost: everything sent plus the memory is everything that came in
    np.testing.assert_allclose(sent + ef.residual(), np.sum(xs, axis=0), atol=1e-4)


def test_error_feedback_keys_and_identity():
    ef = ErrorFeedback(get_compressor("none"))
    ef.compress(gaussian(5), key="a")
    assert (ef.residual("a") == 0).all() and ef.residual("b") is None
    ef2 = ErrorFeedback(get_compressor("randk:q=1", seed=0))
    ef2.compress(gaussian(5), key="w")
    with pytest.raises(CompressorInputError, match="shape"):
        ef2.compress(gaussian(6), key="w")
    ef2.reset()
    assert ef2.residual("w") is None


# ------------------------------------------------------------------------------ PowerSGD
def test_powersgd_recovers_a_rank_r_matrix_and_counts_bits():
    rng = np.random.default_rng(0)
    m, n, r = 30, 20, 3
    mat = (rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(np.float32)
    op = get_compressor("powersgd:r=3", seed=0)
    c = op.compress(mat)
    assert c.bits == 32 * r * (m + n)
    np.testing.assert_allclose(roundtrip_from_bytes(c), mat, atol=1e-3)


def test_powersgd_warm_start_converges_to_best_rank_r():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    v, _ = np.linalg.qr(rng.standard_normal((25, 25)))
    sv = 0.7 ** np.arange(25)
    mat = ((u[:, :25] * sv) @ v.T).astype(np.float32)
    best = np.sqrt((sv[2:] ** 2).sum())  # optimal rank-2 error (Eckart-Young)
    op = get_compressor("powersgd:r=2", seed=0)
    errs = [np.linalg.norm(op(mat) - mat) for _ in range(15)]
    assert errs[-1] <= best * 1.01
    assert errs[-1] < errs[0] or errs[0] <= best * 1.01
    op.reset()


def test_powersgd_shapes_and_errors():
    op = get_compressor("powersgd:r=2", seed=0)
    t = gaussian(4 * 3 * 5).reshape(4, 3, 5)
    c = op.compress(t)
    assert c.shape == (4, 3, 5) and c.bits == 32 * 2 * (4 + 15)
    assert op.decompress(c).shape == (4, 3, 5)
    with pytest.raises(CompressorInputError, match="matrix"):
        op.compress(gaussian(10))
    with pytest.raises(CompressorInputError, match="exceeds"):
        get_compressor("powersgd:r=5").compress(gaussian(12).reshape(4, 3))
    assert (op(np.zeros((6, 4), np.float32)) == 0).all()
