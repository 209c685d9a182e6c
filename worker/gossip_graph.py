"""Worker graphs for decentralized training and their gossip (mixing) weights.

A graph is undirected and connected; worker i talks only to its neighbours. The mixing matrix
W uses Metropolis-Hastings weights, w_ij = 1 / (1 + max(deg i, deg j)) on an edge and
w_ii = 1 - sum_j w_ij, which make W symmetric and doubly stochastic for any graph (so averaging
with it keeps the workers' mean) without any worker knowing more than its neighbours' degrees.
How fast gossip reaches consensus is governed by the spectral gap 1 - |lambda_2(W)|, which the
bench prints next to each topology.

Topologies: ring, 2-D torus (rows x cols, as square as n allows), complete graph, and a random
d-regular graph (seeded; drawn again until connected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOPOLOGIES = ("ring", "torus", "complete", "random")


class GraphError(ValueError):
    """A topology that cannot be built for the given size (a user mistake: one clear line)."""


@dataclass(frozen=True)
class Graph:
    name: str
    n: int
    edges: tuple[tuple[int, int], ...]      # (i, j) with i < j, sorted

    def __post_init__(self):
        if not _connected(self.n, self.edges):
            raise GraphError(f"{self.name}: the graph on {self.n} workers is not connected")

    def neighbours(self, i: int) -> list[int]:
        return sorted({b for a, b in self.edges if a == i} | {a for a, b in self.edges if b == i})

    def degree(self, i: int) -> int:
        return len(self.neighbours(i))

    def weight(self, i: int, j: int) -> float:
        """Metropolis-Hastings weight of edge (i, j); i == j gives the self weight."""
        if i == j:
            return 1.0 - sum(self.weight(i, k) for k in self.neighbours(i))
        if (min(i, j), max(i, j)) not in self.edges:
            return 0.0
        return 1.0 / (1 + max(self.degree(i), self.degree(j)))

    def matrix(self) -> np.ndarray:
        W = np.zeros((self.n, self.n))
        for i in range(self.n):
            for j in range(self.n):
                W[i, j] = self.weight(i, j)
        return W

    def spectral_gap(self) -> float:
        """1 - second largest |eigenvalue| of W: the consensus rate of exact gossip."""
        if self.n == 1:
            return 1.0
        ev = np.sort(np.abs(np.linalg.eigvalsh(self.matrix())))[::-1]
        return float(1.0 - ev[1])


def _connected(n: int, edges) -> bool:
    seen, todo = {0}, [0]
    adj: dict[int, list[int]] = {i: [] for i in range(n)}
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    while todo:
        for b in adj[todo.pop()]:
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return len(seen) == n


def _norm(edges) -> tuple[tuple[int, int], ...]:
    return tuple(sorted({(min(a, b), max(a, b)) for a, b in edges if a != b}))


def ring(n: int) -> Graph:
    return Graph("ring", n, _norm((i, (i + 1) % n) for i in range(n)))


def torus_shape(n: int) -> tuple[int, int]:
    """rows x cols = n with rows <= cols as close as possible (both >= 2)."""
    rows = max(r for r in range(1, int(math.isqrt(n)) + 1) if n % r == 0)
    if rows < 2:
        raise GraphError(f"torus: {n} workers do not form a grid of at least 2 x 2 "
                         f"(use a composite number such as 4, 6, 8, 9, 12, 16)")
    return rows, n // rows


def torus(n: int) -> Graph:
    rows, cols = torus_shape(n)
    at = lambda r, c: (r % rows) * cols + c % cols   # noqa: E731
    edges = [(at(r, c), at(r, c + 1)) for r in range(rows) for c in range(cols)]
    edges += [(at(r, c), at(r + 1, c)) for r in range(rows) for c in range(cols)]
    return Graph("torus", n, _norm(edges))


def complete(n: int) -> Graph:
    return Graph("complete", n, _norm((i, j) for i in range(n) for j in range(i + 1, n)))


def random_regular(n: int, d: int = 3, seed: int = 0) -> Graph:
    """A uniformly drawn d-regular graph (pairing model, redrawn until simple and connected)."""
    if not 1 <= d < n or n * d % 2:
        raise GraphError(f"random: a {d}-regular graph on {n} workers needs 1 <= d < n and "
                         f"n * d even")
    rng = np.random.default_rng(seed)
    for _ in range(10000):
        stubs = rng.permutation(np.repeat(np.arange(n), d)).reshape(-1, 2)
        pairs = {(int(min(a, b)), int(max(a, b))) for a, b in stubs}
        if len(pairs) == n * d // 2 and all(a != b for a, b in pairs) and \
                _connected(n, pairs):
            return Graph("random", n, tuple(sorted(pairs)))
    raise GraphError(f"random: found no connected {d}-regular graph on {n} workers")


def make_graph(name: str, n: int, seed: int = 0, degree: int = 3) -> Graph:
    """The topology `name` on n workers (GraphError names what is wrong)."""
    if n < 2:
        raise GraphError(f"{name}: decentralized training needs at least 2 workers, got {n}")
    if name == "ring":
        return ring(n)
    if name == "torus":
        return torus(n)
    if name == "complete":
        return complete(n)
    if name == "random":
        return random_regular(n, degree, seed)
    raise GraphError(f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}")
