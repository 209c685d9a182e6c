"""PyTorch DDP through the switch: a communication hook and the training loop of one rank.

DDP hands each gradient bucket to a communication hook as soon as backward has filled it and
waits for the hook's Future only at the end of backward. `SwitchComm.hook` queues the bucket to
one communication thread that all-reduces it through the NINA switch with the job's codec
(worker.allreduce.AllReduceClient) and completes the Future with the mean; backward meanwhile
goes on computing the next buckets, so communication overlaps computation. One thread keeps
the buckets in the order DDP hands them out, which is the same on every rank, so the client's
slot rounds stay in step across ranks (the switch needs no per-call exchange).

torch.distributed (Gloo) does what it does well: the process group's rendezvous, DDP's
broadcast of rank 0's initial model and buffers, barriers. Gradients go through the switch
only (`comm="gloo"` is the baseline: DDP's own Gloo all-reduce, timed by the same hook
bookkeeping).

Joining the switch goes through the c10d store every rank already shares: each rank publishes
its UDP address under `nina/addr/<rank>`; whoever installs the job (rank 0 under torchrun, or
the runner that hosts the store) reads them, installs the job through the controller and
publishes the JobSpec under `nina/spec`. A message under `nina/abort` ends every rank's
all-reduce (the runner sets it when a rank dies).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import socket
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from nina.config import DEFAULT_WINDOW, JobSpec

from worker.torch_names import CODECS, COMMS  # noqa: F401  (re-exported for the ranks)

KEY_ADDR = "nina/addr/{}"
KEY_SPEC = "nina/spec"
KEY_ABORT = "nina/abort"


class TorchJobError(RuntimeError):
    """A rank cannot go on; the message is the one line the user sees."""


# ---- the c10d-store protocol ---------------------------------------------------------------

def store_abort_message(store) -> str | None:
    try:
        if store.check([KEY_ABORT]):
            return store.get(KEY_ABORT).decode(errors="replace")
    except Exception:   # the store's host is gone: the job is over
        return "the c10d store is unreachable (the launcher or rank 0 is gone)"
    return None


def publish_address(store, rank: int, addr: tuple[str, int]) -> None:
    store.set(KEY_ADDR.format(rank), json.dumps(list(addr)))


def read_addresses(store, world: int, timeout: float) -> list[tuple[str, int]]:
    keys = [KEY_ADDR.format(r) for r in range(world)]
    try:
        store.wait(keys, timedelta(seconds=timeout))
    except Exception:
        missing = [r for r, k in enumerate(keys) if not store.check([k])]
        raise TorchJobError(f"ranks {missing} did not publish their UDP address within "
                            f"{timeout:.0f} s") from None
    return [tuple(json.loads(store.get(k))) for k in keys]


def publish_spec(store, spec: JobSpec) -> None:
    store.set(KEY_SPEC, json.dumps(spec.to_dict()))


def wait_spec(store, timeout: float) -> JobSpec:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = store_abort_message(store)
        if msg:
            raise TorchJobError(f"aborted before training: {msg}")
        if store.check([KEY_SPEC]):
            return JobSpec.from_dict(json.loads(store.get(KEY_SPEC)))
        time.sleep(0.05)
    raise TorchJobError(f"no job installed within {timeout:.0f} s (rank 0 or the launcher "
                        f"never published {KEY_SPEC} in the c10d store)")


def local_ip_towards(addr: tuple[str, int]) -> str:
    """The source address this host uses to reach `addr` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        return s.getsockname()[0]


# ---- the communication hook ----------------------------------------------------------------

@dataclass
class BucketTime:
    ready: float      # the hook was called (backward filled the bucket)
    start: float      # the communication thread began the all-reduce
    end: float        # the mean is in the Future
    elements: int


class CommTimeline:
    """Bucket times of the current step, for the compute / communication / overlap split."""

    def __init__(self):
        self.buckets: list[BucketTime] = []
        self.lock = threading.Lock()

    def add(self, b: BucketTime) -> None:
        with self.lock:
            self.buckets.append(b)

    def take(self) -> list[BucketTime]:
        with self.lock:
            out, self.buckets = self.buckets, []
        return out


class SwitchComm:
    """All-reduce of DDP buckets through the switch on one communication thread."""

    def __init__(self, client, world: int):
        self.client, self.world = client, world
        self.timeline = CommTimeline()
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="nina-comm", daemon=True)
        self.thread.start()

    def hook(self, state, bucket):  # (no annotation: DDP checks it, and it would be a string here)
        return self.submit(bucket.buffer())

    def submit(self, tensor: torch.Tensor) -> torch.futures.Future:
        fut: torch.futures.Future = torch.futures.Future()
        self.q.put((tensor, fut, time.monotonic()))
        return fut

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            tensor, fut, ready = item
            if self.error is not None:   # the client is out of step: fail fast, never wait
                fut.set_exception(TorchJobError(str(self.error)))
                continue
            start = time.monotonic()
            try:
                x = tensor.detach().numpy()
                res = self.client.allreduce(x)
                mean = torch.from_numpy(np.asarray(res.values, np.float32) / self.world)
                end = time.monotonic()
                self.timeline.add(BucketTime(ready, start, end, int(x.size)))
                fut.set_result(mean.view(tensor.shape).to(tensor.dtype))
            except BaseException as e:   # noqa: BLE001 - every failure must reach backward
                self.error = e
                fut.set_exception(TorchJobError(f"switch all-reduce: {e}"))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(2.0)


class GlooComm:
    """DDP's own Gloo all-reduce (the baseline), with the same bucket timing."""

    def __init__(self, world: int):
        self.world = world
        self.timeline = CommTimeline()
        self.error: BaseException | None = None

    def hook(self, state, bucket):  # (no annotation: DDP checks it, and it would be a string here)
        ready = time.monotonic()
        buf = bucket.buffer()
        fut = dist.all_reduce(buf, async_op=True).get_future()

        def done(f):
            end = time.monotonic()
            self.timeline.add(BucketTime(ready, ready, end, int(buf.numel())))
            return f.value()[0].div_(self.world)
        return fut.then(done)

    def close(self) -> None:
        pass


def gloo_ring_bytes(elements: int, world: int) -> int:
    """Bytes one rank sends (and receives) in a ring all-reduce of float32 `elements`:
    2 (n - 1) / n of the tensor. Gloo's wire bytes are not counted; this is the ring's bound."""
    return int(2 * (world - 1) * elements * 4 / world) if world > 1 else 0


def backward(loss: torch.Tensor, comm) -> None:
    """loss.backward(), with a failed bucket all-reduce reported as itself (torch would wrap
    the Future's error in a message about casting it to a tensor)."""
    try:
        loss.backward()
    except RuntimeError:
        if comm.error is not None:
            raise TorchJobError(f"switch all-reduce: {comm.error}") from None
        raise


# ---- training -------------------------------------------------------------------------------

@dataclass
class TorchConfig:
    model: str = "digits"
    comm: str = "nat8"
    steps: int = 200
    batch: int = 32           # per rank
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.05      # fraction of the steps with a linear learning-rate ramp
    bucket_mb: float = 0.0    # DDP bucket size; 0: a quarter of the model, so 4 buckets overlap
    seed: int = 0
    eval_every: int = 20
    window: int = DEFAULT_WINDOW
    timeout: float = 10.0     # s a slot may stay incomplete before the rank fails
    threads: int = 1          # torch intra-op threads per rank

    def as_dict(self) -> dict:
        return asdict(self)


def lr_at(cfg: TorchConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to zero (step counts from 0)."""
    w = max(1, int(cfg.warmup * cfg.steps))
    if step < w:
        return cfg.lr * (step + 1) / w
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, cfg.steps - w)))


def params_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class StepRecord:
    step: int
    loss: float
    lr: float
    step_s: float
    compute_s: float          # forward + backward compute + optimizer (exposed comm excluded)
    comm_s: float             # busy time of the communication (sum over buckets)
    exposed_comm_s: float     # backward wall time after the last bucket was ready
    overlap: float            # fraction of comm_s that ran while backward still computed
    buckets: int
    bytes_up: int
    bytes_down: int
    retransmissions: int
    train_s: float            # cumulative step time (evaluation excluded)
    accuracy: float | None = None


def split_step(buckets: list[BucketTime], bwd_start: float, bwd_end: float):
    """(comm_s, exposed_s, overlap fraction) of one step from its bucket times."""
    if not buckets:
        return 0.0, 0.0, 0.0
    last_ready = max(b.ready for b in buckets)
    comm = sum(b.end - b.start for b in buckets)
    hidden = sum(max(0.0, min(b.end, last_ready) - max(b.start, bwd_start)) for b in buckets)
    exposed = max(0.0, bwd_end - last_ready)
    return comm, exposed, (hidden / comm if comm > 0 else 0.0)


@dataclass
class RankOutcome:
    records: list[StepRecord] = field(default_factory=list)
    final_accuracy: float = 0.0
    params_hash: str = ""
    model_size: int = 0


def train(cfg: TorchConfig, rank: int, world: int, comm, out_dir: str | None = None,
          log=print) -> RankOutcome:
    """cfg.steps of momentum SGD on this rank's shard with DDP over the process group;
    `comm` is a SwitchComm or GlooComm whose hook DDP uses. Metrics per step go to
    out_dir/rank<r>.jsonl as they happen."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from worker import torch_models as tm
    torch.set_num_threads(cfg.threads)
    model, data = tm.make(cfg.model, cfg.seed)
    size = sum(p.numel() for p in model.parameters())
    bucket_mb = cfg.bucket_mb or max(0.01, size * 4 / 4 / 2**20)
    # a 1-channel input convolution's weight gradient has other (equivalent) strides than its
    # bucket view; DDP warns about performance only
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp = DDP(model, bucket_cap_mb=bucket_mb)   # broadcasts rank 0's model and buffers
    ddp.register_comm_hook(None, comm.hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    x, y = tm.shard(data, rank, world)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    order, pos = torch.randperm(len(y), generator=gen), 0
    out = RankOutcome(model_size=size)
    metrics = open(os.path.join(out_dir, f"rank{rank}.jsonl"), "w") if out_dir else None
    client = getattr(comm, "client", None)
    last = client.total.as_dict() if client else None
    train_s = 0.0
    try:
        for step in range(cfg.steps):
            if pos + cfg.batch > len(y):
                order, pos = torch.randperm(len(y), generator=gen), 0
            idx = order[pos:pos + cfg.batch]
            pos += cfg.batch
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            t0 = time.monotonic()
            loss = torch.nn.functional.cross_entropy(ddp(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            t1 = time.monotonic()
            backward(loss, comm)      # raises when a bucket's all-reduce failed
            t2 = time.monotonic()
            opt.step()
            t3 = time.monotonic()
            bts = comm.timeline.take()
            comm_s, exposed, overlap = split_step(bts, t1, t2)
            if client:
                now = client.total.as_dict()
                up, down = now["bytes_out"] - last["bytes_out"], now["bytes_in"] - last["bytes_in"]
                retx = now["retransmissions"] - last["retransmissions"]
                last = now
            else:
                up = down = gloo_ring_bytes(out.model_size, world)
                retx = 0
            train_s += t3 - t0
            rec = StepRecord(step + 1, loss.item(), lr_at(cfg, step), t3 - t0,
                             (t3 - t0) - exposed, comm_s, exposed, overlap,
                             len(bts), up, down, retx, train_s)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                rec.accuracy = tm.accuracy(model, data)
                if rank == 0:
                    log(f"step {step + 1}: loss {rec.loss:.4f} accuracy {rec.accuracy:.4f} "
                        f"step {rec.step_s * 1e3:.1f} ms (comm {comm_s * 1e3:.1f} ms, "
                        f"exposed {exposed * 1e3:.1f} ms, overlap {overlap:.0%})")
            out.records.append(rec)
            if metrics:
                metrics.write(json.dumps(asdict(rec)) + "\n")
                metrics.flush()
    finally:
        if metrics:
            metrics.close()
    out.final_accuracy = out.records[-1].accuracy if out.records else 0.0
    out.params_hash = params_hash(model)
    return out


# ---- the exactness check --------------------------------------------------------------------

def check_exact(cfg: TorchConfig, rank: int, world: int, comm, steps: int = 3) -> dict:
    """DDP steps on two linear layers whose gradients are integer matrices (outer products
    of seeded integer vectors, different on every rank): through INT32 the averaged gradient
    must equal, bit for bit, float32(the integer sum) / world, computed here from every rank's
    vectors. Returns {"exact": bool, "problems": [...], "params_hash": ...}."""
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = nn.ModuleDict({"a": nn.Linear(64, 200, bias=False), "b": nn.Linear(32, 300, bias=False)})

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, xa, ca, xb, cb):
            return (self.m["a"](xa) * ca).sum() + (self.m["b"](xb) * cb).sum()

    # small buckets: the layers travel as separate buckets, as in a real model
    ddp = DDP(Two(), bucket_cap_mb=0.02)
    ddp.register_comm_hook(None, comm.hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    problems = []

    def vectors(step: int, r: int):
        g = np.random.default_rng([cfg.seed, step, r])
        return [g.integers(-64, 65, n).astype(np.float32) for n in (64, 200, 32, 300)]

    for step in range(steps):
        mine = [torch.from_numpy(v) for v in vectors(step, rank)]
        opt.zero_grad(set_to_none=True)
        backward(ddp(*mine), comm)
        every = [vectors(step, r) for r in range(world)]
        for name, (xi, ci) in (("a", (0, 1)), ("b", (2, 3))):
            s = sum(np.outer(v[ci].astype(np.int64), v[xi].astype(np.int64)) for v in every)
            expect = s.astype(np.float32) / world
            got = model[name].weight.grad.numpy()
            if not np.array_equal(got.view(np.uint32), expect.view(np.uint32)):
                bad = int(np.count_nonzero(got != expect))
                problems.append(f"step {step + 1}, layer {name}: {bad} of {got.size} gradient "
                                f"elements differ from the exact sum / {world} (max error "
                                f"{float(np.abs(got - expect).max()):.3g})")
        opt.step()
        comm.timeline.take()
    return {"exact": not problems, "problems": problems, "params_hash": params_hash(model),
            "steps": steps, "elements": sum(p.numel() for p in model.parameters())}
