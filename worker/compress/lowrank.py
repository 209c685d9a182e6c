"""Rank-r compression of matrices, PowerSGD / PowerGossip style (Vogels et al.).

One step of subspace (power) iteration with a warm-started Q (n x r), kept per tensor key:
  P = M Q;  P <- orthonormal basis of P (reduced QR);  Q <- M^T P;  C(M) = P Q^T.
Sent: P (m x r) then Q (n x r), float32 little-endian: exactly 32 r (m + n) bits, no header.
The decoder needs nothing but P and Q; only the encoder keeps state (the warm start), which
makes repeated compression of slowly changing matrices (gradients, or in PowerGossip the
differences between neighbouring models) converge to their best rank-r approximation.
Tensors with more than 2 dimensions are viewed as (shape[0], prod(shape[1:])). Biased.
"""
from __future__ import annotations

from typing import Any, Hashable

import numpy as np

from .base import Compressed, Compressor, Reader, as_gradient
from .errors import CompressorInputError, CompressorSpecError


class PowerSGD(Compressor):
    name = "powersgd"
    unbiased = False
    needs_matrix = True

    def __init__(self, r: int = 2, seed=None):
        super().__init__(seed)
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise CompressorSpecError(f"{self.name}: rank r={r!r} must be an int >= 1")
        self.r = r
        self._q: dict[Hashable, np.ndarray] = {}

    def params(self):
        return {"r": self.r}

    def omega(self, d: int) -> None:
        return None

    def matrix_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        if len(shape) < 2:
            raise CompressorInputError(
                f"{self.name}: needs a matrix (>= 2 dims), got shape {shape}; send vectors "
                "with another operator (e.g. 'none')")
        m, n = shape[0], int(np.prod(shape[1:]))
        if self.r > min(m, n):
            raise CompressorInputError(
                f"{self.name}: rank r={self.r} exceeds min(m, n) = {min(m, n)} of {shape}")
        return m, n

    def compress(self, x: Any, key: Hashable | None = None) -> Compressed:
        """key names the tensor whose warm start to use (default: its shape)."""
        x32, _ = as_gradient(x, self.name)
        shape = tuple(x32.shape)
        data = self._encode_matrix(x32, shape, shape if key is None else key)
        return Compressed(data=data, shape=shape, bits=8 * len(data), codec=self.spec)

    def _encode(self, x, amax, shape):
        return self._encode_matrix(x, shape, shape)

    def _encode_matrix(self, x, shape, key) -> bytes:
        m, n = self.matrix_shape(shape)
        mat = x.reshape(m, n)
        q = self._q.get(key)
        if q is None or q.shape != (n, self.r):
            q = self.rng.standard_normal((n, self.r)).astype(np.float32)
        p, _ = np.linalg.qr(mat @ q)
        q = mat.T @ p
        if not (np.isfinite(p).all() and np.isfinite(q).all()):
            raise CompressorInputError(f"{self.name}: float32 overflow in the power iteration")
        self._q[key] = q
        return p.astype("<f4").tobytes() + q.astype("<f4").tobytes()

    def _decode(self, data, shape):
        m, n = self.matrix_shape(shape)
        rd = Reader(data, self.name)
        p = rd.array("<f4", m * self.r).reshape(m, self.r)
        q = rd.array("<f4", n * self.r).reshape(n, self.r)
        rd.done()
        return (p @ q.T).reshape(-1)

    def reset(self) -> None:
        """Forget the warm starts."""
        self._q.clear()
