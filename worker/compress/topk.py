"""Top-k sparsification: keep the k largest |x_i| unscaled. Biased; no omega, but it is a
contraction: ||C(x) - x||^2 <= (1 - k/d) ||x||^2 (delta = k/d). Encoding as in sparsify.py."""
from __future__ import annotations

import numpy as np

from .sparsify import Sparsifier, check_count, resolve_count


class TopK(Sparsifier):
    name = "topk"
    unbiased = False

    def __init__(self, k: int | float = 0.01, seed=None):
        super().__init__(seed)
        self.k = check_count(k, "k", self.name)

    def params(self):
        return {"k": self.k}

    def kept(self, d: int) -> int:
        return resolve_count(self.k, d, "k", self.name)

    def delta(self, d: int) -> float:
        """Contraction factor: ||C(x)-x||^2 <= (1 - delta) ||x||^2."""
        return self.kept(d) / d

    def select(self, x):
        d = x.size
        k = self.kept(d)
        if k == d:
            return np.arange(d), x.copy()
        # threshold by an in-place O(d) partition of |x| (argpartition would cost 8 bytes of
        # int64 per element); the strictly larger ones all go, ties at the threshold fill up
        # to k in index order
        mag = np.abs(x)
        mag.partition(d - k)
        thr = mag[d - k]
        del mag
        above = np.flatnonzero((x > thr) | (x < -thr))
        ties = np.flatnonzero((x == thr) | (x == -thr))[:k - above.size]
        idx = np.sort(np.concatenate([above, ties]))
        return idx, x[idx]
