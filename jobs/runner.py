"""Running jobs: the embedded switch as a process, worker processes, and the coordinator loop.

`LocalSwitch` starts `nina switch --mode local` on loopback and connects a Controller to it.
`run_training` and `run_allreduce` drive one job end to end: spawn the workers (a `spawn`
callable, so a rack can start them in its own hosts), rendezvous, install the job through the
controller, broadcast the initial model, collect per-step metrics, remove the job. Anything that
goes wrong ends as JobAborted with a one-line reason.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nina import p4spec
from nina.config import DEFAULT_WINDOW, JobSpec, WorkerAddr
from nina.wire import Encoding
from jobs.coordinator import Coordinator
from jobs.metrics import _epoch_line, _merge_step, gossip_metrics, summarize
from nina.jobmsg import JobAborted
from nina.procs import REPO, stop_process
from switch.handles import JobInstaller


EXTERNAL_JOIN_TIMEOUT = 600.0   # s the coordinator waits for workers it did not start


def external_worker(endpoint: str, wid: int, log_path: str) -> None:
    """The `spawn` for workers started by someone else (containers, other machines), which
    join the coordinator at its fixed address: nothing to start, the coordinator waits."""
    return None


def spawn_local_worker(endpoint: str, wid: int, log_path: str) -> subprocess.Popen:
    """A worker process on loopback (the default `spawn` of the job runners)."""
    cmd = [sys.executable, "-m", "worker.worker_proc", "--coord", endpoint, "--rank", str(wid)]
    with open(log_path, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO)


@dataclass
class JobOutcome:
    name: str
    config: dict
    records: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    hashes: list[str] = field(default_factory=list)
    per_worker: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    seconds: float = 0.0          # wall time of the whole job
    startup_seconds: float = 0.0  # start to the start barrier: processes, data, model, install
    train_seconds: float = 0.0    # the start barrier to the last worker's done


class Progress:
    """Progress of a job's steps: a tqdm bar on a terminal; on anything else (a log file, a
    pipe, CI) a plain line every `every` steps, because a bar's carriage-return redraws are
    unreadable there."""

    def __init__(self, total: int, desc: str, log, stream=None, lines: int = 10):
        self.total, self.desc, self.log, self.done = total, desc, log, 0
        self.stream = stream if stream is not None else sys.stderr
        self.every = max(1, total // lines)
        self.t0 = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True,
                            leave=False, file=self.stream)

    def write(self, line: str) -> None:
        (self.bar.write(line) if self.bar is not None else self.log(line))

    def update(self, row: dict) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.done % self.every == 0 or self.done == self.total:
            el = time.monotonic() - self.t0
            print(f"{self.desc}: step {self.done}/{self.total} "
                  f"({100 * self.done / self.total:.0f}%), {el:.1f} s, "
                  f"{self.done / max(el, 1e-9):.1f} steps/s, loss {row['train_loss']:.4g}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _start_job(n: int, run_dir: str, spawn, coord_ip: str, log, heartbeat_timeout: float,
               coord_port: int | None = None, coordinator=Coordinator):
    os.makedirs(run_dir, exist_ok=True)
    coord = coordinator(n, bind_ip=coord_ip, log=log, heartbeat_timeout=heartbeat_timeout,
                        bind_port=coord_port)
    procs = []
    try:
        for w in range(n):
            p = spawn(coord.endpoint, w, os.path.join(run_dir, f"worker{w}.log"))
            if p is not None:          # None: an external worker joins by itself
                procs.append(p)
        coord.procs = procs
        if len(procs) < n:
            log(f"waiting for {n - len(procs)} external workers to join {coord.endpoint}")
        coord.rendezvous(timeout=120.0 if len(procs) == n else EXTERNAL_JOIN_TIMEOUT)
    except BaseException:
        _teardown(coord, procs)
        raise
    return coord, procs


def _teardown(coord: Coordinator, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 5.0
    for p in procs:   # workers leave by themselves after bye/abort; stop stragglers
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_process(p)
    coord.close()


def make_spec(job_id: int, n: int, encoding: Encoding, cm: bool, loss: float,
              members, slot_base: int | None = None, slot_count: int = 2 * DEFAULT_WINDOW,
              switch_ip: str = "127.0.0.1", switch_port: int | None = None) -> JobSpec:
    """A loopback job: workers at the addresses they announced, one slot range per job id."""
    if slot_base is None:
        blocks = max(1, p4spec.POOL_SLOTS // slot_count)
        slot_base = (job_id - 1) % blocks * slot_count
    workers = tuple(WorkerAddr(m.wid, m.udp[0], m.udp[1]) for m in members)
    extra = {"switch_udp_port": switch_port} if switch_port else {}
    spec = JobSpec(job_id=job_id, n_workers=n, encoding=encoding, cm=cm, slot_base=slot_base,
                   slot_count=slot_count, loss=loss, workers=workers, switch_ip=switch_ip,
                   **extra)
    try:
        spec.validate()
    except ValueError as e:
        raise JobAborted(f"job {job_id}: {e}") from None
    return spec


def run_training(cfg, n_workers: int, switch, *, job_id: int = 1, loss: float = 0.0,
                 run_dir: str, name: str | None = None, spawn=spawn_local_worker,
                 coord_ip: str = "127.0.0.1", log: Callable[[str], None] = print,
                 progress: bool = True, on_step: Callable[[dict, list], None] | None = None,
                 heartbeat_timeout: float = 4.0, spec_factory=None,
                 coord_port: int | None = None, more_jobs: bool = False,
                 coordinator=Coordinator) -> JobOutcome:
    """Train cfg (worker.train.TrainConfig) with n worker processes; returns the metrics.

    switch: has `data_addr` and a `controller` (or install_job/remove_job); spawn(endpoint,
    wid, log_path) -> Popen starts a worker (external_worker: workers join by themselves at
    coord_ip:coord_port); spec_factory(job_id, n, encoding, cm, loss, members) -> JobSpec
    lets a rack describe its workers' ports and MACs (default: loopback); more_jobs tells
    workers that serve several jobs to stay for the next one.
    """
    from worker import data as datasets
    from worker import models
    from worker.models import model_hash
    from worker.train import check_decentralized, gossip_label, plan
    decentralized = cfg.algorithm != "allreduce"
    try:
        if decentralized:
            check_decentralized(cfg, n_workers)
        path = None if decentralized else plan(cfg.compressor)
    except ValueError as e:
        raise JobAborted(str(e)) from None
    label = gossip_label(cfg) if decentralized else path.label
    data = datasets.load(cfg.data, cfg.seed)
    model = models.make_model(cfg.model, data, cfg.hidden)
    params0 = model.init_params(np.random.default_rng(cfg.seed))
    steps_per_epoch = max(1, -(-len(data.y_train) // (n_workers * cfg.batch)))
    name = name or (cfg.algorithm if decentralized else cfg.compressor)
    installer = JobInstaller(switch)
    window = min(cfg.window, 2 * DEFAULT_WINDOW)
    config = {**cfg.as_dict(), "workers": n_workers, "path": label, "loss": loss,
              "job_id": job_id, "model_size": int(params0.size),
              "initial_model_hash": model_hash(params0)}
    out = JobOutcome(name, config)
    t0 = time.monotonic()
    coord, procs = _start_job(n_workers, run_dir, spawn, coord_ip, log, heartbeat_timeout,
                              coord_port, coordinator)
    coord.switch_check = installer.switch_died
    spec = None
    bar = None
    try:
        members = [coord.members[w] for w in range(n_workers)]
        job = {"task": {"kind": "train", "config": cfg.as_dict()}, "window": window,
               "seed": cfg.seed, "timeout": cfg.timeout,
               "rounding": path.rounding if path else "stochastic",
               "host_fallback": path is not None and path.kind == "host"}
        if decentralized and any(m.gossip is None for m in members):
            raise JobAborted("decentralized training: workers "
                             f"{[m.wid for m in members if m.gossip is None]} announced no "
                             "gossip socket (an older worker_proc?)")
        if path is not None and path.kind == "switch":
            spec = (spec_factory or make_spec)(job_id, n_workers, path.encoding, path.cm, loss,
                                               members)
            firsts = installer.install(spec)
            coord.slot_diagnosis = installer.slot_missing(spec)
            job.update({"spec": spec.to_dict(), "switch": list(switch.data_addr),
                        "first_rounds": firsts})
        coord.welcome(job, params0)
        coord.wait_ready(timeout=120.0)
        if progress:
            bar = Progress(cfg.steps, f"{name} x{n_workers}", log)
        pending: dict[int, list] = {}
        totals = {"bytes_total": 0, "bytes_up": 0, "bytes_down": 0, "retransmissions": 0}

        def on_metrics(wid: int, rec: dict) -> None:
            got = pending.setdefault(rec["step"], [None] * n_workers)
            got[wid] = rec
            step = len(out.records) + 1
            while step in pending and all(r is not None for r in pending[step]):
                recs = pending.pop(step)
                extra = gossip_metrics(model, data, recs) if decentralized else {}
                row = _merge_step(recs, totals)
                row.update(extra)
                row["wall_s"] = round(time.monotonic() - t_train, 4)
                out.records.append(row)
                if bar is not None:
                    bar.update(row)
                if step % steps_per_epoch == 0 or step == cfg.steps:
                    line = _epoch_line(step, steps_per_epoch, row, totals)
                    (bar.write(line) if bar is not None else log(line))
                if on_step is not None:
                    on_step(row, procs)
                step += 1
        coord.on_metrics = on_metrics
        coord.barrier("start")
        t_train = time.monotonic()
        out.startup_seconds = t_train - t0
        done = coord.wait_done(timeout=max(120.0, cfg.steps * 5.0), more=more_jobs)
        out.train_seconds = time.monotonic() - t_train
        out.hashes = [done[w].get("hash") for w in range(n_workers)]
        out.per_worker = {w: {k: v for k, v in done[w].items() if k not in ("t", "wid")}
                          for w in range(n_workers)}
        if len(set(out.hashes)) != 1 and not decentralized:   # gossip: they differ
            raise JobAborted(f"models diverged: worker model hashes {out.hashes}")
    except KeyboardInterrupt:
        coord.abort("interrupted by the user (Ctrl-C)")
        raise JobAborted("interrupted by the user (Ctrl-C)") from None
    except JobAborted as e:
        coord.abort(str(e))
        out.seconds = time.monotonic() - t0
        if out.records and not out.train_seconds:
            out.train_seconds = out.seconds - out.startup_seconds
        out.summary = summarize(out.records, cfg, n_workers, label, None, None)
        e.outcome = out
        raise
    finally:
        if bar is not None:
            bar.close()
        if spec is not None:
            out.counters = installer.counters()
            installer.remove(spec.job_id)
        _teardown(coord, procs)
    out.seconds = time.monotonic() - t0
    final = out.per_worker.get(0, {}).get("final")
    if decentralized:
        final = _averaged_final(out)
    out.summary = summarize(out.records, cfg, n_workers, label,
                            None if decentralized else out.hashes[0], final)
    if decentralized:
        out.summary.update({k: v for k, v in out.records[-1].items()
                            if k.startswith("worker_") or k == "consensus_distance"})
        out.summary.update(algorithm=cfg.algorithm, compressor=name)
        out.summary["worker_final"] = [out.per_worker[w].get("final")
                                       for w in range(n_workers)]   # each worker's own model
        out.summary["edge_bytes"] = {f"{w}->{j}": e["bytes_out"]
                                     for w in range(n_workers)
                                     for j, e in sorted(out.per_worker[w].get("edges", {})
                                                        .items(), key=lambda kv: int(kv[0]))}
    return out


def _averaged_final(out: JobOutcome) -> dict | None:
    """The final evaluation of a decentralized job: the averaged model's (the last record
    holds it, from every worker's last model)."""
    last = out.records[-1] if out.records else {}
    ev = {k[len("test_"):]: v for k, v in last.items() if k.startswith("test_")}
    return ev or None


def run_allreduce(n_workers: int, switch, *, size: int, encoding: Encoding, cm: bool = False,
                  calls: int = 1, loss: float = 0.0, seed: int = 0, job_id: int = 1,
                  run_dir: str, window: int = DEFAULT_WINDOW, timeout: float = 10.0,
                  spawn=spawn_local_worker, coord_ip: str = "127.0.0.1",
                  log: Callable[[str], None] = print, rounding: str = "stochastic",
                  heartbeat_timeout: float = 4.0, spec_factory=None,
                  coord_port: int | None = None, more_jobs: bool = False,
                  coordinator=Coordinator, dump: bool = True) -> JobOutcome:
    """`calls` all-reduces of seeded random tensors by n worker processes; each worker dumps
    what it sent and received to run_dir/worker<i>.npz for an exact check (check_allreduce),
    unless dump=False (a memory measurement: recording what was sent costs memory)."""
    out = JobOutcome("allreduce", {"size": size, "encoding": Encoding(encoding).name, "cm": cm,
                                   "calls": calls, "loss": loss, "workers": n_workers})
    t0 = time.monotonic()
    installer = JobInstaller(switch)
    coord, procs = _start_job(n_workers, run_dir, spawn, coord_ip, log, heartbeat_timeout,
                              coord_port, coordinator)
    coord.switch_check = installer.switch_died
    spec = None
    try:
        members = [coord.members[w] for w in range(n_workers)]
        spec = (spec_factory or make_spec)(job_id, n_workers, encoding, cm, loss, members)
        firsts = installer.install(spec)
        coord.slot_diagnosis = installer.slot_missing(spec)
        coord.on_metrics = lambda wid, rec: None
        coord.welcome({"task": {"kind": "allreduce", "size": size, "calls": calls, "seed": seed,
                                "dump": os.path.abspath(run_dir) if dump else None},
                       "spec": spec.to_dict(), "switch": list(switch.data_addr),
                       "first_rounds": firsts,
                       "window": window, "seed": seed, "timeout": timeout,
                       "rounding": rounding}, None)
        coord.wait_ready(timeout=120.0)
        coord.barrier("start")
        for c in range(1, calls):   # the workers' barrier before each later call
            coord.barrier(f"call {c}", timeout=max(120.0, 10.0 * calls))
        done = coord.wait_done(timeout=max(120.0, 10.0 * calls), more=more_jobs)
        out.per_worker = {w: done[w].get("calls") for w in range(n_workers)}
    except JobAborted as e:
        coord.abort(str(e))
        raise
    finally:
        if spec is not None:
            out.counters = installer.counters()
            installer.remove(spec.job_id)
        _teardown(coord, procs)
    out.config["shift"] = spec.shift
    out.seconds = time.monotonic() - t0
    return out
