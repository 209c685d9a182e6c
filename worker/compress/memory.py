"""Error feedback (memory): send C(x + e) and keep what was lost, e <- (x + e) - C(x + e).

Memory holds the residuals, one per `key` (a layer name, or "grad" for a whole gradient), and
is the one error-feedback state of a job: the trainer's communicators use it around whatever
loses information (a host compressor, or the switch path, whose "sent" part is this worker's
contribution to the switch's sum), and ErrorFeedback wraps a compressor with one for uses
outside training (tests, benches). Works with any operator, typically biased ones such as
top-k or PowerSGD.
"""
from __future__ import annotations

from typing import Any, Hashable

import numpy as np

from .base import Compressed, Compressor, as_gradient
from .errors import CompressorInputError


class Memory:
    """Residuals e[key]: corrected(key, x) = x + e[key]; update(key, corrected, sent)."""

    def __init__(self, who: str = "error feedback"):
        self.who = who
        self._residual: dict[Hashable, np.ndarray] = {}

    def corrected(self, key: Hashable, x: np.ndarray) -> np.ndarray:
        """x + e[key] as a new float32 array (x itself when nothing is stored yet, copied)."""
        e = self._residual.get(key)
        if e is not None and e.shape != x.shape:
            raise CompressorInputError(f"{self.who}: key {key!r} had shape {e.shape}, "
                                       f"now {x.shape}")
        return (x + e).astype(np.float32) if e is not None else np.array(x, np.float32)

    def update(self, key: Hashable, corrected: np.ndarray, sent: np.ndarray) -> None:
        """Keep what `sent` lost of `corrected` for the next step."""
        self._residual[key] = (corrected - sent.reshape(corrected.shape)).astype(np.float32)

    def residual(self, key: Hashable = "default") -> np.ndarray | None:
        e = self._residual.get(key)
        return None if e is None else e.copy()

    def reset(self, key: Hashable | None = None) -> None:
        if key is None:
            self._residual.clear()
        else:
            self._residual.pop(key, None)


class ErrorFeedback:
    def __init__(self, compressor: Compressor):
        self.compressor = compressor
        self.memory = Memory(self.name)

    name = property(lambda self: "ef+" + self.compressor.name)
    spec = property(lambda self: "ef+" + self.compressor.spec)
    unbiased = False  # the transmitted sequence is biased per step, by design
    summable_in_switch = property(lambda self: self.compressor.summable_in_switch)

    def omega(self, d: int) -> None:
        return None

    def compress(self, x: Any, key: Hashable = "default") -> Compressed:
        x32, _ = as_gradient(x, self.name)
        corrected = self.memory.corrected(key, x32)
        c = self.compressor.compress(corrected)
        self.memory.update(key, corrected, self.compressor.decompress(c))
        return c

    def decompress(self, c: Compressed) -> np.ndarray:
        return self.compressor.decompress(c)

    def residual(self, key: Hashable = "default") -> np.ndarray | None:
        return self.memory.residual(key)

    def reset(self, key: Hashable | None = None) -> None:
        self.memory.reset(key)

    def __repr__(self) -> str:
        return f"<ErrorFeedback {self.spec}>"
