"""Composition C o S: sparsify, then compress the kept values with another operator.

For independent unbiased C (omega_C) and S (omega_S), C o S is unbiased with
omega = (1 + omega_C)(1 + omega_S) - 1; for C_nat o S^q that is (9/8)(d/q) - 1.

Encoding: the sparsifier's header and packed indices, then the value operator's own payload
for the q kept values (e.g. nat: 1 reference byte + q code bytes).
"""
from __future__ import annotations

import numpy as np

from .base import Compressor, Reader, as_gradient
from .errors import NonFiniteError, CompressorInputError
from .sparsify import Sparsifier, decode_indices, encode_indices


class Sparsified(Compressor):
    def __init__(self, name: str, sparsifier: Sparsifier, values: Compressor, seed=None):
        super().__init__(seed)
        self.name = name
        self.sparsifier, self.values = sparsifier, values
        sparsifier.rng = values.rng = self.rng  # one random source for the whole operator
        self.unbiased = sparsifier.unbiased and values.unbiased

    def params(self):
        return self.sparsifier.params()

    def omega(self, d: int) -> float | None:
        ws = self.sparsifier.omega(d)
        wv = self.values.omega(self.sparsifier.kept(d))
        return None if ws is None or wv is None else (1 + wv) * (1 + ws) - 1

    def _encode(self, x, amax, shape):
        idx, vals = self.sparsifier.select(x)
        try:
            vals, vmax = as_gradient(vals, self.name)
        except NonFiniteError as e:
            raise CompressorInputError(
                f"{self.name}: scaling the kept value at index {int(idx[e.index])} by d/q "
                "overflows float32") from e
        return encode_indices(idx, x.size) + self.values._encode(vals, vmax, vals.shape)

    def _decode(self, data, shape):
        d = int(np.prod(shape))
        r = Reader(data, self.name)
        idx = decode_indices(r, d, self.name)
        vals = self.values._decode(bytes(r.take(len(r.buf) - r.pos)), (idx.size,))
        out = np.zeros(d, np.float32)
        out[idx] = vals
        return out
