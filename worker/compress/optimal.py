"""Operators after Albasyoni, Safaryan, Condat, Richtarik, "Optimal Gradient Compression for
Distributed and Federated Learning" (2020): sparse dithering (worst-case analysis) and spherical
compression (average-case analysis). The variants implemented here are stated in
docs/compressors.md; in short:

SparseDither (sparse_dither:s=S): the values of l2 standard dithering D_sta^{2,s} (unbiased,
  omega = min(d/s^2, sqrt(d)/s)), which are mostly zero for small s (E[nnz] <= s^2 + s sqrt(d)),
  sent sparsely. Layout: float32 norm | uint32 nnz | uint8 mode | positions | signs | levels:
  positions are a d-bit bitmap (mode 0) or nnz sorted indices of ceil(log2 d) bits (mode 1),
  whichever is shorter; signs one bit per nonzero; levels-1 in ceil(log2 s) bits per nonzero
  (absent for s = 1).

Spherical (spherical:block=M,bits=B,codebook_seed=K): each block of M coordinates is replaced
  by its projection on the best of 2^B codewords of a random spherical code shared through
  codebook_seed (unit vectors drawn uniformly on S^(M-1)). Sent per block: the B-bit codeword
  index and the signed projection length as bfloat16 (16 bits): (B + 16)/M bits per element.
  Biased, contractive: ||C(x)-x||^2 = sum_blocks ||x_b||^2 (1 - cos^2 angle(x_b, codeword)).
"""
from __future__ import annotations

import math
import struct

import numpy as np

from .base import FLOAT32_MAX, Compressor, Reader
from .bitpack import bits_for, pack_uint, packed_size, unpack_uint
from .dithering import check_levels, omega_sta, p_norm, standard_levels
from .errors import CompressedFormatError, CompressorSpecError

_BITMAP, _INDEX_LIST = 0, 1
MAX_CODEBOOK = 1 << 22  # codewords x block: 16 MB of float32 at most


class SparseDither(Compressor):
    name = "sparse_dither"
    unbiased = True

    def __init__(self, s: int = 1, seed=None):
        super().__init__(seed)
        self.s = check_levels(s, 1 << 16, self.name)

    def params(self):
        return {"s": self.s}

    def omega(self, d: int) -> float:
        return omega_sta(d, self.s, 2.0)

    def _encode(self, x, amax, shape):
        d = x.size
        norm = p_norm(x, 2.0, amax, self.name)
        levels = (standard_levels(x, norm, self.s, self.rng) if norm > 0
                  else np.zeros(d, np.uint8))
        idx = np.flatnonzero(levels)
        iw = bits_for(d)
        if -(-d // 8) <= packed_size(iw, idx.size):
            mode, positions = _BITMAP, np.packbits(levels > 0).tobytes()
        else:
            mode, positions = _INDEX_LIST, pack_uint(idx, iw)
        parts = [struct.pack("<fIB", norm, idx.size, mode), positions,
                 np.packbits(np.signbit(x[idx])).tobytes()]
        if self.s > 1:
            parts.append(pack_uint(levels[idx] - 1, bits_for(self.s)))
        return b"".join(parts)

    def _decode(self, data, shape):
        d = int(np.prod(shape))
        r = Reader(data, self.name)
        norm, nnz, mode = r.unpack("<fIB")
        if nnz > d or mode not in (_BITMAP, _INDEX_LIST):
            raise CompressedFormatError(f"{self.name}: bad header (nnz={nnz}, mode={mode})")
        if mode == _BITMAP:
            idx = np.flatnonzero(np.unpackbits(r.array(np.uint8, -(-d // 8)), count=d))
            if idx.size != nnz:
                raise CompressedFormatError(f"{self.name}: bitmap has {idx.size} ones, not {nnz}")
        else:
            iw = bits_for(d)
            idx = unpack_uint(r.take(packed_size(iw, nnz)), iw, nnz).astype(np.intp)
            if nnz and (idx[-1] >= d or np.any(np.diff(idx) <= 0)):
                raise CompressedFormatError(f"{self.name}: bad index list")
        neg = np.unpackbits(r.array(np.uint8, -(-nnz // 8)), count=nnz).view(bool)
        if self.s > 1:
            lw = bits_for(self.s)
            lev = unpack_uint(r.take(packed_size(lw, nnz)), lw, nnz).astype(np.uint32) + 1
            if nnz and lev.max() > self.s:
                raise CompressedFormatError(f"{self.name}: level above s={self.s}")
        else:
            lev = np.ones(nnz, np.uint32)
        r.done()
        vals = lev.astype(np.float32) * np.float32(norm / self.s)
        np.negative(vals, out=vals, where=neg)
        out = np.zeros(d, np.float32)
        out[idx] = vals
        return out


def to_bfloat16(v: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), finite values kept finite."""
    u = np.ascontiguousarray(v, np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    # a magnitude that rounded up to the infinity pattern is clamped to the largest finite one
    mag = rounded & np.uint16(0x7FFF)
    return np.where(mag >= 0x7F80, (rounded & np.uint16(0x8000)) | np.uint16(0x7F7F), rounded)


def from_bfloat16(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


class Spherical(Compressor):
    name = "spherical"
    unbiased = False
    BLOCKS_PER_PASS = 8192  # bounds the (blocks x codewords) inner-product matrix

    def __init__(self, block: int = 8, bits: int = 8, codebook_seed: int = 0, seed=None):
        super().__init__(seed)
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 1024:
            raise CompressorSpecError(f"{self.name}: block={block!r} must be an int in 1..1024")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise CompressorSpecError(f"{self.name}: bits={bits!r} must be an int in 1..16")
        if isinstance(codebook_seed, bool) or not isinstance(codebook_seed, int) \
                or codebook_seed < 0:
            raise CompressorSpecError(f"{self.name}: codebook_seed must be an int >= 0")
        if (block << bits) > MAX_CODEBOOK:
            raise CompressorSpecError(
                f"{self.name}: codebook of 2^{bits} x {block} floats is too large "
                f"(limit {MAX_CODEBOOK}); lower bits or block")
        self.block, self.bits, self.codebook_seed = block, bits, codebook_seed
        g = np.random.default_rng([codebook_seed, block, bits]).standard_normal((1 << bits, block))
        self.codebook = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)

    def params(self):
        return {"block": self.block, "bits": self.bits, "codebook_seed": self.codebook_seed}

    def omega(self, d: int) -> None:
        return None

    def _encode(self, x, amax, shape):
        m = self.block
        nb = -(-x.size // m)
        if x.size == nb * m:
            blocks = x.reshape(nb, m)
        else:  # zero-pad the last block
            blocks = np.zeros(nb * m, np.float32)
            blocks[:x.size] = x
            blocks = blocks.reshape(nb, m)
        idx = np.empty(nb, np.uint32)
        scale = np.empty(nb, np.float32)
        rows = np.arange(min(nb, self.BLOCKS_PER_PASS))
        for i in range(0, nb, self.BLOCKS_PER_PASS):
            xb = blocks[i:i + self.BLOCKS_PER_PASS].astype(np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", xb, xb))
            unit = (xb / np.where(norms > 0, norms, 1)[:, None]).astype(np.float32)
            g = unit @ self.codebook.T          # cosines with every codeword
            hi, lo = g.argmax(axis=1), g.argmin(axis=1)
            r = rows[:g.shape[0]]
            best = np.where(g[r, hi] >= -g[r, lo], hi, lo)
            idx[i:i + g.shape[0]] = best
            proj = g[r, best].astype(np.float64) * norms  # signed projection length
            scale[i:i + g.shape[0]] = np.clip(proj, -FLOAT32_MAX, FLOAT32_MAX)
        return pack_uint(idx, self.bits) + to_bfloat16(scale).astype("<u2").tobytes()

    def _decode(self, data, shape):
        d = int(np.prod(shape))
        nb = -(-d // self.block)
        r = Reader(data, self.name)
        idx = unpack_uint(r.take(packed_size(self.bits, nb)), self.bits, nb)
        scale = from_bfloat16(r.array("<u2", nb))
        r.done()
        out = self.codebook[idx]
        out *= scale[:, None]
        return out.reshape(-1)[:d] if out.size == d else out.reshape(-1)[:d].copy()
