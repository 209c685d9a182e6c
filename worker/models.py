"""Numpy models for the training jobs: parameters are one flat float32 vector.

Every model gives loss and gradient on a minibatch and an evaluation on a held-out set. The
flat vector is what the workers all-reduce (gradients) and broadcast (initial model), and what
the model hash at the end of a job is computed from.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def model_hash(params: np.ndarray) -> str:
    """Hash of the exact parameter bits: equal hashes mean bit-identical models."""
    return hashlib.sha256(np.ascontiguousarray(params, np.float32).tobytes()).hexdigest()[:16]


def _softmax_xent(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    m = len(y)
    loss = float(-np.log(np.maximum(p[np.arange(m), y], 1e-12)).mean())
    p[np.arange(m), y] -= 1.0
    return loss, p / m


@dataclass
class LogisticRegression:
    """Multinomial logistic regression: W (d x c), b (c); optional L2 on W."""
    n_features: int
    n_classes: int
    l2: float = 1e-4

    @property
    def size(self) -> int:
        return self.n_features * self.n_classes + self.n_classes

    def _split(self, p: np.ndarray):
        d, c = self.n_features, self.n_classes
        return p[:d * c].reshape(d, c), p[d * c:]

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.size, np.float32)

    def logits(self, p, X):
        W, b = self._split(p)
        return X @ W + b

    def loss_grad(self, p: np.ndarray, X: np.ndarray, y: np.ndarray):
        W, _ = self._split(p)
        loss, dz = _softmax_xent(self.logits(p, X), y)
        gW = X.T @ dz + self.l2 * W
        loss += 0.5 * self.l2 * float((W * W).sum())
        return loss, np.concatenate([gW.ravel(), dz.sum(0)]).astype(np.float32)

    def evaluate(self, p, X, y) -> dict:
        z = self.logits(p, X)
        loss, _ = _softmax_xent(z, y)
        return {"loss": loss, "accuracy": float((z.argmax(1) == y).mean())}


@dataclass
class MLP:
    """One hidden layer (tanh), softmax output: W1 (d x h), b1, W2 (h x c), b2."""
    n_features: int
    n_classes: int
    hidden: int = 32
    l2: float = 1e-4

    @property
    def shapes(self):
        d, h, c = self.n_features, self.hidden, self.n_classes
        return [(d, h), (h,), (h, c), (c,)]

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    def _split(self, p):
        out, i = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(p[i:i + n].reshape(s))
            i += n
        return out

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        d, h, c = self.n_features, self.hidden, self.n_classes
        W1 = rng.normal(0, 1 / np.sqrt(d), (d, h))
        W2 = rng.normal(0, 1 / np.sqrt(h), (h, c))
        return np.concatenate([W1.ravel(), np.zeros(h), W2.ravel(), np.zeros(c)]).astype(np.float32)

    def _forward(self, p, X):
        W1, b1, W2, b2 = self._split(p)
        a = np.tanh(X @ W1 + b1)
        return a, a @ W2 + b2

    def loss_grad(self, p, X, y):
        W1, _, W2, _ = self._split(p)
        a, z = self._forward(p, X)
        loss, dz = _softmax_xent(z, y)
        gW2 = a.T @ dz + self.l2 * W2
        da = (dz @ W2.T) * (1 - a * a)
        gW1 = X.T @ da + self.l2 * W1
        loss += 0.5 * self.l2 * float((W1 * W1).sum() + (W2 * W2).sum())
        g = np.concatenate([gW1.ravel(), da.sum(0), gW2.ravel(), dz.sum(0)])
        return loss, g.astype(np.float32)

    def evaluate(self, p, X, y) -> dict:
        _, z = self._forward(p, X)
        loss, _ = _softmax_xent(z, y)
        return {"loss": loss, "accuracy": float((z.argmax(1) == y).mean())}


@dataclass
class LeastSquares:
    """f(x) = ||A x - b||^2 / (2 m): a convex problem whose optimum x* the data set knows.

    Its evaluation reports the suboptimality f(x) - f(x*) as `loss` and no accuracy.
    """
    n_features: int
    optimum_loss: float = 0.0

    @property
    def size(self) -> int:
        return self.n_features

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.size, np.float32)

    def loss_grad(self, p, X, y):
        r = X @ p - y
        m = len(y)
        return float(r @ r) / (2 * m), (X.T @ r / m).astype(np.float32)

    def evaluate(self, p, X, y) -> dict:
        r = X @ p - y
        f = float(r @ r) / (2 * len(y))
        return {"loss": f - self.optimum_loss, "objective": f}


MODELS = ("logreg", "mlp", "lsq")


def make_model(name: str, data, hidden: int = 32):
    """The model `name` for data set `data` (worker.data.Dataset)."""
    if name == "logreg":
        return LogisticRegression(data.n_features, data.n_classes)
    if name == "mlp":
        return MLP(data.n_features, data.n_classes, hidden=hidden)
    if name == "lsq":
        if data.optimum is None:
            raise ValueError("model lsq needs the synthetic least-squares data set (--data lsq)")
        return LeastSquares(data.n_features, optimum_loss=data.optimum_loss)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
