"""Jobs on a running rack (Mininet or local), through jobs/runner.py's job runners.

The rack is the runners' `switch` (its Controller and data address); worker processes start on
the worker hosts (rack.spawn_worker) and the coordinator listens on the coordinator host
(rack.coordinator_factory), so coordination crosses the switch as ordinary TCP while the
gradients cross it as NINA packets.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import time
from dataclasses import dataclass, field

from nina.cli_types import positive_float, positive_int, probability
from nina.config import WINDOW_HELP
from nina.wire import Encoding

ENCODINGS = {"nat8": Encoding.NAT8, "int32": Encoding.INT32}


@dataclass
class AllReduceReport:
    job_id: int
    n_workers: int
    size: int
    encoding: str
    cm: bool
    calls: int
    loss: float
    seconds: list[float]            # per call: the slowest worker's in-call time
    wall: float                     # the whole job, process start-up and rendezvous included
    problems: list[str]
    run_dir: str
    retransmissions: int = 0
    counters: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)     # nina.accounting parts, all workers and calls
    worker_cpu: list[float] = field(default_factory=list)  # per call: CPU s of all workers

    def bits_line(self) -> str:
        """Bits per element each way, everything sent and payload alone, and the priming
        share (docs/workbench.md)."""
        el = self.size * self.calls * self.n_workers
        p = self.parts
        if not p or not el or not (p["up_bytes"] + p["down_bytes"]):
            return ""
        prim = (p["up_priming"] + p["down_priming"]) / (p["up_bytes"] + p["down_bytes"])
        return (f"\n  bits per element: up {8 * p['up_bytes'] / el:.2f} (payload "
                f"{8 * p['up_payload'] / el:.0f}), down {8 * p['down_bytes'] / el:.2f} (payload "
                f"{8 * p['down_payload'] / el:.0f}); priming {100 * prim:.1f}% of the bytes, "
                f"retransmissions {100 * (p['up_retx'] + p['down_retx']) / (p['up_bytes'] + p['down_bytes']):.1f}%")

    @property
    def exact(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        best = min(self.seconds) if self.seconds else float("nan")
        mel = self.size / best / 1e6 if self.seconds else 0.0
        what = (f"{self.n_workers} workers x {self.size} {self.encoding}"
                f"{' +C_M' if self.cm else ''} elements"
                + (f", switch loss {self.loss:g}" if self.loss else ""))
        verdict = ("EXACT: every worker got the " + ("C_M rounding of the " if self.cm else "")
                   + "exact sum of what the workers sent") if self.exact else \
            "WRONG: " + "; ".join(self.problems[:3])
        return (f"all-reduce job {self.job_id}: {what}; per call "
                + ", ".join(f"{s * 1e3:.0f} ms" for s in self.seconds)
                + f" ({mel:.2f} M elements/s per worker, best call), job wall {self.wall:.1f} s,"
                f" retransmissions {self.retransmissions}{self.bits_line()}\n  {verdict}\n"
                f"  run folder {self.run_dir}")


def run_allreduce(rack, size: int = 100_000, encoding: str = "nat8", cm: bool = False,
                  calls: int = 1, seed: int = 0, loss: float = 0.0,
                  window: int | None = None, timeout: float = 10.0,
                  log=print) -> AllReduceReport:
    from jobs.check import check_allreduce
    from jobs.runner import run_allreduce as run_job
    if encoding not in ENCODINGS:
        raise ValueError(f"--encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    enc = ENCODINGS[encoding]
    if cm and enc != Encoding.NAT8:
        raise ValueError("--cm needs --encoding nat8")
    if window is None:
        window = rack.default_window
    job_id = rack.next_job_id()
    run_dir = rack.job_dir("allreduce", job_id)
    t0 = time.monotonic()
    try:
        out = run_job(rack.n_workers, rack, size=size, encoding=enc, cm=cm, calls=calls,
                      loss=loss, seed=seed, job_id=job_id, run_dir=run_dir, window=window,
                      timeout=timeout, spawn=rack.spawn_worker, coord_ip=rack.coord_ip,
                      log=log, coordinator=rack.coordinator_factory())
    finally:
        rack.reap_finished()
    wall = time.monotonic() - t0
    problems = check_allreduce(run_dir, rack.n_workers, calls, out.config["shift"], enc, cm,
                               seed=seed, size=size)
    per_call = [max(out.per_worker[w][c]["seconds"] for w in out.per_worker)
                for c in range(calls)]
    retx = sum(st["retransmissions"] for calls_ in out.per_worker.values() for st in calls_)
    cpu = [sum(out.per_worker[w][c].get("cpu_seconds", 0.0) for w in out.per_worker)
           for c in range(calls)]
    from nina import accounting
    parts: dict = {}
    for calls_ in out.per_worker.values():
        for st in calls_:
            accounting.add(parts, accounting.from_call_stats(st, enc, cm))
    return AllReduceReport(job_id, rack.n_workers, size, encoding, cm, calls, loss, per_call,
                           wall, problems, run_dir, retx, out.counters, parts, cpu)


def train_parser(cls=argparse.ArgumentParser) -> argparse.ArgumentParser:
    from jobs.train_args import add_train_args
    p = cls(prog="train", add_help=True,
            description="train a model with the rack's workers (as `nina train`; compressors "
                        "as in `nina train --help`; decentralized jobs gossip through the "
                        "switch's plain forwarding)")
    add_train_args(p, default_steps=100)
    p.add_argument("--loss", type=probability, default=0.0,
                   help="switch loss simulator probability (the links have their own loss)")
    p.add_argument("--window", type=positive_int, default=None,
                   help=WINDOW_HELP)
    p.add_argument("--timeout", type=positive_float, default=10.0)
    return p


def run_train(rack, argv: list[str] | str, log=print,
              parser_cls=argparse.ArgumentParser) -> tuple[list[dict], str]:
    """A `nina train`-style job (or comparison) on the rack; returns (rows, table text)."""
    from jobs.compare import compare, default_target, format_table
    from jobs.train_args import compressor_specs, train_config
    if isinstance(argv, str):
        argv = shlex.split(argv)
    args = train_parser(parser_cls).parse_args(argv)
    if args.framework == "torch":
        return run_torch_train(rack, args, log)
    specs = compressor_specs(args, rack.n_workers)   # ValueError with the reason if bad
    base = train_config(args, args.window if args.window is not None else rack.default_window)
    target, key, higher = default_target(args.model)
    if args.target is not None:
        target = args.target
    # the folder is named after the first job's id; the jobs take that id and the next ones
    first = rack.next_job_id()
    ids = itertools.chain([first], iter(rack.next_job_id, None))
    args.out = os.path.join(rack.run_dir, f"train-{first}")
    args.runs_dir = rack.run_dir
    try:
        rows, folder = compare(specs, base, rack.n_workers, args, target, key, higher,
                               log=log, switch=rack, spawn=rack.spawn_worker,
                               next_job_id=lambda: next(ids),
                               coordinator=rack.coordinator_factory())
    finally:
        rack.reap_finished()
    return rows, format_table(rows, target, key) + f"\nrun folder: {folder}"


def torch_rack_kwargs(rack) -> dict:
    """How jobs/torch_job.py's runner starts ranks on this rack: each rank in its worker host
    (Gloo on that host's interface), rank 0's c10d store reached from the coordinator host."""
    from topology.runenv import project_python

    def spawn_rank(cmd, env, rank, log_path):
        return rack.popen(rack.worker_node(rank),
                          ["env", *(f"{k}={v}" for k, v in env.items()), *cmd], log_path)
    return {"spawn_rank": spawn_rank, "master_ip": rack.worker_ip(0),
            "rank_ifname": rack.host_ifname, "store_context": rack.store_context,
            "python": project_python()}


def run_torch_train(rack, args, log=print) -> tuple[list[dict], str]:
    """`train --framework torch ...` on the rack: DDP ranks in the worker hosts, gradients
    through the rack's switch (or Gloo over the same links for comm gloo)."""
    from jobs.torch_cli import torch_job
    from jobs.torch_job import compare_torch, format_torch_table
    comms, base, target = torch_job(args, args.window if args.window is not None
                                    else rack.default_window)
    first = rack.next_job_id()
    ids = itertools.chain([first], iter(rack.next_job_id, None))
    folder = os.path.join(rack.run_dir, f"train-torch-{first}")
    try:
        rows = compare_torch(comms, base, rack.n_workers, rack, folder=folder, target=target,
                             log=log, next_job_id=lambda: next(ids), **torch_rack_kwargs(rack))
    finally:
        rack.reap_finished()
    return rows, format_torch_table(rows, target) + f"\nrun folder: {folder}"
