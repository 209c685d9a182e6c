"""Statistical properties of the compression operators: unbiasedness and variance (omega).

Every test draws N independent compressions with a fixed seed (deterministic, not flaky) and
compares sample means against 6 standard errors computed from the samples themselves. For a
correct operator a 6-sigma deviation has probability ~1e-9 per coordinate; a biased operator
(see the negative controls) fails by tens of sigmas.
"""
from __future__ import annotations

import numpy as np
import pytest

from worker.compress import get_compressor
from worker.compress.base import random_u32

Z = 6.0


def draws(op, x: np.ndarray, n: int) -> np.ndarray:
    """n independent compressions of x (one call each), as float64 rows."""
    return np.stack([op(x) for _ in range(n)]).astype(np.float64)


def tiled_draws(op, x: np.ndarray, n: int) -> np.ndarray:
    """n draws of a per-coordinate operator in one call on n copies of x (same max|x|)."""
    return op(np.tile(x, n)).astype(np.float64).reshape(n, x.size)


def assert_unbiased(samples: np.ndarray, x: np.ndarray) -> None:
    x = x.astype(np.float64)
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(n)
    fixed = se == 0  # every draw gave the same value: it must be x itself
    np.testing.assert_allclose(mean[fixed], x[fixed], rtol=1e-6, atol=0)
    z = np.abs(mean[~fixed] - x[~fixed]) / se[~fixed]
    worst = int(np.argmax(z)) if z.size else 0
    assert z.size == 0 or z.max() < Z, (
        f"coordinate {np.flatnonzero(~fixed)[worst]}: mean {mean[~fixed][worst]:.6g} vs "
        f"x {x[~fixed][worst]:.6g} is {z.max():.1f} standard errors off")


def omega_hat(samples: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of ||C(x) - x||^2 / ||x||^2 over the draws."""
    x = x.astype(np.float64)
    r = ((samples - x) ** 2).sum(axis=1) / (x ** 2).sum()
    return float(r.mean()), float(r.std(ddof=1) / np.sqrt(r.size))


def assert_omega_at_most(samples, x, bound):
    w, se = omega_hat(samples, x)
    assert w - Z * se <= bound, f"measured omega {w:.4g} +- {se:.2g} exceeds bound {bound:.4g}"
    return w, se


def assert_omega_equals(samples, x, expected):
    w, se = omega_hat(samples, x)
    assert abs(w - expected) <= Z * se + 1e-9, (
        f"measured omega {w:.5g} +- {se:.2g}, expected {expected:.5g}")


def mixed_vector(d: int, seed: int = 0) -> np.ndarray:
    """Signs, many binades, a zero and a few exact powers of two."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) * np.exp2(rng.integers(-6, 6, d))
    x[0], x[1], x[2] = 0.0, 0.5, -4.0
    return x.astype(np.float32)


def spread_vector(d: int, seed: int = 0) -> np.ndarray:
    """Signs, magnitudes over 4 binades, a zero and an exact power of two. The spread is
    bounded so that every coordinate of a dithered vector leaves zero often enough in a few
    thousand draws for its mean to be tested."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-1, 1], d) * rng.uniform(0.5, 1, d) * np.exp2(rng.integers(-2, 2, d))
    x[0], x[1] = 0.0, -0.5
    return x.astype(np.float32)


def four_thirds(d: int, seed: int = 0) -> np.ndarray:
    """|x_i| = 4/3 2^k: the worst case of C_nat, where E||C(x)-x||^2 = ||x||^2 / 8 exactly."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-1, 1], d) * np.float32(4 / 3) * np.exp2(rng.integers(-5, 5, d))
            ).astype(np.float32)


# ------------------------------------------------------------------------- natural compression
@pytest.mark.parametrize("spec", ["nat", "nat9"])
def test_nat_unbiased_and_omega(spec):
    x = mixed_vector(64)
    s = tiled_draws(get_compressor(spec, seed=1), x, 8000)
    assert_unbiased(s, x)
    assert_omega_at_most(s, x, 1 / 8)
    y = four_thirds(64)
    s = tiled_draws(get_compressor(spec, seed=2), y, 8000)
    assert_omega_equals(s, y, 1 / 8 - 1e-7)  # float32(4/3) is a hair below 4/3


def test_nat_subnormals_unbiased():
    x = np.full(1, 1e-40, np.float32)  # rounds to 0 or 2^-126, up with probability ~0.0085
    s = tiled_draws(get_compressor("nat9", seed=3), x, 200_000)
    assert_unbiased(s, x)


def test_nat8_far_below_the_max_stays_unbiased():
    # max 2^10 -> reference 2^11; powers below 2^(11-126) are re-rounded to 0 or 2^-115
    x = np.array([1024.0, 3e-36, -1e-35, 5e-40, 2.0 ** -114 * 1.5], np.float32)
    op = get_compressor("nat", seed=4)
    s = tiled_draws(op, x, 200_000)
    assert_unbiased(s, x)
    small = np.abs(s[:, 1:4])
    assert set(np.unique(small)) <= {0.0, 2.0 ** -115}


def test_nat_large_values_unbiased():
    x = np.array([1.5e38, -1.2e38, 1e30], np.float32)  # below 2^127: no saturation
    s = tiled_draws(get_compressor("nat", seed=5), x, 20_000)
    assert_unbiased(s, x)


def test_bit_trick_carry_probability_is_the_mantissa():
    """The core claim behind C_nat, checked directly on the random words it uses."""
    rng = np.random.default_rng(0)
    r = random_u32(rng, 400_000) >> np.uint32(9)
    for m in (0.1, 0.5, 0.9):
        mant = np.uint32(round(m * (1 << 23)))
        carry = (r + mant) >= (1 << 23)
        se = np.sqrt(m * (1 - m) / r.size)
        assert abs(carry.mean() - m) < Z * se


# --------------------------------------------------------------------------------- dithering
def exact_omega_sta(x, s, p):
    x = x.astype(np.float64)
    norm = np.linalg.norm(x, p)
    f = np.abs(x) / norm * s % 1.0
    return (norm / s) ** 2 * (f * (1 - f)).sum() / (x ** 2).sum()


def exact_omega_nat(x, s, p):
    x = x.astype(np.float64)
    norm = np.linalg.norm(x, p)
    t = np.abs(x) / norm
    small = t < 2.0 ** (1 - s)
    lo = np.where(small, 0.0, 2.0 ** np.floor(np.log2(np.maximum(t, 1e-300))))
    hi = np.where(small, 2.0 ** (1 - s), 2 * lo)
    return norm ** 2 * ((hi - t) * (t - lo)).sum() / (x ** 2).sum()


@pytest.mark.parametrize("s, p", [(3, np.inf), (2, 2), (4, 1)])
def test_natural_dithering(s, p):
    op = get_compressor(f"dither_nat:s={s},p={'inf' if p == np.inf else p}", seed=6)
    x = spread_vector(24, seed=1)
    smp = draws(op, x, 2000)
    assert_unbiased(smp, x)
    assert_omega_equals(smp, x, exact_omega_nat(x, s, p))
    assert_omega_at_most(smp, x, op.omega(x.size))


@pytest.mark.parametrize("s, p", [(4, 2), (1, 2), (3, np.inf), (10, 1)])
def test_standard_dithering(s, p):
    op = get_compressor(f"dither_sta:s={s},p={'inf' if p == np.inf else p}", seed=7)
    x = spread_vector(24, seed=2)
    smp = draws(op, x, 2000)
    assert_unbiased(smp, x)
    assert_omega_equals(smp, x, exact_omega_sta(x, s, p))
    assert_omega_at_most(smp, x, op.omega(x.size))


def test_dithering_bound_on_a_flat_vector():
    # all |x_i| equal: the case that drives the sqrt(d)/s term
    x = np.where(np.arange(64) % 3, 1.0, -1.0).astype(np.float32)
    for spec in ("dither_sta:s=2,p=2", "dither_nat:s=2,p=2", "sparse_dither:s=1"):
        op = get_compressor(spec, seed=8)
        smp = draws(op, x, 1000)
        assert_unbiased(smp, x)
        w, _ = assert_omega_at_most(smp, x, op.omega(x.size))
        assert w > 0.5  # genuinely lossy, not the identity


@pytest.mark.parametrize("s", [1, 3])
def test_sparse_dithering(s):
    op = get_compressor(f"sparse_dither:s={s}", seed=9)
    x = spread_vector(24, seed=3)
    smp = draws(op, x, 2000)
    assert_unbiased(smp, x)
    assert_omega_equals(smp, x, exact_omega_sta(x, s, 2))
    assert_omega_at_most(smp, x, op.omega(x.size))


# ------------------------------------------------------------------------------ sparsification
def test_randk_unbiased_with_exact_omega():
    op = get_compressor("randk:q=8", seed=10)
    x = mixed_vector(32, seed=4)
    smp = draws(op, x, 2500)
    assert_unbiased(smp, x)
    assert_omega_equals(smp, x, 32 / 8 - 1)
    assert op.omega(32) == 3


def test_nat_randk_unbiased_with_exact_omega():
    op = get_compressor("nat_randk:q=0.25", seed=11)
    x = four_thirds(32, seed=5)  # d/q = 4 keeps 4/3 2^k: the composed bound is attained
    smp = draws(op, x, 2500)
    assert_unbiased(smp, x)
    assert_omega_equals(smp, x, 9 / 8 * 4 - 1 - 1e-6)
    assert op.omega(32) == pytest.approx(9 / 8 * 4 - 1)
    y = mixed_vector(32, seed=6)
    assert_omega_at_most(draws(op, y, 1000), y, op.omega(32))


def test_topk_contraction():
    op = get_compressor("topk:k=0.1")
    x = mixed_vector(500, seed=7).astype(np.float64)
    err = ((op(x) - x) ** 2).sum() / (x ** 2).sum()
    assert err <= 1 - op.delta(500)


# --------------------------------------------------------------------- negative controls
class _RoundHalfTheTime:
    """A broken C_nat that rounds up with probability mantissa/2: biased."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, x):
        m, e = np.frexp(np.abs(x.astype(np.float64)))
        frac = 2 * m - 1
        up = self.rng.random(x.shape) < frac / 2
        return (np.sign(x) * np.ldexp(1.0 + up, e - 1)).astype(np.float32)


def test_unbiasedness_check_catches_a_biased_operator():
    x = mixed_vector(64)
    with pytest.raises(AssertionError, match="standard errors off"):
        assert_unbiased(tiled_draws(_RoundHalfTheTime(0), x, 8000), x)


def test_omega_check_catches_a_too_noisy_operator():
    x = four_thirds(64)
    noisy = lambda v: get_compressor("nat9", seed=1)(v * np.float32(1.0)) * np.float32(1.25)
    with pytest.raises(AssertionError, match="exceeds bound"):
        assert_omega_at_most(tiled_draws(noisy, x, 4000), x, 1 / 8)
