"""Gossip algorithms: how a worker mixes its model with its neighbours' on a graph.

Each algorithm works on this worker's model as a list of per-layer float32 tensors (modified in
place) and talks through a GossipNet (real UDP datagrams, bytes counted per edge). One call of
step() is one gossip step of decentralized SGD; every worker calls it the same number of times,
so their round numbers agree.

- ExactGossip (D-PSGD, Lian et al. 2017): send the whole model to every neighbour,
  x_i <- x_i + gamma * sum_j w_ij (x_j - x_i). 32 bits per parameter per edge.
- PowerGossip (Vogels, Karimireddy, Jaggi 2020): per edge (i, j) and per matrix-shaped layer,
  approximate the difference D = X_lo - X_hi (lo < hi the edge's two ends) by rank-r power
  iteration whose vectors both ends share: iteration t multiplies by q (even t, both send
  X q, m x r) or by p (odd t, both send X^T p, n x r), after orthonormalising the shared
  factor; the difference of the two products is D q (or D^T p), known bit for bit at both ends,
  and both apply the projected difference with opposite signs, X_lo -= gamma w D q q^T,
  X_hi += gamma w D q q^T. So the sum of the models never changes. The factors start from
  randomness seeded by the edge (shared without a message) and are warm-started from the
  previous step. `iterations` power steps per training step; vectors (biases) go exact once per
  step.
- ChocoGossip (Choco-SGD, Koloskova, Stich, Jaggi 2019): every worker keeps a public copy
  x_hat_i that all its neighbours track, sends C(x_i - x_hat_i) with a compressor from
  worker/compress (top-k, nat, ...), and moves x_i <- x_i + gamma * (sum_j w_ij x_hat_j -
  x_hat_i). Also average-preserving (W is doubly stochastic).
"""
from __future__ import annotations

import numpy as np

from worker.gossip_graph import Graph
from worker.gossip_net import EdgeCounters, GossipNet

ALGORITHMS = ("exact", "powergossip", "choco")


def _f32(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, "<f4").tobytes()


def _orthonormal(m: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning m (reduced QR, float32); zero columns stay harmless."""
    q, _ = np.linalg.qr(m.astype(np.float64))
    return q.astype(np.float32)


class Gossip:
    """Shared part: the graph, this worker's place in it, the net and the round counter."""

    name = "?"

    def __init__(self, graph: Graph, wid: int, net: GossipNet, gamma: float = 1.0):
        if not 0 <= wid < graph.n:
            raise ValueError(f"worker id {wid} outside the graph's 0..{graph.n - 1}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gossip step size gamma={gamma} must be in (0, 1]")
        self.graph, self.wid, self.net, self.gamma = graph, wid, net, gamma
        self.nbrs = graph.neighbours(wid)
        self.w = {j: graph.weight(wid, j) for j in self.nbrs}
        self.round = 0
        self._seen = EdgeCounters()    # everything this net carries counts in some step

    def _exchange(self, msgs: dict[int, bytes]) -> dict[int, bytes]:
        got = self.net.exchange(self.round, msgs)
        self.round += 1
        return got

    def step(self, tensors: list[np.ndarray]) -> dict:
        """One gossip step on this worker's tensors (in place); returns the datagrams sent
        and received since the previous step's return (a neighbour's datagram that arrives
        while this worker computes its gradient counts in the next step, never nowhere)."""
        self._step(tensors)
        before, after = self._seen, self.net.totals()
        self._seen = after
        return {"bytes_up": after.bytes_out - before.bytes_out,
                "bytes_down": after.bytes_in - before.bytes_in,
                "packets_up": after.datagrams_out - before.datagrams_out,
                "packets_down": after.datagrams_in - before.datagrams_in,
                "retransmissions": after.resent - before.resent,
                "recovery_bytes": after.recovery_bytes - before.recovery_bytes}

    def _step(self, tensors: list[np.ndarray]) -> None:
        raise NotImplementedError

    def message_bytes(self, shapes: list[tuple[int, ...]]) -> int:
        """Payload bytes this worker sends to one neighbour per step (headers excluded)."""
        raise NotImplementedError


def _decode_like(buf: bytes, shapes: list[tuple[int, ...]], who: int) -> list[np.ndarray]:
    sizes = [int(np.prod(s)) for s in shapes]
    if len(buf) != 4 * sum(sizes):
        raise ValueError(f"gossip: worker {who} sent {len(buf)} bytes, expected "
                         f"{4 * sum(sizes)}")
    flat = np.frombuffer(buf, "<f4")
    out, i = [], 0
    for s, n in zip(shapes, sizes):
        out.append(flat[i:i + n].reshape(s))
        i += n
    return out


class ExactGossip(Gossip):
    name = "exact"

    def _step(self, tensors):
        msg = b"".join(_f32(t) for t in tensors)
        got = self._exchange({j: msg for j in self.nbrs})
        shapes = [t.shape for t in tensors]
        own = [t.copy() for t in tensors]
        for j in self.nbrs:
            for t, x_i, x_j in zip(tensors, own, _decode_like(got[j], shapes, j)):
                t += np.float32(self.gamma * self.w[j]) * (x_j - x_i)

    def message_bytes(self, shapes):
        return 4 * sum(int(np.prod(s)) for s in shapes)


def is_matrix(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 2 and min(shape[0], int(np.prod(shape[1:]))) > 1


class PowerGossip(Gossip):
    name = "powergossip"

    def __init__(self, graph, wid, net, rank: int = 1, iterations: int = 1, gamma: float = 1.0,
                 seed: int = 0):
        super().__init__(graph, wid, net, gamma)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"powergossip: rank {rank!r} must be an integer >= 1")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"powergossip: iterations {iterations!r} must be an integer >= 1")
        self.rank, self.iterations, self.seed = rank, iterations, seed
        self.factors: dict[int, list[list[np.ndarray] | None]] = {}
        self.t = 0       # power-iteration counter: even multiplies by q, odd by p

    def _init(self, tensors) -> None:
        for j in self.nbrs:
            lo, hi = min(self.wid, j), max(self.wid, j)
            per = []
            for k, t in enumerate(tensors):
                if not is_matrix(t.shape):
                    per.append(None)
                    continue
                m, n = t.shape[0], int(np.prod(t.shape[1:]))
                r = min(self.rank, m, n)
                rng = np.random.default_rng([self.seed, lo, hi, k])   # both ends draw the same
                per.append([rng.standard_normal((m, r)).astype(np.float32),
                            rng.standard_normal((n, r)).astype(np.float32)])
            self.factors[j] = per

    def _step(self, tensors):
        if not self.factors:
            self._init(tensors)
        mats = [k for k, t in enumerate(tensors) if is_matrix(t.shape)]
        vecs = [k for k, t in enumerate(tensors) if not is_matrix(t.shape)]
        for it in range(self.iterations):
            left = self.t % 2 == 0       # multiply by q: products X q (m x r)
            msgs, parts = {}, {}
            for j in self.nbrs:
                chunks = []
                for k in mats:
                    pq = self.factors[j][k]
                    X = tensors[k].reshape(tensors[k].shape[0], -1)
                    shared = _orthonormal(pq[1] if left else pq[0])
                    pq[1 if left else 0] = shared
                    chunks.append(X @ shared if left else X.T @ shared)
                if it == 0:
                    chunks += [tensors[k].reshape(-1) for k in vecs]
                parts[j] = chunks
                msgs[j] = b"".join(_f32(c) for c in chunks)
            got = self._exchange(msgs)
            own_vecs = [tensors[k].copy() for k in vecs] if it == 0 else None
            for j in self.nbrs:
                shapes = [c.shape for c in parts[j]]
                theirs = _decode_like(got[j], shapes, j)
                lo_first = self.wid < j
                scale = np.float32(self.gamma * self.w[j])
                for idx, k in enumerate(mats):
                    mine, other = parts[j][idx].astype(np.float32), theirs[idx]
                    diff = mine - other if lo_first else other - mine    # lo's minus hi's
                    pq = self.factors[j][k]
                    pq[0 if left else 1] = diff        # the new other factor, shared
                    p, q = pq
                    approx = (p @ q.T).reshape(tensors[k].shape)  # ~ X_lo - X_hi, projected
                    if lo_first:
                        tensors[k] -= scale * approx
                    else:
                        tensors[k] += scale * approx
                if it == 0:
                    for idx, k in enumerate(vecs):
                        x_j = theirs[len(mats) + idx].reshape(tensors[k].shape)
                        tensors[k] += scale * (x_j - own_vecs[idx])
            self.t += 1

    def message_bytes(self, shapes):
        total = 0
        for it in range(self.iterations):
            left = (self.t + it) % 2 == 0
            for s in shapes:
                if is_matrix(s):
                    m, n = s[0], int(np.prod(s[1:]))
                    total += 4 * min(self.rank, m, n) * (m if left else n)
                elif it == 0:
                    total += 4 * int(np.prod(s))
        return total


class ChocoGossip(Gossip):
    name = "choco"

    def __init__(self, graph, wid, net, compressor: str = "topk:k=0.01", gamma: float = 0.5,
                 seed: int = 0):
        super().__init__(graph, wid, net, gamma)
        from worker.compress import get_compressor
        self.spec = compressor
        self.comp = get_compressor(compressor, seed=[seed, wid])   # CompressorSpecError if bad
        self.decoder = get_compressor(compressor, seed=0)
        self.hat: np.ndarray | None = None     # x_hat_i
        self.mix: np.ndarray | None = None     # sum_j w_ij x_hat_j, self included

    def _step(self, tensors):
        from worker.compress import Compressed
        flat = np.concatenate([t.reshape(-1) for t in tensors]).astype(np.float32)
        if self.hat is None:
            self.hat = np.zeros_like(flat)
            self.mix = np.zeros_like(flat)
        c = self.comp.compress(flat - self.hat)
        got = self._exchange({j: c.data for j in self.nbrs})
        mine = self.decoder.decompress(c).reshape(-1)
        self.hat += mine
        self.mix += np.float32(self.graph.weight(self.wid, self.wid)) * mine
        for j in self.nbrs:
            d = self.decoder.decompress(Compressed(got[j], flat.shape, 8 * len(got[j]), c.codec))
            self.mix += np.float32(self.w[j]) * d.reshape(-1)
        flat += np.float32(self.gamma) * (self.mix - self.hat)
        i = 0
        for t in tensors:
            t.reshape(-1)[:] = flat[i:i + t.size]
            i += t.size

    def message_bytes(self, shapes):
        from worker.compress import get_compressor
        probe = get_compressor(self.spec, seed=0)   # a fresh one: self.comp keeps its state
        return len(probe.compress(np.ones(sum(int(np.prod(s)) for s in shapes),
                                          np.float32)).data)


def make_gossip(algorithm: str, graph: Graph, wid: int, net: GossipNet, *, rank: int = 1,
                iterations: int = 1, gamma: float | None = None,
                compressor: str = "topk:k=0.01", seed: int = 0) -> Gossip:
    """The gossip algorithm by name (ValueError naming the problem otherwise)."""
    if algorithm == "exact":
        return ExactGossip(graph, wid, net, 1.0 if gamma is None else gamma)
    if algorithm == "powergossip":
        return PowerGossip(graph, wid, net, rank, iterations, 1.0 if gamma is None else gamma,
                           seed)
    if algorithm == "choco":
        return ChocoGossip(graph, wid, net, compressor, 0.5 if gamma is None else gamma, seed)
    raise ValueError(f"unknown gossip algorithm {algorithm!r}; choose one of "
                     f"{', '.join(ALGORITHMS)}")
