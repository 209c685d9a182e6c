"""The identity operator: raw little-endian float32, 32 bits per element (the baseline)."""
from __future__ import annotations

import numpy as np

from .base import Compressor, Reader


class Identity(Compressor):
    name = "none"
    unbiased = True
    summable_in_switch = True  # the switch's INT32 encoding sums these (block floating point)

    def omega(self, d: int) -> float:
        return 0.0

    def _encode(self, x, amax, shape):
        return x.astype("<f4", copy=False).tobytes()

    def _decode(self, data, shape):
        r = Reader(data, self.name)
        out = r.array("<f4", int(np.prod(shape))).astype(np.float32)
        r.done()
        return out
