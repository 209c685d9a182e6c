"""Error feedback (memory): compress x + e and keep what was lost, e <- e + x - C(e + x).

Works with any operator (typically biased ones such as top-k or PowerSGD). One residual is kept
per `key` (e.g. a parameter name), so one ErrorFeedback can serve a whole model.
"""
from __future__ import annotations

from typing import Any, Hashable

import numpy as np

from .base import Compressed, Compressor, as_gradient
from .errors import CompressorInputError


class ErrorFeedback:
    def __init__(self, compressor: Compressor):
        self.compressor = compressor
        self._residual: dict[Hashable, np.ndarray] = {}

    name = property(lambda self: "ef+" + self.compressor.name)
    spec = property(lambda self: "ef+" + self.compressor.spec)
    unbiased = False  # the transmitted sequence is biased per step, by design
    summable_in_switch = property(lambda self: self.compressor.summable_in_switch)

    def omega(self, d: int) -> None:
        return None

    def compress(self, x: Any, key: Hashable = "default") -> Compressed:
        x32, _ = as_gradient(x, self.name)
        e = self._residual.get(key)
        if e is not None and e.shape != x32.shape:
            raise CompressorInputError(
                f"{self.name}: key {key!r} had shape {e.shape}, now {x32.shape}")
        corrected = x32 + e if e is not None else x32.copy()
        c = self.compressor.compress(corrected)
        corrected -= self.compressor.decompress(c)
        self._residual[key] = corrected
        return c

    def decompress(self, c: Compressed) -> np.ndarray:
        return self.compressor.decompress(c)

    def residual(self, key: Hashable = "default") -> np.ndarray | None:
        e = self._residual.get(key)
        return None if e is None else e.copy()

    def reset(self, key: Hashable | None = None) -> None:
        if key is None:
            self._residual.clear()
        else:
            self._residual.pop(key, None)

    def __repr__(self) -> str:
        return f"<ErrorFeedback {self.spec}>"
