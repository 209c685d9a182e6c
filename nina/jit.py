"""The one switch for compiling the hot loops of both sides (switch data plane, worker codecs).

The per-packet algorithm and the per-element encodings are written once, as plain Python
loops over numpy arrays, and compiled by numba (LLVM) to machine code: the same source is the
reference and the fast path, and it stays readable Python. numba was chosen over Cython/C
extensions because it needs no compiler on the user's machine (a PyPI wheel) and over
vectorised numpy because a switch decision is a chain of per-packet branches that numpy
cannot batch.

Compiled code is cached on disk (cache=True) so only the first run on a machine pays the
compile time; the cache lives where the user can write (NUMBA_CACHE_DIR if set, else
$XDG_CACHE_HOME/nina/numba/<sources> or ~/.cache/nina/numba/<sources>), never inside a
read-only install. <sources> is a hash of the compiled packages' source files: numba checks
only the stamp of the file that defines a cached function, so a function whose callee in
another file changed (the window step calling the NAT8 encoder) would load its old machine
code; a new hash is a fresh cache. Directories of other hashes unused for CACHE_KEEP_DAYS go.

Without numba (or with NUMBA_DISABLE_JIT=1, for debugging) the same functions run as
interpreted Python: correct, but orders of magnitude slower; COMPILED says which.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np


_COMPILED_PACKAGES = ("nina", "switch", "worker")   # the packages with compiled functions
CACHE_KEEP_DAYS = 7


def sources_key(root: Path | None = None) -> str:
    """Hash of the compiled packages' .py files under root (default: this checkout or
    install), their bytes and paths."""
    root = root or Path(__file__).resolve().parent.parent
    h = hashlib.sha1()
    for pkg in _COMPILED_PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where compiled code is cached (created on first use): NUMBA_CACHE_DIR as set, else a
    directory of this version of the sources under the user's cache."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nina" / "numba" / sources_key()


def _prune_other_versions(current: Path) -> None:
    """Remove sibling cache directories of other source hashes unused for CACHE_KEEP_DAYS."""
    cutoff = time.time() - CACHE_KEEP_DAYS * 86400
    try:
        current.mkdir(parents=True, exist_ok=True)
        os.utime(current)   # in use: another version's process must not prune it
        for d in current.parent.iterdir():
            if d != current and d.is_dir() and len(d.name) == 16 and \
                    all(c in "0123456789abcdef" for c in d.name) and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)
    except OSError:
        pass   # a cache we cannot tidy still works


if "NUMBA_CACHE_DIR" not in os.environ:   # children inherit it: one hash per process tree
    os.environ["NUMBA_CACHE_DIR"] = str(cache_dir())
    _prune_other_versions(Path(os.environ["NUMBA_CACHE_DIR"]))

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


def njit_typed(*signatures: str):
    """njit for exactly these signatures, compiled (or loaded from the cache) at import, so
    no argument layout a caller passes can leave a compile for its first call: one that fits
    no signature is a TypeError at the call, not a compile. Name every layout a caller may
    pass (int64[::1] and int64[:]): numba's fast dispatch wants an exact match, and an array
    converted to a wider layout costs microseconds a call."""
    def wrap(fn):
        if _numba is None:
            return fn
        return _numba.njit(list(signatures), cache=True, nogil=True)(fn)
    return wrap


# ---- threads: element kernels over block ranges, compiled once, split over Python threads ---

def njit_threaded(fn):
    """fn(b0, b1, *arrays): a loop over blocks b0..b1-1, each block's result depending only on
    its own elements. Compiled once (serial, vectorised, GIL released); `threaded(kernel,
    blocks)` hands each of the setting's threads a contiguous range of blocks of that same
    code, so the output is the same for every thread count.

    Not numba's parallel=True: in its parfor bodies the block index comes from a schedule
    LLVM cannot prove non-negative, so every element access kept numba's wraparound check and
    the loops lost their vectorisation (one thread ran 2.3x slower than this serial code, two
    slower than one); and numba's disk cache gave both compilations of a function one key, so
    the 'parallel' one loaded the serial code. For the same reason a kernel's block loop starts
    at 0 and skips the blocks below b0."""
    return njit(fn)


def _threads_from_env() -> int:
    raw = os.environ.get("NINA_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:   # read at import, before any CLI could catch it: one line, no traceback
        raise SystemExit(f"nina: NINA_THREADS={raw!r}: give a whole number of threads >= 1")
    return n


_THREADS = _threads_from_env()
_POOL = None   # the helper threads (threads() - 1 of them), made on first use


def max_threads() -> int:
    """Threads the element kernels can use: the cores this process may run on."""
    if not COMPILED:
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def set_threads(n: int) -> None:
    """Threads the element kernels (C_nat encode/decode) use in this process. Default 1
    (NINA_THREADS): a rack runs several workers and a switch on the same cores, and a worker
    that took all of them would slow its neighbours; a lone process (a benchmark, one trainer
    per machine) can ask for more."""
    if not 1 <= int(n) <= max_threads():
        raise ValueError(f"threads must be 1..{max_threads()} on this machine, not {n}")
    global _THREADS
    _THREADS = int(n)


def threads() -> int:
    """The thread count in force: the setting, at most what the machine has."""
    return min(_THREADS, max_threads())


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=max(max_threads() - 1, 1),
                                   thread_name_prefix="nina-kernel")
    return _POOL


def threaded(kernel, blocks: int):
    """A callable running the njit_threaded `kernel` over blocks 0..blocks-1 with the thread
    setting now in force: the caller's thread takes the last range, pool threads the others."""
    n = min(threads(), blocks)
    if n <= 1:
        return lambda *args: kernel(0, blocks, *args)

    def run(*args):
        cut = [blocks * k // n for k in range(n + 1)]
        helpers = [_pool().submit(kernel, cut[k], cut[k + 1], *args) for k in range(n - 1)]
        kernel(cut[n - 1], cut[n], *args)
        for h in helpers:
            h.result()
    return run


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


# ---- leading zero bits of an unsigned integer (C_M's power of two): one instruction (LLVM's
# ctlz, vplzcntd in a vector loop) compiled, at the width of its argument's type (np.uint32:
# 32); int.bit_length interpreted. math.frexp did the same through a float at about 2.5x the
# cost per element of a C_M result.
if COMPILED:
    from numba.cpython.unsafe.numbers import leading_zeros
else:
    def leading_zeros(x):
        """Zero bits above the highest set bit of x, in x's width (all of them for 0)."""
        return np.dtype(type(x)).itemsize * 8 - int(x).bit_length()


# ---- counter-based draws: the element kernels' random source ------------------------------
# A draw is a keyed hash of the element's index, not the next output of a sequential
# generator, so element i's random word does not depend on which elements were drawn before
# it: the loops vectorise (16 lanes of 32-bit integer arithmetic with AVX-512) and split over
# threads in any order with the same result (the idea of counter-based generators: Salmon et
# al., "Parallel random numbers: as easy as 1, 2, 3", SC'11). The construction is splitmix's,
# in 32 bits: a Weyl sequence i * G + key (G odd) through an avalanche mixer, here the
# two-multiply mixer "lowbias32" found by C. Wellons' hash-prospector search (public domain
# constants). One round: a second one measured 1.7 ms more per 2^24 elements on the bench
# machine (a third of the whole encode), and the statistical tests below pass with one.
#
# Why these draws are good enough for unbiased rounding:
# - Exactly uniform, one element at a time: for a fixed index, i * G + key is uniform over
#   32-bit words because the key is (numpy's Generator draws it per call), and the mixer is a
#   bijection (xor-shifts and multiplication by an odd constant are invertible). So each
#   element's 23-bit round-up threshold is exactly uniform: E[C(x_i)] = x_i and
#   E(C(x_i) - x_i)^2 is exactly C_nat's, whatever the mixer's other qualities.
# - Distinct within a call: below 2^32 elements, index -> draw is a bijection (G is odd), so
#   no two elements of a tensor share a word.
# - Independent across calls: each call takes fresh key words from the operator's Generator.
# - Between elements of one call, independence rests on the mixing: consecutive indices enter
#   the mixer G apart (a difference with bits everywhere, not a single low bit), and every input
#   bit of the mixer flips each output bit with probability close to 1/2.
#   tests/test_counter_draws.py checks bucket uniformity, the carry probability of the bit
#   trick, correlations of indices 1..2^16 apart, and that the variance of a whole tensor's
#   rounding error is the sum of the elements' variances (no covariance).
# Indices >= 2^32 (tensors above 16 GiB) take a key derived from their high word (index_key).

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_G = np.uint32(0x9E3779B9)   # 2^32 / golden ratio, odd
KEY_WORDS = 10  # (k0, k1): the rounding draw; words 2..5 and 6..9: two more, 64-bit draws


def counter_key(rng) -> np.ndarray:
    """One call's key: KEY_WORDS uniform uint32 words from a numpy Generator."""
    return rng.integers(0, 1 << 32, size=KEY_WORDS, dtype=np.uint32)


def _mix32(x):
    """An invertible avalanche mixer of a 32-bit word."""
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32(x * _M1)
    x = np.uint32(x ^ (x >> np.uint32(15)))
    x = np.uint32(x * _M2)
    return np.uint32(x ^ (x >> np.uint32(16)))


mix32 = njit(_mix32)


@njit
def index_key(k0, k1, i):
    """The additive key of index i under key words (k0, k1): k0 for i < 2^32, else a key of
    i's high word. Constant over each 2^32-aligned range, so a loop over a block inside one
    such range computes it once."""
    hi = np.uint32(np.int64(i) >> 32)
    return k0 if hi == 0 else np.uint32(k0 ^ mix32(np.uint32(hi ^ k1)))


@njit
def draw_base(kb, lo):
    """The mixer input of index lo under index_key kb, (lo * G + kb) mod 2^32: draw32's, and
    a block's start for draw32_from."""
    return np.uint32(np.uint32(np.uint32(np.int64(lo) & 0xFFFFFFFF) * _G) + kb)


@njit
def draw32(kb, i):
    """Uniform 32-bit word (uint32) of element index i (int64) under its index_key kb."""
    return mix32(draw_base(kb, i))


@njit
def draw32_from(base, j):
    """draw32(kb, lo + j) for base = draw_base(kb, lo), the same word. In a loop over j from 0
    its input is a 32-bit vector induction (base + j G); draw32's int64 index is truncated
    lane by lane instead, which took a quarter of the natural encode's time."""
    return mix32(np.uint32(base + np.uint32(np.uint32(np.int64(j) & 0xFFFFFFFF) * _G)))


@njit
def draw64(key, i, stream):
    """Uniform 64-bit word (uint64) of index i in stream 0 (key words 2..5) or 1 (6..9),
    independent of each other and of the rounding draw: two draw32 under other key words."""
    w = 2 + 4 * stream
    hi = draw32(index_key(key[w], key[w + 1], i), i)
    lo = draw32(index_key(key[w + 2], key[w + 3], i), i)
    return (np.uint64(hi) << np.uint64(32)) | np.uint64(lo)


# ---- bytes between packet buffers ----------------------------------------------------------

@njit
def copy_bytes(dst, d0, src, s0, n):
    """dst[d0:d0 + n] = src[s0:s0 + n] (d0, s0 >= 0; cut to what both hold). A loop over
    views indexed from 0: indexed as dst[d0 + j], numba checks each index for a negative
    value (d0 might be one), and that check per byte kept the copy from vectorising."""
    d = dst[d0:d0 + n]
    s = src[s0:s0 + n]
    for j in range(min(d.size, s.size)):
        d[j] = s[j]


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
def rd32u(b, o):
    """rd32 at a uint64 offset o, for element loops: numba fixes up a signed index that might
    be negative per element, and that select kept the loops from vectorising (switch/kernel.py)."""
    return (np.int64(b[o]) << 24) | (np.int64(b[o + np.uint64(1)]) << 16) | \
        (np.int64(b[o + np.uint64(2)]) << 8) | np.int64(b[o + np.uint64(3)])


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
