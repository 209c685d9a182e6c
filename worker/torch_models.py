"""PyTorch models and data for the DDP jobs (worker/torch_ddp.py).

Three jobs, each with data that ships with an installed package or is generated here:
- `digits`: a small CNN on scikit-learn's 8x8 digits (1,797 images; the quick CI job);
- `mnist1d`: a 1-D CNN on MNIST-1D, built procedurally by the `mnist1d` package (4,000
  sequences of 40 samples; a small data set where model capacity matters);
- `resnet20`: the CIFAR-style ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels,
  ~270k parameters) on synthetic 32x32 colour images, for throughput: each class is a random
  smooth template, a sample is its template shifted, scaled and noised, so it is learnable.

Every rank builds the same data from the same seed and trains on its own shard
(`shard`), so no data moves between ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from worker.torch_names import TORCH_MODELS  # noqa: F401


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int


def _split(x: np.ndarray, y: np.ndarray, test: float, seed: int) -> Data:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(len(y) * test))
    te, tr = order[:n_test], order[n_test:]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Data(t(x[tr]).float(), t(y[tr]).long(), t(x[te]).float(), t(y[te]).long(),
                int(y.max()) + 1)


def load_digits(seed: int) -> Data:
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    x = (d.images / 16.0 - 0.5).astype(np.float32)[:, None]   # (N, 1, 8, 8), centred
    return _split(x, d.target, 0.25, seed)


def load_mnist1d(seed: int) -> Data:
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples = 4000
    state = np.random.get_state()      # make_dataset seeds numpy's global generator
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None]   # (N, 1, 40)
    y = np.concatenate([d["y"], d["y_test"]])
    return _split(x, y, 0.2, seed)


def load_synthetic32(seed: int, n: int = 6000, classes: int = 10) -> Data:
    """Synthetic CIFAR-sized images: smooth random class templates, shifted and noised."""
    rng = np.random.default_rng([seed, 32])
    coarse = rng.standard_normal((classes, 3, 8, 8)).astype(np.float32)
    templates = coarse.repeat(4, axis=2).repeat(4, axis=3)          # (C, 3, 32, 32), smooth
    y = rng.integers(0, classes, n)
    dx, dy = rng.integers(-3, 4, n), rng.integers(-3, 4, n)
    x = np.empty((n, 3, 32, 32), np.float32)
    for i in range(n):
        x[i] = np.roll(templates[y[i]], (dy[i], dx[i]), axis=(1, 2))
    x *= rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32)
    x += rng.standard_normal(x.shape).astype(np.float32) * 1.5
    return _split(x, y, 1 / 6, seed)


LOADERS = {"digits": load_digits, "mnist1d": load_mnist1d, "resnet20": load_synthetic32}


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions on 8x8 images, then a small classifier (~12k parameters)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Conv1dNet(nn.Module):
    """The 1-D CNN of the MNIST-1D paper's kind: three strided convolutions, linear head."""

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__()
        self.c1 = nn.Conv1d(1, width, 5, stride=2, padding=1)
        self.c2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.c3 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width * 5, classes)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x))
        return self.fc(x.flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet with n = 3 (6n + 2 = 20 layers)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.b = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.b(self.c(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make(name: str, seed: int) -> tuple[nn.Module, Data]:
    """The model (initialised from `seed`) and the data of job `name`."""
    if name not in LOADERS:
        raise ValueError(f"unknown torch model {name!r} (choose from {', '.join(TORCH_MODELS)})")
    data = LOADERS[name](seed)
    torch.manual_seed(seed)
    model = {"digits": DigitsCNN, "mnist1d": Conv1dNet, "resnet20": ResNet20}[name](data.classes)
    return model, data


def shard(data: Data, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's disjoint share of the training set."""
    return data.x_train[rank::world], data.y_train[rank::world]


def accuracy(model: nn.Module, data: Data, batch: int = 1000) -> float:
    was = model.training
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(data.y_test), batch):
            right += int((model(data.x_test[i:i + batch]).argmax(1)
                          == data.y_test[i:i + batch]).sum())
    model.train(was)
    return right / len(data.y_test)
