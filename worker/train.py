"""Quantized SGD, Algorithm 1 of the natural compression paper, on one worker.

Per step t every worker i:
  1. computes a stochastic gradient g_i on a minibatch of its shard,
  2. compresses it with C_W (optionally with error feedback: v_i = g_i + e_i),
  3. the compressed gradients are summed: in the switch for the paths it can sum (INT32 block
     floating point, NAT8 natural compression, optionally C_M on the downlink), or by the host
     all-gather fallback for every other compressor,
  4. applies x <- x - lr * (sum / n).
The sum is bit-identical on every worker (the switch multicasts one result; the fallback sums in
worker-id order), so the models stay identical without ever being exchanged again.

Decentralized training (cfg.algorithm exact / powergossip / choco) replaces steps 2-4 by a
local step and a gossip step with the graph neighbours; the models then differ per worker. The
trainer sees neither: it hands its gradient to a Communicator (worker/communicator.py).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from nina.wire import Encoding
from worker import data as datasets
from worker import models

SWITCH_PATHS = {   # name -> (encoding, C_M, INT32 rounding)
    "none": (Encoding.INT32, False, "nearest"),
    "int32": (Encoding.INT32, False, "stochastic"),
    "nat": (Encoding.NAT8, False, "stochastic"),
    "nat+cm": (Encoding.NAT8, True, "stochastic"),
}


def default_lr(model: str) -> float:
    """Learning rates that train well at batch 32 per worker: the digits models take 0.5; the
    least-squares problem (curvature up to ~6 at that batch) takes 0.1."""
    return 0.1 if model == "lsq" else 0.5


@dataclass
class TrainConfig:
    model: str = "mlp"
    data: str = "digits"
    compressor: str = "nat"
    steps: int = 300
    lr: float = 0.5
    batch: int = 32            # per worker
    seed: int = 0
    hidden: int = 32
    eval_every: int = 1
    window: int = 32
    timeout: float = 10.0      # a stalled slot / silent peer ends the job after this many s
    algorithm: str = "allreduce"   # or a gossip algorithm: exact, powergossip, choco
    topology: str = "ring"     # gossip graph: ring, torus, complete, random
    degree: int = 3            # random topology: neighbours per worker
    rank: int = 1              # powergossip: rank of the per-edge approximations
    iterations: int = 1        # powergossip: power-iteration steps per training step
    gamma: float | None = None  # gossip step size (default 1, Choco 0.5)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Path:
    """How a compressor's gradients are aggregated."""
    spec: str                       # what the user asked for
    kind: str                       # "switch" or "host"
    encoding: Encoding | None = None
    cm: bool = False
    rounding: str = "stochastic"
    pre: str | None = None          # compressor applied before the switch encoding (e.g. nat9)
    host: str | None = None         # compressor whose bytes the host fallback all-gathers
    error_feedback: bool = False

    @property
    def label(self) -> str:
        if self.kind == "host":
            return f"host all-gather of {self.host}" + (" + error feedback" if
                                                        self.error_feedback else "")
        enc = "INT32" if self.encoding == Encoding.INT32 else "NAT8"
        return f"switch {enc}" + (" + C_M" if self.cm else "") + \
            (f" after {self.pre}" if self.pre else "") + (" + error feedback" if
                                                          self.error_feedback else "")


def plan(spec: str) -> Path:
    """Map a compressor spec to its aggregation path; ValueError with a clear message if bad."""
    from worker.compress import ErrorFeedback, get_compressor
    raw = spec.strip()
    s = raw.lower()
    ef = s.startswith("ef+")
    if ef:
        s = s[3:]
    cm = s.endswith("+cm")
    base = s[:-3] if cm else s
    if base in SWITCH_PATHS:
        if cm and base != "nat":
            raise ValueError(f"{raw}: C_M (+cm) needs a NAT8 path; {base} is INT32")
        enc, cm0, rounding = SWITCH_PATHS[base + ("+cm" if cm else "")]
        return Path(raw, "switch", enc, cm0, rounding, error_feedback=ef)
    comp = get_compressor(base, seed=0)   # CompressorSpecError (a ValueError) names the problem
    if isinstance(comp, ErrorFeedback):
        comp, ef = comp.compressor, True
    if comp.summable_in_switch:
        if comp.name == "none":
            if cm:
                raise ValueError(f"{raw}: C_M (+cm) needs a NAT8 path; 'none' is INT32")
            return Path(raw, "switch", Encoding.INT32, False, "nearest", error_feedback=ef)
        return Path(raw, "switch", Encoding.NAT8, cm, pre=comp.spec, error_feedback=ef)
    if cm:
        raise ValueError(f"{raw}: C_M (+cm) is a switch step; {comp.spec} goes through the "
                         f"host fallback")
    return Path(raw, "host", host=comp.spec, error_feedback=ef)


def make_communicator(cfg: TrainConfig, path: Path | None, wid: int, n_workers: int, *,
                      client=None, gather=None, gossip_net=None):
    """The Communicator of this worker's job (worker/communicator.py), with the job's Memory."""
    from worker.communicator import GossipCommunicator, HostAllGather, SwitchAllReduce
    from worker.compress import Memory, get_compressor
    seed = cfg.seed * 1000 + wid
    if cfg.algorithm != "allreduce":
        from worker.gossip import make_gossip
        from worker.gossip_graph import make_graph
        if gossip_net is None:
            raise ValueError("decentralized training needs a gossip socket")
        graph = make_graph(cfg.topology, n_workers, seed=cfg.seed, degree=cfg.degree)
        g = make_gossip(cfg.algorithm, graph, wid, gossip_net, rank=cfg.rank,
                        iterations=cfg.iterations, gamma=cfg.gamma,
                        compressor=cfg.compressor, seed=cfg.seed)
        return GossipCommunicator(g, label=gossip_label(cfg))
    memory = Memory() if path.error_feedback else None
    if path.kind == "switch":
        if client is None:
            raise ValueError("a switch path needs an all-reduce client")
        pre = get_compressor(path.pre, seed) if path.pre else None
        return SwitchAllReduce(client, n_workers, pre, memory, label=path.label)
    if gather is None:
        raise ValueError("the host fallback needs an all-gather mesh")
    return HostAllGather(gather, n_workers, path.host, seed, memory, label=path.label)


def check_decentralized(cfg: TrainConfig, n_workers: int) -> None:
    """ValueError with one clear line if a decentralized job cannot run as configured."""
    from worker.gossip import ALGORITHMS
    from worker.gossip_graph import make_graph
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose allreduce or one of "
                         f"{', '.join(ALGORITHMS)}")
    make_graph(cfg.topology, n_workers, seed=cfg.seed, degree=cfg.degree)  # GraphError
    for what, v in (("rank", cfg.rank), ("iterations", cfg.iterations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{cfg.algorithm}: {what} {v!r} must be an integer >= 1")
    if cfg.gamma is not None and not 0 < cfg.gamma <= 1:
        raise ValueError(f"gossip step size {cfg.gamma} must be in (0, 1]")
    if cfg.algorithm == "choco":
        from worker.compress import get_compressor
        get_compressor(cfg.compressor, 0)        # CompressorSpecError names the problem


def gossip_label(cfg: TrainConfig) -> str:
    """How a decentralized job mixes, for tables and run folders."""
    what = {"exact": "exact gossip",
            "powergossip": f"PowerGossip rank {cfg.rank} x{cfg.iterations}",
            "choco": f"Choco-SGD {cfg.compressor}"}[cfg.algorithm]
    graph = {"torus": "2-D torus", "complete": "complete graph",
             "random": f"random {cfg.degree}-regular graph"}.get(cfg.topology, cfg.topology)
    return f"{what} on a {graph}"


class Diverged(ArithmeticError):
    """The loss, the gradient or the test metric is NaN or inf: training cannot go on."""


def _check_finite(step: int, what: str, value) -> None:
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise Diverged(f"{what} is {bad} at step {step}")


class Trainer:
    """One worker's side of a job: its shard, its model (per-layer tensors), the step."""

    def __init__(self, cfg: TrainConfig, wid: int, n_workers: int, comm,
                 params: np.ndarray | None = None):
        self.cfg, self.wid, self.n = cfg, wid, n_workers
        self.data = datasets.load(cfg.data, cfg.seed)
        self.model = models.make_model(cfg.model, data=self.data, hidden=cfg.hidden)
        X, y = datasets.shard(self.data, wid, n_workers, cfg.seed)
        self.batches = datasets.Batches(X, y, cfg.batch, seed=cfg.seed * 1000 + wid)
        flat = (self.model.init_params(np.random.default_rng(cfg.seed))
                if params is None else np.array(params, np.float32))
        if flat.size != self.model.size:
            raise ValueError(f"initial model has {flat.size} parameters, "
                             f"{cfg.model} needs {self.model.size}")
        self.params = models.Params(self.model.layers, flat)
        self.comm = comm
        self.steps_per_epoch = max(1, -(-len(self.data.y_train) // (n_workers * cfg.batch)))

    def evaluate(self) -> dict:
        return self.model.evaluate(self.params.flat, self.data.X_test, self.data.y_test)

    def step(self, t: int) -> dict:
        t0 = time.monotonic()
        X, y = self.batches.next()
        with np.errstate(over="ignore", invalid="ignore"):   # reported as Diverged below
            loss, g = self.model.loss_grad(self.params.flat, X, y)
        _check_finite(t + 1, "the training loss", loss)
        _check_finite(t + 1, "the gradient", g)
        comm = self.comm.step(self.params, models.Params(self.model.layers, g), self.cfg.lr)
        rec = {"step": t + 1, "train_loss": loss, **comm,
               "step_s": time.monotonic() - t0}
        last = t + 1 == self.cfg.steps
        if (self.wid == 0 or self.comm.decentralized) and \
                ((t + 1) % self.cfg.eval_every == 0 or last):
            with np.errstate(over="ignore", invalid="ignore"):
                ev = self.evaluate()
            for k, v in ev.items():
                _check_finite(t + 1, f"the test {k}", v)
            rec.update({("test_" + k): v for k, v in ev.items()})
            if self.comm.decentralized:   # the runner averages the models for its metrics
                rec["params"] = encode_params(self.params.flat)
        return rec


def encode_params(flat: np.ndarray) -> str:
    """A model as text for a JSON metrics record (base64 of its float32 bytes)."""
    import base64
    return base64.b64encode(np.ascontiguousarray(flat, "<f4").tobytes()).decode()


def decode_params(text: str) -> np.ndarray:
    import base64
    return np.frombuffer(base64.b64decode(text), "<f4").copy()
