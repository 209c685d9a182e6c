"""The all-reduce oracle: what the switch must have returned, checked two ways.

1. From first principles: the workers' input tensors are regenerated here from the job's seed
   (never read from the workers' dumps), summed in float64, and every result must lie within
   the encoding's error bound of that sum; the errors summed over a call must also be
   compatible with zero mean (a biased encoding, a chunk encoded against the wrong exponent,
   a result placed at the wrong offset all fail here).
2. Bit-exactness of the switch: without C_M every result equals, bit for bit, the decoded
   integer sum of the wire elements the workers sent; with C_M every element is one of the two
   neighbouring powers of two of that sum.
The agreed exponent of every chunk must be the max of the workers' own (computed here from
the regenerated inputs).
"""
from __future__ import annotations

import os

import numpy as np

from nina.wire import CAPACITY, Encoding

# |z| of a call's summed error (in units of its standard deviation bound) above which the
# result is called biased: an unbiased encoding passes with probability > 1 - 1e-8.
Z_LIMIT = 6.0


def check_allreduce(run_dir: str, n_workers: int, calls: int, shift: int,
                    encoding: Encoding, cm: bool, *, seed: int, size: int) -> list[str]:
    """Verify every call of a dumped all-reduce job; returns a list of problems (empty: right).

    seed and size are the job's (what run_allreduce was asked for): the inputs are rebuilt
    from them with the task's generator, not taken from what the workers say they sent.
    """
    from worker.worker_proc import task_tensor
    dumps = [np.load(os.path.join(run_dir, f"worker{w}.npz")) for w in range(n_workers)]
    problems: list[str] = []
    for c in range(calls):
        xs = [task_tensor(size, seed, w, c) for w in range(n_workers)]
        exps = dumps[0][f"exponents{c}"]
        vals = dumps[0][f"values{c}"]
        if vals.size != size:
            problems.append(f"call {c}: result has {vals.size} elements, the input {size}")
            continue
        for w, d in enumerate(dumps[1:], 1):
            if not np.array_equal(d[f"exponents{c}"], exps):
                problems.append(f"call {c}: worker {w} used other agreed exponents")
            if not np.array_equal(d[f"values{c}"].view(np.uint32), vals.view(np.uint32)):
                problems.append(f"call {c}: worker {w}'s result differs from worker 0's")
        own = np.max([_exponent_bytes(x, encoding) for x in xs], axis=0)
        if not np.array_equal(own, exps):
            problems.append(f"call {c}: agreed exponents are not the max of the workers' own")
        problems += [f"call {c}: {p}" for p in
                     _against_inputs(vals, xs, own, shift, encoding, cm)]
        problems += [f"call {c}: {p}" for p in
                     _against_sent(vals, [d[f"sent{c}"] for d in dumps], exps, shift, encoding,
                                   cm)]
    return problems


def error_bound(xs: list[np.ndarray], unit: np.ndarray, encoding: Encoding,
                cm: bool) -> tuple[np.ndarray, np.ndarray]:
    """(per-element bound on |result - sum|, per-element variance bound) before float32.

    unit is the value of the integer 1 of each element's block, 2^(e_top - S). Per worker:
    INT32 stochastic rounding errs by < 1 unit (variance <= unit^2 / 4); natural rounding of x
    by <= |x| (variance <= x^2 / 8), and a power below the resolution by <= 1 unit (variance <=
    unit * |x|). C_M rounds the uplink sum A to a neighbouring power of two: error <= |A|,
    conditional variance <= A^2 / 8.
    """
    a = [np.abs(x.astype(np.float64)) for x in xs]
    if encoding == Encoding.INT32:
        bound = len(xs) * unit
        var = len(xs) * unit ** 2 / 4
    else:
        bound = sum(np.maximum(ai, unit) for ai in a)
        var = sum(ai ** 2 / 8 + unit * ai for ai in a)
    if cm:
        total = np.abs(sum(x.astype(np.float64) for x in xs))
        a_max = total + bound                  # |A| <= |sum| + uplink error
        bound = bound + a_max
        var = var + (a_max ** 2 + var) / 8
    return bound, var


def _against_inputs(vals, xs, agreed, shift, encoding, cm) -> list[str]:
    from nina.wire import integer_scale
    k = CAPACITY[Encoding(encoding)]
    size = vals.size
    unit = np.repeat(integer_scale(agreed, shift), k)[:size]
    exact = sum(x.astype(np.float64) for x in xs)
    bound, var = error_bound(xs, unit, encoding, cm)
    got = vals.astype(np.float64)
    ulp = np.spacing(np.abs(vals)).astype(np.float64)   # float32 rounding of the decoded sum
    err = got - exact
    out = []
    bad = np.flatnonzero(np.abs(err) > bound + ulp)
    if len(bad):
        i = int(bad[0])
        out.append(f"{len(bad)} elements outside the {Encoding(encoding).name}"
                   f"{'+C_M' if cm else ''} error bound of the inputs' sum, first at {i}: got "
                   f"{vals[i]!r}, sum of inputs {exact[i]!r}, bound {bound[i]:.3g}")
    z = err.sum() / np.sqrt((var + (ulp / 2) ** 2).sum()) if size else 0.0
    if abs(z) > Z_LIMIT:
        out.append(f"summed error is {z:+.1f} standard deviations from zero: the result is "
                   f"biased against the inputs' sum")
    return out


def _against_sent(vals, sent, exps, shift, encoding, cm) -> list[str]:
    from nina.wire import nat8_to_int
    from worker import switch_encoding as se
    size = vals.size
    ints = sum((nat8_to_int(s, shift) if encoding == Encoding.NAT8 else s).astype(np.int64)
               for s in sent)
    if not cm:
        expect = se.decode_sums(ints, exps, shift).ravel()[:size]
        bad = np.flatnonzero(expect.view(np.uint32) != vals.view(np.uint32))
        if len(bad):
            i = int(bad[0])
            return [f"{len(bad)} elements differ from the exact sum of what the workers sent, "
                    f"first at {i}: got {vals[i]!r}, expected {expect[i]!r}"]
        return []
    scale = se.decode_sums(np.ones_like(ints), exps, shift).ravel()[:size].astype(float)
    got = vals.astype(np.float64) / scale
    flat = ints.ravel()[:size]
    a = np.abs(flat).astype(np.float64)
    lo = np.where(a > 0, 2.0 ** np.floor(np.log2(np.maximum(a, 1))), 0)
    ok = ((np.abs(got) == lo) | (np.abs(got) == 2 * lo)) & ((np.sign(got) == np.sign(flat))
                                                            | (a == 0))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        return [f"element {i} is {got[i]} units, not a neighbouring power of two of the "
                f"exact sum {flat[i]} of what the workers sent"]
    return []


def _exponent_bytes(x: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Each chunk's biased float32 exponent of its max magnitude (the worker's own)."""
    from worker import switch_encoding as se
    k = CAPACITY[Encoding(encoding)]
    X = np.zeros((-(-x.size // k), k), np.float32)
    X.ravel()[:x.size] = x
    return se.exponent_bytes(X)
