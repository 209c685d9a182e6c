"""Running jobs: the embedded switch as a process, worker processes, and the coordinator loop.

`LocalSwitch` starts `nina switch --mode local` on loopback and connects a Controller to it.
`run_training` and `run_allreduce` drive one job end to end: spawn the workers (a `spawn`
callable, so a rack can start them in its own hosts), rendezvous, install the job through the
controller, broadcast the initial model, collect per-step metrics, remove the job. Anything that
goes wrong ends as JobAborted with a one-line reason.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nina import p4spec
from nina.config import DEFAULT_WINDOW, JobSpec, WorkerAddr
from nina.wire import Encoding
from worker.coordinator import Coordinator, JobAborted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the P4Info the controller loads; NINA_P4INFO points elsewhere (e.g. a p4c output directory)
P4INFO_PATH = os.environ.get("NINA_P4INFO") or os.path.join(REPO, "p4", "build",
                                                             "nina.p4info.txtpb")


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(p: subprocess.Popen, timeout: float = 3.0) -> None:
    """Terminate one process we started (by its pid), killing it if it does not go."""
    if p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout)
    except ProcessLookupError:
        pass


def _tail(path: str, lines: int = 6) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.rstrip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def local_switch_unavailable() -> str | None:
    """Why `nina switch --mode local` cannot run here (None when it can)."""
    import importlib.util
    for mod in ("switch.cli", "switch.pipeline"):
        if importlib.util.find_spec(mod) is None:
            return f"the embedded switch is not available ({mod} missing)"
    if not os.path.exists(P4INFO_PATH):
        return f"P4Info {P4INFO_PATH} is missing (make p4)"
    return None


class LocalSwitch:
    """The embedded switch as a real process on loopback, plus a Controller for its jobs."""

    def __init__(self, log_dir: str, log: Callable[[str], None] = print,
                 start_timeout: float = 60.0, ip: str = "127.0.0.1",
                 trace_path: str | None = None):
        if not os.path.exists(P4INFO_PATH):   # the controller needs it: fail before spawning
            raise JobAborted(f"P4Info {P4INFO_PATH} is missing (make p4)")
        self.ip = ip
        self.udp_port = free_port(socket.SOCK_DGRAM, ip)
        self.grpc_port = free_port(socket.SOCK_STREAM, ip)
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, "switch.log")
        self.log = log
        self.controller = None
        cmd = [sys.executable, "-m", "nina.cli", "switch", "--mode", "local",
               "--listen", f"{ip}:{self.udp_port}", "--grpc", f"{ip}:{self.grpc_port}"]
        self.trace_path = trace_path
        if trace_path:
            cmd += ["--trace", trace_path]
        with open(self.log_path, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO)
        try:
            self._wait_grpc(start_timeout)
            self._connect()
        except BaseException:
            self.stop()
            raise

    @property
    def data_addr(self) -> tuple[str, int]:
        return (self.ip, self.udp_port)

    @property
    def grpc_addr(self) -> str:
        return f"{self.ip}:{self.grpc_port}"

    def _wait_grpc(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise JobAborted(f"the switch process exited with code {self.proc.returncode}: "
                                 f"{_tail(self.log_path)}")
            try:
                socket.create_connection((self.ip, self.grpc_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise JobAborted(f"the switch did not open its P4Runtime port {self.grpc_addr} within "
                         f"{timeout:.0f} s (log: {self.log_path})")

    def _connect(self) -> None:
        from switch.controller import Controller, ControllerError
        try:
            self.controller = Controller(self.grpc_addr, P4INFO_PATH, None, push="auto",
                                         connect_timeout=15.0)
        except ControllerError as e:
            raise JobAborted(f"controller: {e}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.controller is not None:
            # teardown: a failing close must not hide the error being unwound
            with contextlib.suppress(Exception):
                self.controller.close()
            self.controller = None
        stop_process(self.proc)


class InProcessSwitch:
    """The embedded pipeline served from a thread of this process, jobs installed directly
    (no P4Runtime). For tests on machines without the P4Info; workers are still processes."""

    def __init__(self, ip: str = "127.0.0.1", seed: int | None = None):
        from switch.io_udp import UdpIO
        from switch.pipeline import Pipeline
        from switch.server import SwitchServer
        self.pipeline = Pipeline(seed=seed)
        self.io = UdpIO(ip, 0)
        self.server = SwitchServer(self.pipeline, self.io).start()
        self.data_addr = self.io.address

    def install_job(self, spec: JobSpec) -> None:
        try:
            self.pipeline.remove_job(spec.job_id)
        except Exception:
            pass   # not installed: nothing to replace
        self.pipeline.install_job(spec)

    def remove_job(self, job_id: int) -> None:
        self.pipeline.remove_job(job_id)

    def read_counters(self) -> dict[str, tuple[int, int]]:
        return self.pipeline.counter_dict()

    def slot_bitmap(self, spec: JobSpec, slot: int, ver: int) -> int:
        from nina import p4spec
        return self.pipeline.read_register(p4spec.REG_BITMAP, (spec.slot_base + slot) * 2 + ver)

    def stop(self) -> None:
        self.server.stop()


def switch_for_checks(log_dir: str, log: Callable[[str], None] = print):
    """A switch for tests and checks: the real process when it can run here, else the pipeline
    in-process (saying why); None if there is no embedded switch at all."""
    import importlib.util
    why = local_switch_unavailable()
    if why is None:
        return LocalSwitch(log_dir, log=log)
    if importlib.util.find_spec("switch.pipeline") is None:
        return None
    log(f"switch process unavailable ({why}): serving the pipeline in-process")
    return InProcessSwitch()


def slot_bitmap_reader(switch, spec: JobSpec) -> Callable[[int, int], int] | None:
    """(slot, ver) -> the switch's worker bitmap of that slot, when the switch can tell."""
    ctl = getattr(switch, "controller", None)
    if ctl is not None and hasattr(ctl, "read_slot"):
        return lambda slot, ver: ctl.read_slot(spec.job_id, slot, ver, n_acc=0)[0].bitmap
    if hasattr(switch, "slot_bitmap"):
        return lambda slot, ver: switch.slot_bitmap(spec, slot, ver)
    return None


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
    seconds: float = 0.0


class JobInstaller:
    """Job install/remove through the controller (or a plain callable in tests)."""

    def __init__(self, switch):
        self.switch = switch

    def install(self, spec: JobSpec) -> None:
        ctl = getattr(self.switch, "controller", None)
        if ctl is None:
            self.switch.install_job(spec)
            return
        from switch.controller import ControllerError
        try:
            if any(j.job_id == spec.job_id for j in ctl.show_jobs()):
                ctl.remove_job(spec.job_id)
            ctl.install_job(spec)
        except ControllerError as e:
            raise JobAborted(f"installing job {spec.job_id}: {e}") from None

    def remove(self, job_id: int) -> None:
        ctl = getattr(self.switch, "controller", None)
        try:
            if ctl is None:
                if hasattr(self.switch, "remove_job"):
                    self.switch.remove_job(job_id)
            else:
                ctl.remove_job(job_id)
        except Exception:   # best effort at teardown; the job's outcome is already decided
            pass

    def counters(self) -> dict:
        src = getattr(self.switch, "controller", None) or self.switch
        try:
            return {k: v[0] for k, v in src.read_counters().items() if v[0]}
        except Exception:
            return {}

    def slot_missing(self, spec: JobSpec) -> Callable[[int, int], list[int] | None] | None:
        read = slot_bitmap_reader(self.switch, spec)
        if read is None:
            return None
        return lambda slot, ver: [w for w in range(spec.n_workers) if not read(slot, ver) >> w & 1]


def _start_job(n: int, run_dir: str, spawn, coord_ip: str, log, heartbeat_timeout: float,
               coord_port: int | None = None):
    os.makedirs(run_dir, exist_ok=True)
    coord = Coordinator(n, bind_ip=coord_ip, log=log, heartbeat_timeout=heartbeat_timeout,
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
                 coord_port: int | None = None, more_jobs: bool = False) -> JobOutcome:
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
    from worker.train import plan
    from worker.worker_proc import spec_to_dict
    path = plan(cfg.compressor)
    data = datasets.load(cfg.data, cfg.seed)
    model = models.make_model(cfg.model, data, cfg.hidden)
    params0 = model.init_params(np.random.default_rng(cfg.seed))
    steps_per_epoch = max(1, -(-len(data.y_train) // (n_workers * cfg.batch)))
    name = name or cfg.compressor
    installer = JobInstaller(switch)
    window = min(cfg.window, 2 * DEFAULT_WINDOW)
    config = {**cfg.as_dict(), "workers": n_workers, "path": path.label, "loss": loss,
              "job_id": job_id, "model_size": int(params0.size),
              "initial_model_hash": model_hash(params0)}
    out = JobOutcome(name, config)
    t0 = time.monotonic()
    coord, procs = _start_job(n_workers, run_dir, spawn, coord_ip, log, heartbeat_timeout,
                              coord_port)
    spec = None
    bar = None
    try:
        members = [coord.members[w] for w in range(n_workers)]
        job = {"task": {"kind": "train", "config": cfg.as_dict()}, "window": window,
               "seed": cfg.seed, "timeout": cfg.timeout, "rounding": path.rounding,
               "host_fallback": path.kind == "host"}
        if path.kind == "switch":
            spec = (spec_factory or make_spec)(job_id, n_workers, path.encoding, path.cm, loss,
                                               members)
            installer.install(spec)
            coord.slot_diagnosis = installer.slot_missing(spec)
            job.update({"spec": spec_to_dict(spec), "switch": list(switch.data_addr)})
        coord.welcome(job, params0)
        coord.wait_ready(timeout=120.0)
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, desc=f"{name} x{n_workers}", unit="step",
                       dynamic_ncols=True, leave=False, file=sys.stderr)
        pending: dict[int, list] = {}
        totals = {"bytes_total": 0, "bytes_up": 0, "bytes_down": 0, "retransmissions": 0}

        def on_metrics(wid: int, rec: dict) -> None:
            got = pending.setdefault(rec["step"], [None] * n_workers)
            got[wid] = rec
            step = len(out.records) + 1
            while step in pending and all(r is not None for r in pending[step]):
                recs = pending.pop(step)
                row = _merge_step(recs, totals)
                out.records.append(row)
                if bar is not None:
                    bar.update(1)
                if step % steps_per_epoch == 0 or step == cfg.steps:
                    line = _epoch_line(step, steps_per_epoch, row, totals)
                    (bar.write(line) if bar is not None else log(line))
                if on_step is not None:
                    on_step(row, procs)
                step += 1
        coord.on_metrics = on_metrics
        coord.barrier("start")
        done = coord.wait_done(timeout=max(120.0, cfg.steps * 5.0), more=more_jobs)
        out.hashes = [done[w].get("hash") for w in range(n_workers)]
        out.per_worker = {w: {k: v for k, v in done[w].items() if k not in ("t", "wid")}
                          for w in range(n_workers)}
        if len(set(out.hashes)) != 1:
            raise JobAborted(f"models diverged: worker model hashes {out.hashes}")
    except KeyboardInterrupt:
        coord.abort("interrupted by the user (Ctrl-C)")
        raise JobAborted("interrupted by the user (Ctrl-C)") from None
    except JobAborted as e:
        coord.abort(str(e))
        raise
    finally:
        if bar is not None:
            bar.close()
        if spec is not None:
            out.counters = installer.counters()
            installer.remove(spec.job_id)
        _teardown(coord, procs)
    out.seconds = time.monotonic() - t0
    out.summary = summarize(out.records, cfg, n_workers, path.label, out.hashes[0],
                            out.per_worker.get(0, {}).get("final"))
    return out


def _merge_step(recs: list[dict], totals: dict) -> dict:
    row = {"step": recs[0]["step"],
           "train_loss": float(np.mean([r["train_loss"] for r in recs]))}
    for k in ("test_loss", "test_accuracy", "test_objective"):
        if recs[0].get(k) is not None:
            row[k] = recs[0][k]
    for k in ("bytes_up", "bytes_down", "packets_up", "packets_down", "retransmissions"):
        row[k] = int(sum(r.get(k, 0) for r in recs))
    row["comm_s"] = float(max(r.get("comm_s", 0.0) for r in recs))
    row["step_s"] = float(max(r.get("step_s", 0.0) for r in recs))
    for k in ("bytes_up", "bytes_down", "retransmissions"):
        totals[k] += row[k]
    totals["bytes_total"] = totals["bytes_up"] + totals["bytes_down"]
    row["bytes_total"] = totals["bytes_total"]
    return row


def _epoch_line(step: int, spe: int, row: dict, totals: dict) -> str:
    acc = row.get("test_accuracy")
    acc_s = f"  accuracy {acc:.3f}" if acc is not None else \
        (f"  f-f* {row['test_loss']:.3g}" if row.get("test_loss") is not None else "")
    return (f"epoch {step / spe:5.1f} (step {step}): loss {row['train_loss']:.4f}{acc_s}  "
            f"up {totals['bytes_up'] / 1e6:.2f} MB  down {totals['bytes_down'] / 1e6:.2f} MB  "
            f"retransmissions {totals['retransmissions']}")


def steps_to_target(records: list[dict], target: float, key: str = "test_accuracy",
                    higher: bool = True) -> tuple[int | None, int | None]:
    """First step (and cumulative bytes there) where `key` reaches the target."""
    for r in records:
        v = r.get(key)
        if v is not None and (v >= target if higher else v <= target):
            return r["step"], r["bytes_total"]
    return None, None


def summarize(records, cfg, n, label, model_hash_, final) -> dict:
    last = records[-1] if records else {}
    s = {"compressor": cfg.compressor, "path": label, "workers": n, "steps": len(records),
         "final_train_loss": last.get("train_loss"),
         "bytes_up": sum(r["bytes_up"] for r in records),
         "bytes_down": sum(r["bytes_down"] for r in records),
         "packets_up": sum(r.get("packets_up", 0) for r in records),
         "packets_down": sum(r.get("packets_down", 0) for r in records),
         "retransmissions": sum(r["retransmissions"] for r in records),
         "model_hash": model_hash_}
    s["bytes_total"] = s["bytes_up"] + s["bytes_down"]
    if final:
        s.update({f"final_test_{k}": v for k, v in final.items()})
    return s


def run_allreduce(n_workers: int, switch, *, size: int, encoding: Encoding, cm: bool = False,
                  calls: int = 1, loss: float = 0.0, seed: int = 0, job_id: int = 1,
                  run_dir: str, window: int = DEFAULT_WINDOW, timeout: float = 10.0,
                  spawn=spawn_local_worker, coord_ip: str = "127.0.0.1",
                  log: Callable[[str], None] = print, rounding: str = "stochastic",
                  heartbeat_timeout: float = 4.0, spec_factory=None,
                  coord_port: int | None = None, more_jobs: bool = False) -> JobOutcome:
    """`calls` all-reduces of seeded random tensors by n worker processes; each worker dumps
    what it sent and received to run_dir/worker<i>.npz for an exact check (check_allreduce)."""
    from worker.worker_proc import spec_to_dict
    out = JobOutcome("allreduce", {"size": size, "encoding": Encoding(encoding).name, "cm": cm,
                                   "calls": calls, "loss": loss, "workers": n_workers})
    t0 = time.monotonic()
    installer = JobInstaller(switch)
    coord, procs = _start_job(n_workers, run_dir, spawn, coord_ip, log, heartbeat_timeout,
                              coord_port)
    spec = None
    try:
        members = [coord.members[w] for w in range(n_workers)]
        spec = (spec_factory or make_spec)(job_id, n_workers, encoding, cm, loss, members)
        installer.install(spec)
        coord.slot_diagnosis = installer.slot_missing(spec)
        coord.on_metrics = lambda wid, rec: None
        coord.welcome({"task": {"kind": "allreduce", "size": size, "calls": calls, "seed": seed,
                                "dump": os.path.abspath(run_dir)},
                       "spec": spec_to_dict(spec), "switch": list(switch.data_addr),
                       "window": window, "seed": seed, "timeout": timeout,
                       "rounding": rounding}, None)
        coord.wait_ready(timeout=120.0)
        coord.barrier("start")
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


def check_allreduce(run_dir: str, n_workers: int, calls: int, shift: int,
                    encoding: Encoding, cm: bool) -> list[str]:
    """Verify every call of a dumped all-reduce job; returns a list of problems (empty: exact).

    Without C_M: every worker's result equals, bit for bit, the decoded integer sum of the wire
    elements all workers sent. With C_M: every element is the sum rounded to one of its two
    neighbouring powers of two (the switch's random rounding), identical on every worker.
    """
    from nina.wire import nat8_to_int
    from worker import switch_encoding as se
    dumps = [np.load(os.path.join(run_dir, f"worker{w}.npz")) for w in range(n_workers)]
    problems = []
    for c in range(calls):
        exps = dumps[0][f"exponents{c}"]
        vals = dumps[0][f"values{c}"]
        size = vals.size
        for w, d in enumerate(dumps[1:], 1):
            if not np.array_equal(d[f"exponents{c}"], exps):
                problems.append(f"call {c}: worker {w} used other agreed exponents")
            if not np.array_equal(d[f"values{c}"].view(np.uint32), vals.view(np.uint32)):
                problems.append(f"call {c}: worker {w}'s result differs from worker 0's")
        ints = sum((nat8_to_int(d[f"sent{c}"], shift) if encoding == Encoding.NAT8
                    else d[f"sent{c}"]).astype(np.int64) for d in dumps)
        # independent agreement check: the agreed exponent is the max of the workers' own
        own = np.max([se.exponent_bytes(_chunks(d[f"x{c}"], encoding)) for d in dumps], axis=0)
        if not np.array_equal(own, exps):
            problems.append(f"call {c}: agreed exponents are not the max of the workers' own")
        if not cm:
            expect = se.decode_sums(ints, exps, shift).ravel()[:size]
            bad = np.flatnonzero(expect.view(np.uint32) != vals.view(np.uint32))
            if len(bad):
                i = int(bad[0])
                problems.append(f"call {c}: {len(bad)} elements differ from the exact sum, "
                                f"first at {i}: got {vals[i]!r}, expected {expect[i]!r}")
        else:
            scale = se.decode_sums(np.ones_like(ints), exps, shift).ravel()[:size].astype(float)
            got = vals.astype(np.float64) / scale
            a = np.abs(ints.ravel()[:size]).astype(np.float64)
            lo = np.where(a > 0, 2.0 ** np.floor(np.log2(np.maximum(a, 1))), 0)
            ok = ((np.abs(got) == lo) | (np.abs(got) == 2 * lo)) & \
                 ((np.sign(got) == np.sign(ints.ravel()[:size])) | (a == 0))
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                problems.append(f"call {c}: element {i} is {got[i]} units, not a neighbouring "
                                f"power of two of the exact sum {ints.ravel()[i]}")
    return problems


def _chunks(x: np.ndarray, encoding: Encoding) -> np.ndarray:
    from nina.wire import CAPACITY
    k = CAPACITY[Encoding(encoding)]
    X = np.zeros((-(-x.size // k), k), np.float32)
    X.ravel()[:x.size] = x
    return X
