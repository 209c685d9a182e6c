"""The job runner's PyTorch piece: start the ranks of a DDP job like torchrun does, install the
job from the c10d store, watch the ranks, merge their metrics.

The ranks are `python -m jobs.torch_rank` processes with torchrun's environment (RANK,
WORLD_SIZE, MASTER_ADDR/PORT); rank 0 hosts the c10d store. The runner joins that store as a
client: it reads the ranks' UDP addresses, installs the job through the switch's controller
(`--installer launcher`), publishes the JobSpec, and, when a rank dies, puts the reason under
nina/abort so the others stop at once instead of waiting out their timeouts. On a rack the
ranks run in the worker hosts (`spawn_rank`) and the store client connects from the
coordinator host (`store_context`), so the same code serves local mode and Mininet.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Callable

from nina.jobmsg import JobAborted
from nina.procs import REPO, free_port, stop_process
from switch.handles import JobInstaller
from worker.torch_names import CODECS

ABORT_GRACE = 15.0     # s the other ranks get to stop by themselves after a rank died
JOIN_TIMEOUT = 120.0   # s for the ranks to start, meet and publish their addresses


def spawn_local_rank(cmd: list[str], env: dict, rank: int, log_path: str) -> subprocess.Popen:
    """A rank on loopback (the default spawn_rank)."""
    with open(log_path, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO, env={**os.environ, **env})


def rank_command(cfg, *, rank: int, world: int, master: tuple[str, int], run_dir: str,
                 switch_addr: tuple[str, int] | None, job_id: int,
                 python: str = sys.executable, ifname: str = "lo") -> tuple[list[str], dict]:
    """(argv, environment) of one rank, as torchrun would start it."""
    from jobs.torch_rank import config_argv
    cmd = [python, "-m", "jobs.torch_rank", "--installer", "launcher", "--job-id", str(job_id),
           "--out", run_dir, *config_argv(cfg)]
    if switch_addr is not None:
        cmd += ["--switch", f"{switch_addr[0]}:{switch_addr[1]}"]
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
           "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]),
           "GLOO_SOCKET_IFNAME": ifname, "OMP_NUM_THREADS": str(cfg.threads),
           "PYTHONUNBUFFERED": "1"}
    return cmd, env


@dataclass
class TorchOutcome:
    name: str
    config: dict
    records: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    finals: list[dict] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    seconds: float = 0.0


def _error_line(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        if "jobs.torch_rank: error:" in line:
            return line.split("error:", 1)[1].strip()
    return " | ".join(lines[-3:])


class _Ranks:
    """The rank processes and what became of them."""

    def __init__(self, procs: list[subprocess.Popen], logs: list[str]):
        self.procs, self.logs = procs, logs

    def failed(self) -> str | None:
        for r, p in enumerate(self.procs):
            rc = p.poll()
            if rc not in (None, 0):
                why = _error_line(self.logs[r])
                how = f"signal {-rc}" if rc < 0 else f"code {rc}"
                return f"rank {r} exited with {how}" + (f": {why}" if why else "")
        return None

    def done(self) -> bool:
        return all(p.poll() == 0 for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p)


def _connect_store(master, ranks: _Ranks, timeout: float):
    """A client of rank 0's store, once rank 0 listens (probed with a plain TCP connect, so
    torch does not log a failed attempt)."""
    import socket

    import torch.distributed as dist
    deadline = time.monotonic() + timeout
    while True:
        why = ranks.failed()
        if why:
            raise JobAborted(why)
        try:
            socket.create_connection(master, timeout=1.0).close()
            return dist.TCPStore(master[0], master[1], is_master=False,
                                 timeout=timedelta(seconds=30))
        except OSError as e:   # rank 0 has not opened it yet
            if time.monotonic() > deadline:
                raise JobAborted(f"the ranks' c10d store at {master[0]}:{master[1]} did not "
                                 f"open within {timeout:.0f} s ({e})") from None
            time.sleep(0.3)


def _wait_addresses(store, world: int, ranks: _Ranks, timeout: float):
    from worker.torch_ddp import KEY_ADDR
    keys = [KEY_ADDR.format(r) for r in range(world)]
    deadline = time.monotonic() + timeout
    while not store.check(keys):
        why = ranks.failed()
        if why:
            raise JobAborted(why)
        if time.monotonic() > deadline:
            missing = [r for r, k in enumerate(keys) if not store.check([k])]
            raise JobAborted(f"ranks {missing} did not publish their UDP address within "
                             f"{timeout:.0f} s")
        time.sleep(0.1)
    return [tuple(json.loads(store.get(k))) for k in keys]


def run_torch_training(cfg, n: int, switch, *, run_dir: str, job_id: int = 1,
                       name: str | None = None, spawn_rank=spawn_local_rank,
                       master_ip: str = "127.0.0.1", rank_ifname: Callable[[int], str] | None = None,
                       store_context=contextlib.nullcontext, spec_factory=None,
                       python: str = sys.executable, log: Callable[[str], None] = print,
                       on_poll: Callable[[list, str], None] | None = None,
                       timeout: float | None = None) -> TorchOutcome:
    """Train cfg (worker.torch_ddp.TorchConfig) with n DDP ranks; switch: a SwitchHandle (not
    used for comm="gloo"). on_poll(procs, run_dir) runs while the ranks train (tests use it
    to kill a rank). Ends with JobAborted naming the first rank that failed."""
    from worker.torch_ddp import KEY_ABORT, publish_spec
    from jobs.torch_rank import build_spec
    os.makedirs(run_dir, exist_ok=True)
    name = name or cfg.comm
    master = (master_ip, free_port())
    use_switch = cfg.comm in CODECS
    data_addr = tuple(switch.data_addr) if use_switch else None
    procs, logs = [], []
    t0 = time.monotonic()
    for r in range(n):
        cmd, env = rank_command(cfg, rank=r, world=n, master=master, run_dir=run_dir,
                                switch_addr=data_addr, job_id=job_id, python=python,
                                ifname=rank_ifname(r) if rank_ifname else "lo")
        logs.append(os.path.join(run_dir, f"rank{r}.log"))
        procs.append(spawn_rank(cmd, env, r, logs[-1]))
    ranks = _Ranks(procs, logs)
    out = TorchOutcome(name, {**cfg.as_dict(), "compressor": cfg.comm, "workers": n,
                              "job_id": job_id})
    installer = JobInstaller(switch) if use_switch else None
    spec, store = None, None
    budget = timeout or (JOIN_TIMEOUT + 60.0 + cfg.steps * 20.0)
    try:
        with store_context():
            store = _connect_store(master, ranks, JOIN_TIMEOUT)
        if use_switch:
            addrs = _wait_addresses(store, n, ranks, JOIN_TIMEOUT)
            spec = build_spec(job_id, n, cfg.comm, addrs, data_addr, spec_factory)
            installer.install(spec)
            publish_spec(store, spec)
        deadline = time.monotonic() + budget
        while not ranks.done():
            why = ranks.failed()
            if why is None and time.monotonic() > deadline:
                why = f"the job did not finish within {budget:.0f} s"
            if why:
                with contextlib.suppress(Exception):
                    store.set(KEY_ABORT, why)
                end = time.monotonic() + ABORT_GRACE
                while time.monotonic() < end and any(p.poll() is None for p in procs):
                    time.sleep(0.1)
                raise JobAborted(why)
            if on_poll is not None:
                on_poll(procs, run_dir)
            time.sleep(0.2)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            store.set(KEY_ABORT, "interrupted by the user (Ctrl-C)")
        raise JobAborted("interrupted by the user (Ctrl-C)") from None
    finally:
        ranks.stop()
        if spec is not None:
            out.counters = installer.counters()
            installer.remove(spec.job_id)
    out.seconds = time.monotonic() - t0
    out.finals = [json.load(open(os.path.join(run_dir, f"rank{r}.json"))) for r in range(n)]
    per_rank = [[json.loads(line) for line in open(os.path.join(run_dir, f"rank{r}.jsonl"))]
                for r in range(n)]
    out.records = merge_steps(per_rank, cfg.batch)
    out.summary = summarize_torch(out, cfg, n)
    return out


def merge_steps(per_rank: list[list[dict]], batch: int) -> list[dict]:
    """One row per step over the ranks: the slowest rank's times, everybody's bytes."""
    rows, total = [], 0
    n = len(per_rank)
    for recs in zip(*per_rank):
        r0 = recs[0]
        up, down = sum(r["bytes_up"] for r in recs), sum(r["bytes_down"] for r in recs)
        total += up + down
        step_s = max(r["step_s"] for r in recs)
        rows.append({
            "step": r0["step"], "train_loss": sum(r["loss"] for r in recs) / n, "lr": r0["lr"],
            "test_accuracy": r0["accuracy"], "step_s": step_s,
            "compute_s": sum(r["compute_s"] for r in recs) / n,
            "comm_s": max(r["comm_s"] for r in recs),
            "exposed_comm_s": max(r["exposed_comm_s"] for r in recs),
            "overlap": sum(r["overlap"] for r in recs) / n, "buckets": r0["buckets"],
            "bytes_up": up, "bytes_down": down, "bytes_total": total,
            "retransmissions": sum(r["retransmissions"] for r in recs),
            "images_per_s": n * batch / step_s if step_s > 0 else 0.0,
            "train_s": max(r["train_s"] for r in recs)})
    return rows


def summarize_torch(out: TorchOutcome, cfg, n: int) -> dict:
    recs = out.records
    hashes = {f["params_hash"] for f in out.finals}
    if len(hashes) != 1:
        raise JobAborted(f"parameters differ between ranks: {sorted(hashes)}")
    k = len(recs) or 1
    mean = lambda key: sum(r[key] for r in recs) / k   # noqa: E731
    return {"compressor": cfg.comm, "path": "gloo" if cfg.comm == "gloo" else "switch",
            "model": cfg.model, "workers": n, "steps": len(recs),
            "final_test_accuracy": out.finals[0]["final_accuracy"],
            "final_train_loss": recs[-1]["train_loss"] if recs else None,
            "bytes_up": sum(r["bytes_up"] for r in recs),
            "bytes_down": sum(r["bytes_down"] for r in recs),
            "bytes_total": recs[-1]["bytes_total"] if recs else 0,
            "bytes_counted": "ring bound 2(n-1)/n x 4 B/element" if cfg.comm == "gloo"
            else "UDP payloads sent/received",
            "retransmissions": sum(r["retransmissions"] for r in recs),
            "train_s": recs[-1]["train_s"] if recs else 0.0,
            "step_ms": 1e3 * mean("step_s"), "compute_ms": 1e3 * mean("compute_s"),
            "comm_ms": 1e3 * mean("comm_s"), "exposed_comm_ms": 1e3 * mean("exposed_comm_s"),
            "overlap": mean("overlap"), "images_per_s": mean("images_per_s"),
            "model_size": out.finals[0]["model_size"], "model_hash": hashes.pop()}


def time_to_target(records: list[dict], target: float) -> tuple[int | None, float | None,
                                                                  int | None]:
    """(step, training seconds, cumulative bytes) where test accuracy first reaches target."""
    for r in records:
        if r.get("test_accuracy") is not None and r["test_accuracy"] >= target:
            return r["step"], r["train_s"], r["bytes_total"]
    return None, None, None


def plot_wallclock(folder: str, runs: dict[str, list[dict]]) -> str:
    """time.png: test accuracy and training loss against training seconds, one line per run
    (steps and bytes are on the x axes of plot_runs' figures)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, rs in runs.items():
        acc = [(r["train_s"], r["test_accuracy"]) for r in rs if r.get("test_accuracy") is not None]
        if acc:
            axes[0].plot(*zip(*acc), label=name, lw=1.2)
        axes[1].plot([r["train_s"] for r in rs], [r["train_loss"] for r in rs], label=name,
                     lw=0.8)
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("training loss (minibatch, mean over ranks)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training time, s (evaluation excluded)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(folder, "time.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def compare_torch(comms: list[str], base, n: int, switch, *, folder: str, target: float,
                  log=print, next_job_id=None, **kw) -> list[dict]:
    """The same DDP job once per comm on one switch; rows for format_torch_table."""
    from jobs.runfolder import write_comparison, write_run
    rows, runs = [], {}
    for i, c in enumerate(comms):
        cfg = replace(base, comm=c)
        sub = os.path.join(folder, c.replace("+", "_")) if len(comms) > 1 else folder
        log(f"[{i + 1}/{len(comms)}] {c}: {n} ranks, {cfg.model}, {cfg.steps} steps")
        job_id = next_job_id() if next_job_id is not None else i + 1
        out = run_torch_training(cfg, n, switch, run_dir=sub, job_id=job_id, log=log, **kw)
        write_run(sub, out.config, out.records, out.summary)
        plot_wallclock(sub, {c: out.records})
        st, ts, sb = time_to_target(out.records, target)
        rows.append({**out.summary, "steps_to_target": st, "seconds_to_target": ts,
                     "bytes_to_target": sb, "seconds": round(out.seconds, 1), "folder": sub})
        runs[c] = out.records
        log(f"    parameters identical on all ranks (hash {out.summary['model_hash']}); "
            f"final accuracy {out.summary['final_test_accuracy']:.4f}")
    if len(comms) > 1:
        write_comparison(folder, rows, runs)
        plot_wallclock(folder, runs)
    return rows


def format_torch_table(rows: list[dict], target: float) -> str:
    """One line per comm; ratios against the first row (the Gloo baseline when given)."""
    base = rows[0]
    head = (f"{'comm':<9}{'final acc':>10}{'steps@' + format(target, 'g'):>11}"
            f"{'s@tgt':>8}{'MB@tgt':>8}{'x time':>7}{'x steps':>8}{'step ms':>8}"
            f"{'compute':>8}{'comm':>7}{'exposed':>8}{'overlap':>8}{'img/s':>7}{'MB total':>9}"
            f"{'retx':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        st, ts, sb = r["steps_to_target"], r["seconds_to_target"], r["bytes_to_target"]
        xt = f"{ts / base['seconds_to_target']:.2f}" if ts and base["seconds_to_target"] else "-"
        xs = f"{st / base['steps_to_target']:.2f}" if st and base["steps_to_target"] else "-"
        lines.append(
            f"{r['compressor']:<9}{r['final_test_accuracy']:>10.4f}{(st or '-'):>11}"
            f"{(format(ts, '.1f') if ts else '-'):>8}{(format(sb / 1e6, '.1f') if sb else '-'):>8}"
            f"{xt:>7}{xs:>8}{r['step_ms']:>8.1f}{r['compute_ms']:>8.1f}{r['comm_ms']:>7.1f}"
            f"{r['exposed_comm_ms']:>8.1f}{r['overlap']:>8.0%}{r['images_per_s']:>7.0f}"
            f"{r['bytes_total'] / 1e6:>9.1f}{r['retransmissions']:>7}")
    lines.append(f"x time / x steps: training time / steps to test accuracy {target:g}, relative "
                 f"to {base['compressor']}. Times per step (ms, means): step = slowest rank; "
                 f"compute = step minus exposed comm; comm = all-reduce busy time of the "
                 f"buckets; exposed = backward's wait after its last bucket; overlap = share "
                 f"of comm that ran while backward still computed. Bytes: all ranks, up + down "
                 f"(UDP payloads through the switch; gloo: the ring bound).")
    return "\n".join(lines)
