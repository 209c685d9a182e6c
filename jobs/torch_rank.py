"""One rank of a PyTorch DDP job through the switch, as torch's own launcher starts it.

    torchrun --nproc-per-node 4 -m jobs.torch_rank --switch 10.0.0.254:48879 \\
        --grpc 10.0.0.254:9559 --comm nat8 --model digits --steps 200 --out runs/ddp

torchrun (or `nina train --framework torch`, which starts ranks the same way) sets RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; the ranks meet in the c10d TCP store there and form a
Gloo process group (rendezvous, DDP's initial broadcast, barriers). Gradients go through the
switch: every rank publishes its UDP address in the store, the installer (rank 0 through the
controller at --grpc, or with --installer launcher the process that launched the ranks)
installs the job and publishes its JobSpec, and each rank's DDP hook all-reduces its buckets
with that job's codec. The switch address and controller may also come from NINA_SWITCH /
NINA_GRPC, so a job spanning machines needs only torchrun's usual flags.

Exit status: 0 done (rank<r>.json in --out), 3 the rank failed (one line on stderr; the
reason is also put under nina/abort in the store so the other ranks stop instead of waiting).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from datetime import timedelta

from nina.cli_types import host_port
from worker.torch_ddp import COMMS, TorchConfig

JOIN_TIMEOUT = 120.0   # s for the store, the other ranks and the job install


def parser() -> argparse.ArgumentParser:
    from worker.torch_names import TORCH_MODELS
    p = argparse.ArgumentParser(
        prog="python -m jobs.torch_rank",
        description="One rank of a DDP job whose gradient buckets are summed by the NINA "
                    "switch (start it with torchrun, or let `nina train --framework torch` "
                    "start the ranks).")
    p.add_argument("--switch", type=host_port, metavar="IP:PORT",
                   default=os.environ.get("NINA_SWITCH"),
                   help="the switch's UDP data address (default $NINA_SWITCH)")
    p.add_argument("--grpc", metavar="IP:PORT", default=os.environ.get("NINA_GRPC"),
                   help="the switch's P4Runtime address, for rank 0's install (default "
                        "$NINA_GRPC)")
    p.add_argument("--installer", choices=["rank0", "launcher"], default="rank0",
                   help="who installs the job: rank 0 through --grpc (torchrun), or the "
                        "launcher that started the ranks and reads the store")
    p.add_argument("--job-id", type=int, default=int(os.environ.get("NINA_JOB_ID", "1")),
                   help="the job id rank 0 installs (default $NINA_JOB_ID or 1)")
    p.add_argument("--bind-ip", default=os.environ.get("NINA_BIND_IP"),
                   help="this rank's UDP address (default: the address routed to the switch)")
    p.add_argument("--out", default=os.environ.get("NINA_OUT", "."),
                   help="folder for rank<r>.jsonl (per step) and rank<r>.json (final)")
    p.add_argument("--task", choices=["train", "check"], default="train",
                   help="train: the model; check: DDP steps with integer-valued gradients whose "
                        "all-reduced mean must be exact through int32 (a deployment check)")
    p.add_argument("--model", choices=TORCH_MODELS, default=TorchConfig.model)
    p.add_argument("--comm", choices=COMMS, default=TorchConfig.comm,
                   help="gloo: DDP's own all-reduce (baseline); int32, nat8, nat8+cm: "
                        "through the switch")
    for f in fields(TorchConfig):
        if f.name in ("model", "comm"):
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"default {f.default}")
    return p


def config_argv(cfg: TorchConfig) -> list[str]:
    """The command-line flags that reproduce `cfg` (the launcher starts ranks with them)."""
    out = []
    for f in fields(TorchConfig):
        out += ["--" + f.name.replace("_", "-"), str(getattr(cfg, f.name))]
    return out


def _env_int(name: str) -> int:
    v = os.environ.get(name)
    if v is None or not v.isdigit():
        raise SystemExit(f"jobs.torch_rank: error: ${name} is not set: start the ranks with "
                         f"torchrun (or nina train --framework torch)")
    return int(v)


def open_store(rank: int, world: int):
    """The c10d TCP store at MASTER_ADDR:MASTER_PORT; rank 0 hosts it unless torchrun's agent
    already does (TORCHELASTIC_USE_AGENT_STORE)."""
    import torch.distributed as dist
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = _env_int("MASTER_PORT")
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    return dist.TCPStore(host, port, world, is_master=(rank == 0 and not agent),
                         timeout=timedelta(seconds=JOIN_TIMEOUT), wait_for_workers=False)


class Rank0Installer:
    """Rank 0 under torchrun: installs the job through the controller, removes it at the end."""

    def __init__(self, grpc: str, switch: tuple[str, int]):
        from switch.handles import ExternalSwitch, JobInstaller
        self.handle = ExternalSwitch(switch, grpc)
        self.installer = JobInstaller(self.handle)
        self.spec = None

    def install(self, spec) -> None:
        self.installer.install(spec)
        self.spec = spec

    def close(self) -> None:
        if self.spec is not None:
            self.installer.remove(self.spec.job_id)
        self.handle.stop()


def build_spec(job_id: int, world: int, comm: str, addrs, switch: tuple[str, int],
               spec_factory=None):
    """The JobSpec of the ranks' published addresses (a rack's spec_factory adds ports/MACs)."""
    from types import SimpleNamespace

    from jobs.runner import make_spec
    from worker.torch_ddp import CODECS
    enc, cm, _ = CODECS[comm]
    members = [SimpleNamespace(wid=r, udp=(a[0], int(a[1]))) for r, a in enumerate(addrs)]
    if spec_factory is not None:
        return spec_factory(job_id, world, enc, cm, 0.0, members)
    return make_spec(job_id, world, enc, cm, 0.0, members, switch_ip=switch[0],
                     switch_port=switch[1])


def run(args) -> dict:
    import torch.distributed as dist

    from worker import torch_ddp as td
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    cfg = TorchConfig(**{f.name: getattr(args, f.name) for f in fields(TorchConfig)})
    if cfg.comm != "gloo" and not args.switch:
        raise td.TorchJobError("--switch (or $NINA_SWITCH) is needed for comm " + cfg.comm)
    store = open_store(rank, world)
    try:
        dist.init_process_group("gloo", store=dist.PrefixStore("pg/", store), rank=rank,
                                world_size=world, timeout=timedelta(seconds=JOIN_TIMEOUT))
    except Exception as e:
        raise td.TorchJobError(f"process group: {str(e).splitlines()[0]}") from None
    installer, transport = None, None
    try:
        if cfg.comm == "gloo":
            comm = td.GlooComm(world)
        else:
            from worker.allreduce import AllReduceClient
            from worker.transport import UdpTransport
            bind = args.bind_ip or td.local_ip_towards(args.switch)
            transport = UdpTransport(args.switch, bind_ip=bind)
            td.publish_address(store, rank, transport.address)
            if rank == 0 and args.installer == "rank0":
                if not args.grpc:
                    raise td.TorchJobError("rank 0 installs the job: --grpc (or $NINA_GRPC) "
                                           "is needed")
                installer = Rank0Installer(args.grpc, args.switch)
                addrs = td.read_addresses(store, world, JOIN_TIMEOUT)
                spec = build_spec(args.job_id, world, cfg.comm, addrs, installer.handle.data_addr)
                installer.install(spec)
                td.publish_spec(store, spec)
            spec = td.wait_spec(store, JOIN_TIMEOUT)
            _, _, rounding = td.CODECS[cfg.comm]
            client = AllReduceClient(spec, rank, transport, window=cfg.window,
                                     seed=cfg.seed * 1000 + rank, rounding=rounding,
                                     peer_timeout=cfg.timeout,
                                     abort_check=lambda: td.store_abort_message(store))
            comm = td.SwitchComm(client, world)
        dist.barrier()
        if args.task == "check":
            return _check(cfg, rank, world, comm, args.out)
        t0 = time.monotonic()
        outcome = td.train(cfg, rank, world, comm, args.out,
                           log=lambda m: print(m, flush=True))
        wall = time.monotonic() - t0
        comm.close()
        hashes = [None] * world
        dist.all_gather_object(hashes, outcome.params_hash)
        if len(set(hashes)) != 1:
            raise td.TorchJobError(f"parameters differ between ranks after training: {hashes}")
        client = getattr(comm, "client", None)
        final = {"rank": rank, "world": world, "config": cfg.as_dict(),
                 "params_hash": outcome.params_hash, "identical_on_all_ranks": True,
                 "final_accuracy": outcome.final_accuracy, "model_size": outcome.model_size,
                 "wall_s": wall, "totals": client.total.as_dict() if client else None}
        with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
            json.dump(final, f, indent=1)
        dist.barrier()
        return final
    finally:
        if installer is not None:
            installer.close()
        if transport is not None:
            transport.close()


def _check(cfg, rank: int, world: int, comm, out_dir: str) -> dict:
    import torch.distributed as dist

    from worker import torch_ddp as td
    res = td.check_exact(cfg, rank, world, comm)
    comm.close()
    hashes = [None] * world
    dist.all_gather_object(hashes, res["params_hash"])
    res.update(rank=rank, world=world, comm=cfg.comm,
               identical_on_all_ranks=len(set(hashes)) == 1)
    with open(os.path.join(out_dir, f"rank{rank}.check.json"), "w") as f:
        json.dump(res, f, indent=1)
    dist.barrier()
    if not res["identical_on_all_ranks"]:
        raise td.TorchJobError(f"parameters differ between ranks after the check: {hashes}")
    if cfg.comm == "int32" and not res["exact"]:
        raise td.TorchJobError("; ".join(res["problems"][:3]))
    return res


def main(argv=None) -> int:
    from nina.jobmsg import JobAborted
    from worker.torch_ddp import KEY_ABORT, TorchJobError
    args = parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rank = os.environ.get("RANK", "?")
    try:
        final = run(args)
    except (TorchJobError, JobAborted, RuntimeError, OSError, ValueError) as e:
        msg = f"rank {rank}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        print(f"jobs.torch_rank: error: {msg}", file=sys.stderr, flush=True)
        try:   # tell the other ranks, who would otherwise wait for this one
            import torch.distributed as dist
            store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"),
                                  int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timedelta(seconds=2))
            if not store.check([KEY_ABORT]):
                store.set(KEY_ABORT, msg)
        except Exception:
            pass
        sys.stdout.flush()
        os._exit(3)   # never wait in Gloo's teardown for ranks that are gone
    if args.task == "check":
        what = ("exact: every averaged gradient equals the integer sum / world, bit for bit"
                if final["exact"] else "not exact (expected off int32): "
                + final["problems"][0])
        print(f"rank {rank}: check {final['comm']}: {final['steps']} DDP steps of "
              f"{final['elements']} integer-valued gradients: {what}; parameters identical "
              f"on all {final['world']} ranks", flush=True)
        os._exit(0)
    print(f"rank {rank}: done, final accuracy {final['final_accuracy']:.4f}, parameters "
          f"identical on all {final['world']} ranks (hash {final['params_hash']})", flush=True)
    sys.stdout.flush()
    os._exit(0)   # Gloo's destructor may wait for peers that already left


if __name__ == "__main__":
    sys.exit(main())
