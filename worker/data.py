"""Data sets for the training jobs and their sharding over workers.

- digits: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; ships with the
  package, no download), pixels scaled to [0, 1], a fixed stratified train/test split.
- lsq: a synthetic least-squares problem whose optimum x* (and objective f(x*)) is computed
  exactly, so training can be judged by its distance to the optimum.
Every worker builds the same data set from the same seed and keeps its own shard of the
training set; the test set is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASETS = ("digits", "lsq")


@dataclass
class Dataset:
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int = 0
    optimum: np.ndarray | None = None      # lsq only: x*
    optimum_loss: float = 0.0              # lsq only: f(x*) on the training set

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split
    d = _load()
    X = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_fraction, random_state=seed,
                                          stratify=y)
    return Dataset("digits", Xtr, ytr, Xte, yte, n_classes=10)


def make_lsq(seed: int = 0, m: int = 2048, d: int = 256, noise: float = 0.1) -> Dataset:
    """A x ~ b with a known optimum; the 'test' set is the training set (the objective)."""
    rng = np.random.default_rng(seed)
    A = rng.normal(0, 1, (m, d))            # A^T A / m ~ I: well conditioned for SGD
    x_true = rng.normal(0, 1, d) / np.sqrt(d)
    b = A @ x_true + noise * rng.normal(0, 1, m)
    x_opt, *_ = np.linalg.lstsq(A, b, rcond=None)
    r = A @ x_opt - b
    A, b = A.astype(np.float32), b.astype(np.float32)
    return Dataset("lsq", A, b, A, b, optimum=x_opt.astype(np.float32),
                   optimum_loss=float(r @ r) / (2 * m))


def load(name: str, seed: int = 0) -> Dataset:
    if name == "digits":
        return load_digits(seed)
    if name == "lsq":
        return make_lsq(seed)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def shard(data: Dataset, wid: int, n_workers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Worker wid's part of the training set: a seeded permutation cut into n near-equal parts."""
    if not 0 <= wid < n_workers:
        raise ValueError(f"worker id {wid} outside 0..{n_workers - 1}")
    perm = np.random.default_rng(seed + 7919).permutation(len(data.y_train))
    idx = np.array_split(perm, n_workers)[wid]
    return data.X_train[idx], data.y_train[idx]


class Batches:
    """Minibatches drawn at random (with replacement across steps) from one shard."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch: int, seed: int):
        if len(y) == 0:
            raise ValueError("empty shard: more workers than training examples")
        self.X, self.y, self.batch = X, y, min(batch, len(y))
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        i = self.rng.choice(len(self.y), self.batch, replace=False)
        return self.X[i], self.y[i]
