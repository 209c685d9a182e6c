"""The all-reduce oracle: what the switch must have returned, rebuilt from what each worker
dumped as sent."""
from __future__ import annotations

import os

import numpy as np

from nina.wire import Encoding


def check_allreduce(run_dir: str, n_workers: int, calls: int, shift: int,
                    encoding: Encoding, cm: bool) -> list[str]:
    """Verify every call of a dumped all-reduce job; returns a list of problems (empty: exact).

    Without C_M: every worker's result equals, bit for bit, the decoded integer sum of the wire
    elements all workers sent. With C_M: every element is the sum rounded to one of its two
    neighbouring powers of two (the switch's random rounding), identical on every worker.
    """
    from nina.wire import nat8_to_int
    from worker import switch_encoding as se
    dumps = [np.load(os.path.join(run_dir, f"worker{w}.npz")) for w in range(n_workers)]
    problems = []
    for c in range(calls):
        exps = dumps[0][f"exponents{c}"]
        vals = dumps[0][f"values{c}"]
        size = vals.size
        for w, d in enumerate(dumps[1:], 1):
            if not np.array_equal(d[f"exponents{c}"], exps):
                problems.append(f"call {c}: worker {w} used other agreed exponents")
            if not np.array_equal(d[f"values{c}"].view(np.uint32), vals.view(np.uint32)):
                problems.append(f"call {c}: worker {w}'s result differs from worker 0's")
        ints = sum((nat8_to_int(d[f"sent{c}"], shift) if encoding == Encoding.NAT8
                    else d[f"sent{c}"]).astype(np.int64) for d in dumps)
        # independent agreement check: the agreed exponent is the max of the workers' own
        own = np.max([se.exponent_bytes(_chunks(d[f"x{c}"], encoding)) for d in dumps], axis=0)
        if not np.array_equal(own, exps):
            problems.append(f"call {c}: agreed exponents are not the max of the workers' own")
        if not cm:
            expect = se.decode_sums(ints, exps, shift).ravel()[:size]
            bad = np.flatnonzero(expect.view(np.uint32) != vals.view(np.uint32))
            if len(bad):
                i = int(bad[0])
                problems.append(f"call {c}: {len(bad)} elements differ from the exact sum, "
                                f"first at {i}: got {vals[i]!r}, expected {expect[i]!r}")
        else:
            scale = se.decode_sums(np.ones_like(ints), exps, shift).ravel()[:size].astype(float)
            got = vals.astype(np.float64) / scale
            a = np.abs(ints.ravel()[:size]).astype(np.float64)
            lo = np.where(a > 0, 2.0 ** np.floor(np.log2(np.maximum(a, 1))), 0)
            ok = ((np.abs(got) == lo) | (np.abs(got) == 2 * lo)) & \
                 ((np.sign(got) == np.sign(ints.ravel()[:size])) | (a == 0))
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                problems.append(f"call {c}: element {i} is {got[i]} units, not a neighbouring "
                                f"power of two of the exact sum {ints.ravel()[i]}")
    return problems


def _chunks(x: np.ndarray, encoding: Encoding) -> np.ndarray:
    from nina.wire import CAPACITY
    k = CAPACITY[Encoding(encoding)]
    X = np.zeros((-(-x.size // k), k), np.float32)
    X.ravel()[:x.size] = x
    return X
