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


class Aggregator:
    """Sum of every worker's compressed vector, by the path's means; also this worker's part."""

    def __init__(self, path: Path, client=None, gather=None, seed: int = 0):
        from worker.compress import get_compressor
        self.path, self.client, self.gather = path, client, gather
        if path.kind == "switch" and client is None:
            raise ValueError("a switch path needs an all-reduce client")
        if path.kind == "host" and gather is None:
            raise ValueError("the host fallback needs an all-gather mesh")
        self.pre = get_compressor(path.pre, seed) if path.pre else None
        self.host = get_compressor(path.host, seed) if path.host else None

    def __call__(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        if self.path.kind == "switch":
            x = self.pre(v) if self.pre is not None else v
            from nina.accounting import from_call_stats
            r = self.client.allreduce(x, record=True)
            st = r.stats
            parts = from_call_stats(st.as_dict(), self.path.encoding, self.path.cm)
            return r.values, r.contribution, {
                "bytes_up": st.bytes_out, "bytes_down": st.bytes_in,
                "packets_up": st.packets_out, "packets_down": st.packets_in,
                "retransmissions": st.retransmissions, "comm_s": st.seconds,
                "elements": st.elements, "payload_bits_up": 8 * parts["up_payload"],
                **{k: v for k, v in parts.items() if not k.endswith("_bytes")}}
        from worker.compress import Compressed
        from worker.allgather import pack_message, sum_in_order, unpack_message
        c = self.host.compress(v)
        blobs, st = self.gather.allgather(pack_message(c.codec, c.shape, c.data))
        parts, got = [], 0
        for i, b in enumerate(blobs):
            codec, shape, payload = unpack_message(b)
            got += len(payload) if i != self.gather.wid else 0
            parts.append(self.host.decompress(Compressed(payload, shape, 8 * len(payload), codec)))
        total = sum_in_order(parts)
        peers = self.gather.n - 1   # the fallback sends its message to every other worker
        return total, parts[self.gather.wid], {
            "bytes_up": st.bytes_out, "bytes_down": st.bytes_in, "packets_up": st.messages_out,
            "packets_down": st.messages_out, "retransmissions": 0, "comm_s": st.seconds,
            "elements": int(v.size), "payload_bits_up": c.bits,
            "up_payload": peers * len(c.data), "up_headers": st.bytes_out - peers * len(c.data),
            "down_payload": got, "down_headers": st.bytes_in - got}


class Diverged(ArithmeticError):
    """The loss, the gradient or the test metric is NaN or inf: training cannot go on."""


def _check_finite(step: int, what: str, value) -> None:
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise Diverged(f"{what} is {bad} at step {step}")


class Trainer:
    """One worker's side of a job: its shard, the shared model, the step."""

    def __init__(self, cfg: TrainConfig, wid: int, n_workers: int, aggregate: Aggregator,
                 params: np.ndarray | None = None):
        self.cfg, self.wid, self.n = cfg, wid, n_workers
        self.data = datasets.load(cfg.data, cfg.seed)
        self.model = models.make_model(cfg.model, self.data, cfg.hidden)
        X, y = datasets.shard(self.data, wid, n_workers, cfg.seed)
        self.batches = datasets.Batches(X, y, cfg.batch, seed=cfg.seed * 1000 + wid)
        self.params = (self.model.init_params(np.random.default_rng(cfg.seed))
                       if params is None else np.array(params, np.float32))
        if self.params.size != self.model.size:
            raise ValueError(f"initial model has {self.params.size} parameters, "
                             f"{cfg.model} needs {self.model.size}")
        self.aggregate = aggregate
        self.memory = np.zeros_like(self.params) if aggregate.path.error_feedback else None
        self.steps_per_epoch = max(1, -(-len(self.data.y_train) // (n_workers * cfg.batch)))

    def evaluate(self) -> dict:
        return self.model.evaluate(self.params, self.data.X_test, self.data.y_test)

    def step(self, t: int) -> dict:
        t0 = time.monotonic()
        X, y = self.batches.next()
        with np.errstate(over="ignore", invalid="ignore"):   # reported as Diverged below
            loss, g = self.model.loss_grad(self.params, X, y)
        _check_finite(t + 1, "the training loss", loss)
        _check_finite(t + 1, "the gradient", g)
        v = g + self.memory if self.memory is not None else g
        total, mine, comm = self.aggregate(v)
        if self.memory is not None:
            self.memory = (v - mine).astype(np.float32)
        self.params -= np.float32(self.cfg.lr / self.n) * total
        rec = {"step": t + 1, "train_loss": loss, **comm,
               "step_s": time.monotonic() - t0}
        if self.wid == 0 and ((t + 1) % self.cfg.eval_every == 0 or t + 1 == self.cfg.steps):
            with np.errstate(over="ignore", invalid="ignore"):
                ev = self.evaluate()
            for k, v in ev.items():
                _check_finite(t + 1, f"the test {k}", v)
            rec.update({("test_" + k): v for k, v in ev.items()})
        return rec
