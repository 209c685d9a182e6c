"""The operator API: Compressor (compress/decompress/omega) and the Compressed wire message.

Every operator produces the real bytes that would go on the wire; decompress() works from those
bytes plus what the receiver already knows (the tensor shape and the operator's parameters,
which `Compressed.codec` names as a spec string that `get_compressor` understands).
"""
from __future__ import annotations

import abc
import ctypes
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from nina.jit import njit_threaded, threaded

from .errors import CompressedFormatError, CompressorInputError, NonFiniteError
from .spec import format_spec

FLOAT32_MAX = float(np.finfo(np.float32).max)

SeedLike = int | np.random.Generator | np.random.SeedSequence | None


@dataclass(frozen=True)
class Compressed:
    """One compressed tensor as it travels: `data` is the exact payload, `bits` its size.

    bits == 8 * len(data) for every operator: bit-packed fields are padded to a whole byte
    (at most 7 bits per packed field, documented in docs/compressors.md), and that padding is
    counted because it is sent.
    """

    data: bytes
    shape: tuple[int, ...]
    bits: int
    codec: str  # canonical spec of the operator, e.g. "dither_nat:s=4,p=inf"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_element(self) -> float:
        return self.bits / self.size


def make_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


_WIDE_BIT_GENERATORS = (np.random.PCG64, np.random.PCG64DXSM, np.random.SFC64, np.random.Philox)


def random_u32(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniform uint32 words. random_raw of a 64-bit generator is ~2x faster than integers()."""
    bg = rng.bit_generator
    if isinstance(bg, _WIDE_BIT_GENERATORS):
        return bg.random_raw((n + 1) // 2).view(np.uint32)[:n]
    return rng.integers(0, 1 << 32, size=n, dtype=np.uint32)  # e.g. MT19937: 32-bit raw output


def as_gradient(x: Any, who: str, scan: bool = True) -> tuple[np.ndarray, float | None]:
    """Validate a gradient tensor; return it as C-contiguous float32 and its max |value|.

    float16/32/64 are accepted and computed in float32 (float32 input is not copied).
    Integers, booleans, complex and object arrays are rejected rather than silently cast.
    scan=False (an operator whose encoding pass checks finiteness itself, see
    Compressor.scans_in_encode): float32 input is returned unscanned with max None; other
    dtypes are still scanned, so that a float64 beyond float32's range is named as such.
    """
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind != "f":
        raise CompressorInputError(
            f"{who}: gradient dtype {arr.dtype} is not supported; pass float16, float32 or "
            "float64 (integer, boolean, complex and object arrays are rejected, not cast)")
    if arr.size == 0:
        raise CompressorInputError(f"{who}: cannot compress an empty tensor (shape {arr.shape})")
    with np.errstate(over="ignore"):
        x32 = np.ascontiguousarray(arr, dtype=np.float32)
    if not scan and arr.dtype == np.float32:
        return x32, None
    top = abs_max_bits(x32.reshape(-1).view(np.uint32))
    if top >= INF_BITS:  # inf or NaN somewhere
        raise non_finite_error(arr, x32, who)
    return x32, float(np.uint32(top).view(np.float32))


def non_finite_error(arr: np.ndarray, x32: np.ndarray, who: str) -> NonFiniteError:
    """The error for a gradient whose float32 form x32 has an inf or NaN (arr: as given)."""
    i = int(np.flatnonzero(~np.isfinite(x32.reshape(-1)))[0])
    orig = arr.reshape(-1)[i]
    what = "overflows float32" if np.isfinite(orig) else "is not finite"
    return NonFiniteError(
        f"{who}: gradient value {orig!r} at flat index {i} {what} "
        f"(shape {arr.shape}); refusing to compress", i)


INF_BITS = 0x7F800000   # abs bit patterns >= this: inf or NaN
_SCAN_BLOCK = 1 << 16


def _abs_max_bits(b0, b1, u, block_max):
    n = u.size
    for b in range(b1):   # from 0, so the element indices are provably >= 0 (see njit_threaded)
        if b < b0:
            continue
        m = np.uint32(0)
        lo = b * _SCAN_BLOCK
        for j in range(min(_SCAN_BLOCK, n - lo)):   # from 0: range(lo, hi) would not vectorise
            m = max(m, np.uint32(u[lo + j] & np.uint32(0x7FFFFFFF)))
        block_max[b] = m


_ABS_MAX_BITS = njit_threaded(_abs_max_bits)


def abs_max_bits(u: np.ndarray) -> int:
    """max |x| of float32 bit patterns u as a bit pattern, in one pass: >= 0x7F800000 means
    an inf or NaN is present (NaN patterns sort above inf's)."""
    blocks = max(-(-u.size // _SCAN_BLOCK), 1)
    block_max = np.zeros(blocks, np.uint32)
    threaded(_ABS_MAX_BITS, blocks)(u, block_max)
    return int(block_max.max())


TAKE_CHUNK = 1 << 16


def take_chunked(table: np.ndarray, codes: np.ndarray, high: np.ndarray | None = None,
                 shift: int = 0) -> np.ndarray:
    """table[codes | high << shift], a slice at a time: np.take widens small integer codes to
    intp, which on the whole tensor would cost 8 bytes per element."""
    out = np.empty(codes.size, table.dtype)
    for i in range(0, codes.size, TAKE_CHUNK):
        c = codes[i:i + TAKE_CHUNK]
        if high is not None:
            c = c.astype(np.uint32)
            c |= high[i:i + TAKE_CHUNK].astype(np.uint32) << np.uint32(shift)
        np.take(table, c, out=out[i:i + TAKE_CHUNK])
    return out


class Compressor(abc.ABC):
    """A compression operator C: R^d -> bytes -> R^d.

    Subclasses set `name`, `unbiased`, `summable_in_switch` and implement `_encode`/`_decode`
    on the flattened float32 tensor. Randomness comes only from `self.rng`, a numpy Generator
    built from the `seed` argument (or that Generator itself when one is passed).
    """

    name: str = "?"
    unbiased: bool = False
    summable_in_switch: bool = False  # can the switch sum this operator's values exactly?
    needs_matrix: bool = False        # works only on tensors of >= 2 dims (per layer)
    scans_in_encode: bool = False     # _encode checks finiteness itself and needs no max|x|

    def __init__(self, seed: SeedLike = None):
        self.rng = make_rng(seed)

    # -- identity of the operator -------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Parameters the receiver needs, in canonical order (they form the spec)."""
        return {}

    @property
    def spec(self) -> str:
        return format_spec(self.name, self.params())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"

    # -- theory --------------------------------------------------------------------------------
    def omega(self, d: int) -> float | None:
        """Variance factor: E||C(x)-x||^2 <= omega ||x||^2 for all x in R^d (None: no bound)."""
        return None

    # -- the operator --------------------------------------------------------------------------
    def compress(self, x: Any) -> Compressed:
        x32, amax = as_gradient(x, self.name, scan=not self.scans_in_encode)
        data = self._encode(x32.reshape(-1), amax, x32.shape)
        return Compressed(data=data, shape=tuple(x32.shape), bits=8 * len(data), codec=self.spec)

    def decompress(self, c: Compressed, out: np.ndarray | None = None) -> np.ndarray:
        """The values of c as a float32 array of c.shape. out: an optional C-contiguous
        float32 array of that shape to write them into (it is returned). For the fast codecs
        the allocation is the larger cost: a fresh large array is fresh pages, which the
        kernel zeroes on first touch; a buffer reused from call to call is not."""
        if c.codec != self.spec:
            raise CompressedFormatError(
                f"{self.spec}: cannot decode a message made by {c.codec!r}")
        if out is None:
            return self._decode(c.data, tuple(c.shape)).reshape(c.shape)
        check_out(out, tuple(c.shape), self.spec)
        into = getattr(self, "_decode_into", None)
        if into is not None:   # the codec writes in place
            into(c.data, tuple(c.shape), out.reshape(-1))
        else:
            np.copyto(out, self._decode(c.data, tuple(c.shape)).reshape(c.shape))
        return out

    def __call__(self, x: Any) -> np.ndarray:
        """C(x) as a float32 array: compress, then decompress."""
        return self.decompress(self.compress(x))

    @abc.abstractmethod
    def _encode(self, x: np.ndarray, amax: float, shape: tuple[int, ...]) -> bytes:
        """Flat finite float32 x (amax = max|x|) -> payload bytes."""

    @abc.abstractmethod
    def _decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """Payload bytes -> flat float32 values (length prod(shape))."""


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_storage = ctypes.pythonapi.PyBytes_AsString
_bytes_storage.restype = ctypes.c_void_p
_bytes_storage.argtypes = (ctypes.py_object,)


def new_payload(n: int) -> tuple[bytes, np.ndarray]:
    """A new bytes object of n >= 2 bytes and a writeable uint8 array over its storage, for an
    encoder to fill before the bytes are handed out. It is how C code builds a bytes object
    in place (PyBytes_FromStringAndSize(NULL, n), then fill): a fast encoder writes its
    payload once instead of into a buffer and then again into bytes (a copy that cost a
    sixth of C_nat's encode). Drop the array once filled; the bytes stay immutable after."""
    if n < 2:   # sizes 0 and 1 may be shared singletons: never write into those
        raise ValueError(f"new_payload needs at least 2 bytes, not {n}")
    data = _new_bytes(None, n)
    view = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(_bytes_storage(data)))
    return data, view


def check_out(out: Any, shape: tuple[int, ...], who: str) -> None:
    """An out= buffer must be a writeable C-contiguous float32 ndarray of exactly `shape`."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape or \
            not out.flags.c_contiguous or not out.flags.writeable:
        what = (f"{type(out).__name__}" if not isinstance(out, np.ndarray) else
                f"{out.dtype} array of shape {out.shape}"
                f"{'' if out.flags.c_contiguous else ', not C-contiguous'}"
                f"{'' if out.flags.writeable else ', read-only'}")
        raise CompressorInputError(
            f"{who}: out= must be a writeable C-contiguous float32 array of shape {shape}, "
            f"got a {what}")


class Reader:
    """Sequential reader of a payload that turns every shortfall into CompressedFormatError."""

    def __init__(self, data: bytes, who: str):
        self.buf = memoryview(data)
        self.pos = 0
        self.who = who

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CompressedFormatError(
                f"{self.who}: payload truncated ({len(self.buf)} bytes, needed "
                f"{self.pos + n})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def array(self, dtype: Any, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * count), dtype=dt)

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise CompressedFormatError(
                f"{self.who}: {len(self.buf) - self.pos} unexpected trailing bytes in payload")
