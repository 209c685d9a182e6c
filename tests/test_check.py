"""The all-reduce oracle (jobs/check.py) itself: it accepts a right job and catches the wrong
results that a check against the workers' own dumps cannot see.

The dumps are written here as a worker would (the real encoders, a numpy sum for the switch),
so each case changes one thing: a biased encoder, a chunk encoded against its own exponent, a
worker that dumps other inputs than the seed's. No processes, no switch: this is a unit test
of the checker.
"""
from __future__ import annotations

import numpy as np
import pytest

from jobs.check import check_allreduce
from nina.wire import CAPACITY, Encoding, headroom_shift, nat8_to_int
from worker import switch_encoding as se
from worker.worker_proc import task_tensor

N, SEED, SIZE, CALLS = 3, 5, 5_000, 2


def _floor_int32(x, exp_byte, shift, rng):
    """SwitchML's INT32 encoding with floor instead of stochastic rounding: biased downward
    (the real encoder's scale, so only the rounding differs)."""
    inv = np.asarray(se.inverse_scale(exp_byte, shift), np.float64).reshape(-1, 1)
    return np.floor(np.asarray(x, np.float64).reshape(inv.shape[0], -1) * inv).astype(np.int32)


def _dump(tmp_path, encoding, *, encode=None, exponent=None, inputs=None):
    """Worker dumps of a job whose switch sums exactly what the workers sent."""
    s = headroom_shift(N)
    k = CAPACITY[encoding]
    chunks = -(-SIZE // k)
    saved = [{} for _ in range(N)]
    for c in range(CALLS):
        xs = [(inputs or task_tensor)(SIZE, SEED, w, c) for w in range(N)]
        X = np.zeros((N, chunks, k), np.float32)
        X.reshape(N, -1)[:, :SIZE] = np.stack(xs)
        own = se.exponent_bytes(X)
        agreed = own.max(axis=0)
        sent, ints = [], 0
        for w in range(N):
            rng = np.random.default_rng(100 * c + w)
            e = agreed if exponent is None else exponent(own[w], agreed)
            if encoding == Encoding.NAT8:
                codes = se.nat8_encode(X[w], e, s, rng)
                sent.append(codes)
                ints = ints + nat8_to_int(codes, s).astype(np.int64)
            else:
                q = (encode or se.int32_encode)(X[w], e, s, rng)
                sent.append(q)
                ints = ints + q.astype(np.int64)
        values = se.decode_sums(ints, agreed, s).ravel()[:SIZE]
        for w in range(N):
            saved[w].update({f"x{c}": xs[w], f"values{c}": values, f"sent{c}": sent[w],
                             f"exponents{c}": agreed})
    for w in range(N):
        np.savez(tmp_path / f"worker{w}.npz", **saved[w])
    return s


def _check(tmp_path, encoding, shift):
    return check_allreduce(str(tmp_path), N, CALLS, shift, encoding, False, seed=SEED, size=SIZE)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_a_right_job_passes(tmp_path, encoding):
    assert _check(tmp_path, encoding, _dump(tmp_path, encoding)) == []


def test_a_biased_int32_encoder_is_caught_though_the_switch_summed_exactly(tmp_path):
    s = _dump(tmp_path, Encoding.INT32,
              encode=_floor_int32)
    problems = _check(tmp_path, Encoding.INT32, s)
    assert problems and all("biased" in p for p in problems), problems


@pytest.mark.parametrize("encoding", list(Encoding))
def test_chunks_encoded_against_their_own_exponent_are_caught(tmp_path, encoding):
    own = lambda own, agreed: own           # noqa: E731
    s = _dump(tmp_path, encoding, exponent=own)
    problems = _check(tmp_path, encoding, s)
    assert any("error bound" in p or "biased" in p for p in problems), problems


def test_a_worker_dumping_other_inputs_than_the_seeds_is_caught(tmp_path):
    """The workers summed (and dumped) tensors that are not the job's: every check against
    the dumps agrees with itself, only the regenerated inputs tell."""
    other = lambda size, seed, w, c: task_tensor(size, seed + 1, w, c)   # noqa: E731
    s = _dump(tmp_path, Encoding.NAT8, inputs=other)
    problems = _check(tmp_path, Encoding.NAT8, s)
    assert any("error bound" in p for p in problems), problems
