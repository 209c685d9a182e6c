"""The one switch for compiling the hot loops of both sides (switch data plane, worker codecs).

The per-packet algorithm and the per-element encodings are written once, as plain Python
loops over numpy arrays, and compiled by numba (LLVM) to machine code: the same source is the
reference and the fast path, and it stays readable Python. numba was chosen over Cython/C
extensions because it needs no compiler on the user's machine (a PyPI wheel) and over
vectorised numpy because a switch decision is a chain of per-packet branches that numpy
cannot batch.

Compiled code is cached on disk (cache=True) so only the first run on a machine pays the
compile time; the cache lives where the user can write (NUMBA_CACHE_DIR if set, else
$XDG_CACHE_HOME/nina/numba or ~/.cache/nina/numba), never inside a read-only install.

Without numba (or with NUMBA_DISABLE_JIT=1, for debugging) the same functions run as
interpreted Python: correct, but orders of magnitude slower; COMPILED says which.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """Where compiled code is cached (created on first use)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nina" / "numba"


os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir()))

try:
    import numba as _numba
except ImportError:   # degraded mode: interpreted, same results
    _numba = None

COMPILED = _numba is not None and os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")


def njit(fn):
    """Compile fn in nopython mode, GIL released while it runs, cached on disk."""
    if _numba is None:
        return fn
    return _numba.njit(cache=True, nogil=True)(fn)


# ---- the compiled code's random source: xorshift64* over a one-word state ----------------
# (the switch's C_M rounding and loss draws, the workers' natural rounding). numpy's Generator
# cannot be called from compiled code; a state is seeded from one (seed_state), so a seeded
# run is reproducible.

def seed_state(rng) -> np.ndarray:
    """A fresh one-word state (uint64 array of 1) drawn from a numpy Generator and passed
    through splitmix64's finaliser (the usual way to seed xorshift: no weak states)."""
    z = np.uint64(rng.integers(1, 1 << 63))
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return np.array([z or 1], np.uint64)


def _rand_u64(state):
    """Next 64 random bits (uint64); advances state[0]."""
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return x * np.uint64(0x2545F4914F6CDD1D)


def _rand_u32(state):
    """Next 32 random bits, as a non-negative int64."""
    return np.int64(rand_u64(state) >> np.uint64(32))


rand_u64 = njit(_rand_u64)
rand_u32 = njit(_rand_u32)


# ---- the top set bit of a positive integer (C_M's power of two): one instruction (LLVM's
# ctlz) compiled; int.bit_length interpreted. math.frexp did the same through a float at
# about 2.5x the cost per element of a C_M result.
if COMPILED:
    from numba.cpython.unsafe.numbers import leading_zeros as _leading_zeros

    @njit
    def top_bit(x):
        """Index of the highest set bit of x (1 <= x < 2^63)."""
        return 63 - np.int64(_leading_zeros(np.uint64(x)))
else:
    def top_bit(x):
        """Index of the highest set bit of x (1 <= x < 2^63)."""
        return int(x).bit_length() - 1


# ---- big-endian fields in a uint8 row (the wire format is big-endian): one copy for the
# switch kernel and the workers' window, which both read and write packets in place ----------

@njit
def rd16(b, o):
    return (np.int64(b[o]) << 8) | np.int64(b[o + 1])


@njit
def rd32(b, o):
    return (np.int64(b[o]) << 24) | (np.int64(b[o + 1]) << 16) | (np.int64(b[o + 2]) << 8) \
        | np.int64(b[o + 3])


@njit
def wr16(b, o, v):
    b[o] = (v >> 8) & 0xFF
    b[o + 1] = v & 0xFF


@njit
def wr32(b, o, v):
    b[o] = (v >> 24) & 0xFF
    b[o + 1] = (v >> 16) & 0xFF
    b[o + 2] = (v >> 8) & 0xFF
    b[o + 3] = v & 0xFF
