"""Numpy models for the training jobs: parameters are named, shaped per-layer tensors.

Every model lists its layers (name and shape, e.g. W1 (64, 32), b1 (32,)) and gives loss and
gradient on a minibatch and an evaluation on a held-out set. The tensors of a model live in one
contiguous float32 buffer (Params): the layers are views into it, so operators that need
matrices (PowerSGD, PowerGossip) get each layer in its shape, while the switch all-reduce,
the broadcast of the initial model and the model hash use the buffer as it is, without copies.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def model_hash(params) -> str:
    """Hash of the exact parameter bits: equal hashes mean bit-identical models."""
    flat = params.flat if isinstance(params, Params) else params
    return hashlib.sha256(np.ascontiguousarray(flat, np.float32).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Layer:
    """One parameter tensor of a model: its name and shape."""
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def split(layers, flat: np.ndarray) -> list[np.ndarray]:
    """Views of `flat` shaped like `layers`, in order (writing to a view writes to flat)."""
    total = sum(lay.size for lay in layers)
    if flat.size != total:
        raise ValueError(f"{flat.size} values for layers of {total} in all")
    out, i = [], 0
    for lay in layers:
        out.append(flat[i:i + lay.size].reshape(lay.shape))
        i += lay.size
    return out


class Params:
    """A model's tensors, by layer, over one contiguous float32 buffer `flat`."""

    def __init__(self, layers, flat: np.ndarray | None = None):
        self.layers = tuple(layers)
        size = sum(lay.size for lay in self.layers)
        self.flat = (np.zeros(size, np.float32) if flat is None
                     else np.ascontiguousarray(flat, np.float32))
        if self.flat.ndim != 1 or self.flat.size != size:
            raise ValueError(f"a model of {size} parameters cannot hold {self.flat.size} values")
        self.tensors = split(self.layers, self.flat)

    def __iter__(self):
        return iter(zip(self.layers, self.tensors))

    def __len__(self) -> int:
        return len(self.layers)

    def named(self) -> dict[str, np.ndarray]:
        return {lay.name: t for lay, t in self}

    def copy(self) -> "Params":
        return Params(self.layers, self.flat.copy())


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
    def layers(self) -> tuple[Layer, ...]:
        return (Layer("W", (self.n_features, self.n_classes)), Layer("b", (self.n_classes,)))

    size = property(lambda self: sum(lay.size for lay in self.layers))

    def _split(self, p: np.ndarray):
        return split(self.layers, p)

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
    def layers(self) -> tuple[Layer, ...]:
        d, h, c = self.n_features, self.hidden, self.n_classes
        return (Layer("W1", (d, h)), Layer("b1", (h,)), Layer("W2", (h, c)), Layer("b2", (c,)))

    size = property(lambda self: sum(lay.size for lay in self.layers))

    def _split(self, p):
        return split(self.layers, p)

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
    def layers(self) -> tuple[Layer, ...]:
        return (Layer("x", (self.n_features,)),)

    size = property(lambda self: self.n_features)

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
