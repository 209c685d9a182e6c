"""A worker process: joins the coordinator, gets its id and job, then trains or all-reduces.

    python -m worker.worker_proc --coord tcp://127.0.0.1:PORT [--ip 127.0.0.1] [--rank R]

A worker started by the coordinator does one job. A worker started by someone else (a
container of docker-compose.yml, another machine) joins a coordinator listening at a fixed
address and, with --serve, stays for the coordinator's next job (e.g. the demo's INT32 run
after its C_nat run) until a job ends without announcing another.

Tasks (sent by the coordinator in the welcome):
- "train": Algorithm 1 (worker/train.py) for cfg.steps steps; per-step metrics to the
  coordinator; at the end a hash of the model (all workers must agree bit for bit). With a
  gossip algorithm (cfg.algorithm) the worker gossips with its graph neighbours over its
  gossip socket (announced in the hello) instead; the models then differ per worker.
- "allreduce": `calls` all-reduces of a seeded random tensor; with `dump` set, what was sent and
  received goes to an npz file so a checker can verify the switch's sums exactly.
Exit status: 0 done, 2 the job was aborted or failed (the reason is on stderr and was sent to
the coordinator).
"""
from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import time

import numpy as np

from nina.config import JobSpec
from nina.procs import die_with_parent, memory_bytes, reset_peak_memory


def task_tensor(size: int, seed: int, wid: int, call: int) -> np.ndarray:
    """The allreduce task's input: normal values with a different scale per 1000 elements, so
    chunks have different exponents."""
    rng = np.random.default_rng([seed, wid, call])
    scale = np.exp(rng.uniform(-8, 8, -(-size // 1000))).repeat(1000)[:size]
    return (rng.standard_normal(size) * scale).astype(np.float32)


def run(link, welcome: dict, blob: bytes | None, udp, gather, gossip_net=None) -> dict:
    from worker.allreduce import AllReduceClient
    from worker.train import TrainConfig, Trainer, make_communicator, plan
    wid, n = welcome["wid"], welcome["n"]
    task = welcome["task"]
    spec = JobSpec.from_dict(welcome["spec"]) if welcome.get("spec") else None
    client = None
    if spec is not None:
        udp.switch = tuple(welcome["switch"])
        client = AllReduceClient(spec, wid, udp, window=welcome.get("window", 32),
                                 seed=welcome.get("seed", 0) * 1000 + wid,
                                 rounding=welcome.get("rounding", "stochastic"),
                                 peer_timeout=welcome.get("timeout", 10.0),
                                 abort_check=link.poll_abort,
                                 first_rounds=welcome.get("first_rounds"))
    if welcome.get("host_fallback"):
        gather.timeout = welcome.get("timeout", 10.0)
        gather.set_identity(wid, n)
        gather.connect({int(k): tuple(v) for k, v in welcome["peers"].items()})
    trainer = None
    if task["kind"] == "train":   # data and model before the start barrier: steps start together
        cfg = TrainConfig.from_dict(task["config"])
        path = plan(cfg.compressor) if cfg.algorithm == "allreduce" else None
        if path is None:
            from worker.gossip_graph import make_graph
            graph = make_graph(cfg.topology, n, seed=cfg.seed, degree=cfg.degree)
            gossip_net.timeout = welcome.get("timeout", 10.0)
            gossip_net.connect(wid, {j: tuple(welcome["gossip_peers"][str(j)])
                                     for j in graph.neighbours(wid)})
        params = None if blob is None else np.frombuffer(blob, np.float32).copy()
        comm = make_communicator(cfg, path, wid, n, client=client, gather=gather,
                                 gossip_net=gossip_net)
        trainer = Trainer(cfg, wid, n, comm, params)
    # What is built so far (imports, the client, the model and data) lives for the job: keep
    # it out of the cyclic collector, whose full passes over the ~10^5 objects numba, numpy
    # and torch leave stalled a worker for tens of ms mid-call, past the 50 ms RTO floor
    gc.freeze()
    link.send({"t": "ready"})
    link.barrier("start")
    if trainer is None:
        return _allreduce_task(link, client, task, wid)
    from nina.jobmsg import JobAborted
    from worker.models import model_hash
    for t in range(cfg.steps):
        rec = trainer.step(t)
        link.send({"t": "metrics", "rec": rec})
        reason = link.poll_abort()
        if reason:
            raise JobAborted(reason)
    out = {"hash": model_hash(trainer.params),
           "final": trainer.evaluate() if wid == 0 or trainer.comm.decentralized else None}
    if trainer.comm.decentralized:   # the job's bytes per edge, as this worker counted them
        out["edges"] = {str(j): {"bytes_out": e.bytes_out, "bytes_in": e.bytes_in,
                                 "datagrams_out": e.datagrams_out, "resent": e.resent}
                        for j, e in gossip_net.edges.items()}
    return out


def _allreduce_task(link, client, task, wid) -> dict:
    out = {"calls": []}
    dump = task.get("dump")
    saved = {}
    for c in range(task["calls"]):
        x = task_tensor(task["size"], task.get("seed", 0), wid, c)
        # every call starts together (as the start barrier starts the first): a call's time
        # is the all-reduce's, not a wait for workers still checking or making their input
        if c:
            link.barrier(f"call {c}")
        # the call's own memory: the peak resident set above what the process held with its
        # input in hand (inputs, imports and earlier calls' garbage excluded)
        measured = reset_peak_memory()
        before = memory_bytes().get("rss", 0)
        r = client.allreduce(x, record=bool(dump))
        stats = r.stats.as_dict()
        if measured:
            stats["peak_extra_bytes"] = memory_bytes().get("peak", 0) - before
        out["calls"].append(stats)
        if dump:
            saved.update({f"x{c}": x, f"values{c}": r.values, f"sent{c}": r.sent,
                          f"exponents{c}": r.exponents})
        link.send({"t": "metrics", "rec": {"call": c, **stats}})
    if dump:
        np.savez(os.path.join(dump, f"worker{wid}.npz"), **saved)
    return out


HELLO_REPEAT = 2.0   # s between hellos of a --serve worker still waiting for its welcome


def _join(link, hello: dict, timeout: float, repeat: float | None):
    """Say hello and wait for the welcome. With `repeat`, say it again every `repeat` s: a
    hello that reached the previous job's coordinator as it closed is lost (the coordinator
    counts a repeated hello once)."""
    from nina.jobmsg import JobAborted
    deadline = time.monotonic() + timeout
    while True:
        link.send(hello)
        left = deadline - time.monotonic()
        try:
            return link.expect("welcome", timeout=max(0.1, min(left, repeat or left)))
        except JobAborted:
            if link.abort_reason or repeat is None or time.monotonic() >= deadline:
                raise


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="A NINA worker process (started by the coordinator,"
                                             " or by hand/compose with a fixed --coord).")
    ap.add_argument("--coord", required=True, help="the coordinator's zmq endpoint tcp://ip:port")
    ap.add_argument("--ip", default="127.0.0.1", help="address for this worker's UDP and TCP "
                                                      "sockets (default 127.0.0.1)")
    ap.add_argument("--udp-port", type=int, default=0, help="UDP port (default: any free one)")
    ap.add_argument("--rank", type=int, default=None, help="ask for this worker id")
    ap.add_argument("--join-timeout", type=float, default=60.0,
                    help="seconds to wait for the coordinator's welcome (default 60)")
    ap.add_argument("--serve", action="store_true",
                    help="stay for the coordinator's next job while it announces one")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    die_with_parent()
    while True:
        rc, more = _one_job(a)
        if rc != 0 or not (a.serve and more):
            return rc


def _one_job(a) -> tuple[int, bool]:
    """Join, run and leave one job: (exit status, whether the coordinator has another)."""
    from worker.allreduce import Aborted, SlotStalled
    from worker.train import Diverged
    from nina.jobmsg import JobAborted
    from worker.link import WorkerLink
    from worker.allgather import AllGather
    from worker.gossip_net import GossipNet
    from worker.transport import UdpTransport

    import worker.train  # noqa: F401  (scikit-learn loads later, only for training tasks)
    udp = UdpTransport(("127.0.0.1", 0), bind_ip=a.ip, bind_port=a.udp_port)
    gather = AllGather(0, 1, ip=a.ip)
    gossip_net = GossipNet(bind_ip=a.ip)
    link = WorkerLink(a.coord, timeout=a.join_timeout)
    hello = {"t": "hello", "udp": list(udp.address), "gather": list(gather.address),
             "gossip": list(gossip_net.address), "pid": os.getpid(),
             "host": socket.gethostname()}
    if a.rank is not None:
        hello["rank"] = a.rank
    wid = "?"
    try:
        welcome, blob = _join(link, hello, a.join_timeout, HELLO_REPEAT if a.serve else None)
        wid = link.wid = welcome["wid"]
        link.start_heartbeat()
        result = run(link, welcome, blob, udp, gather, gossip_net)
        link.send({"t": "done", **result})
        bye, _ = link.expect("bye", timeout=30.0)
        return 0, bool(bye.get("more"))
    except KeyboardInterrupt:
        return 130, False   # Ctrl-C reaches the whole process group; the coordinator reports it
    except (JobAborted, Aborted) as e:
        print(f"worker {wid}: job aborted: {link.abort_reason or e}", file=sys.stderr)
        return 2, False
    except Exception as e:  # every failure goes to the coordinator as one line
        msg = str(e) or type(e).__name__
        report = {"t": "error", "message": msg}
        if isinstance(e, SlotStalled):
            report["stall"] = {"slot": e.slot, "ver": e.ver}
        if isinstance(e, Diverged):
            report["diverged"] = True
        try:
            link.send(report)
            time.sleep(0.2)   # let the message leave before the socket closes
        except Exception:
            pass
        print(f"worker {wid}: {msg}", file=sys.stderr)
        return 2, False
    finally:
        link.close()
        udp.close()
        gather.close()
        gossip_net.close()


if __name__ == "__main__":
    sys.exit(main())
