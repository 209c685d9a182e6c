"""`nina demo`: the project's main job in one command, on a rack.

A rack of N worker hosts and the NINA switch (Mininet when root and Mininet are there, else
processes on loopback, saying why), a short C_nat training job and the same job with the INT32
baseline on that rack, then the summary table and where everything went: one run folder with
the per-job metrics and plots, the switch's per-packet trace (switch.trace, read by
`nina trace summary`) and the per-port pcaps.

With --switch/--grpc the demo runs on a switch someone else started instead (the switch service
of docker-compose.yml), and with --external-workers its coordinator waits at --coord-bind for
worker processes started elsewhere (the worker services) instead of starting its own.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from nina.cli_types import grpc_address, host_port, positive_int, probability, worker_count
from topology.modes import add_mode_arg

EPILOG = """examples:
  nina demo                          # 4 workers, Mininet rack as root, else local
  nina demo --mode local --workers 2 --steps 60
  nina demo --compressors nat,nat+cm,int32
  nina trace summary runs/<time>-demo   # the switch's view of the demo's packets
on a switch and workers started elsewhere (docker-compose.yml does this):
  nina demo --switch 10.0.0.2:48864 --grpc 10.0.0.2:9559 \\
            --external-workers --coord-bind 0.0.0.0:5555"""


def register(subparsers) -> None:
    from worker.models import MODELS
    d = subparsers.add_parser(
        "demo", help="the main job: C_nat vs the INT32 baseline on a rack, with a summary",
        description="Starts a rack (Mininet when root and Mininet is installed, else local\n"
                    "processes on loopback), trains the same MLP on digits with natural\n"
                    "compression (NAT8) and with the INT32 baseline through its switch, and\n"
                    "prints a summary table (accuracy, bytes and packets each way,\n"
                    "retransmissions, time) and the paths of the run folder, switch trace,\n"
                    "pcaps and plots.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arg(d)
    d.add_argument("--workers", type=worker_count, default=4, help="worker hosts (default 4)")
    d.add_argument("--steps", type=positive_int, default=150, help="steps per job (default 150)")
    d.add_argument("--model", choices=MODELS, default="mlp", help="default mlp")
    d.add_argument("--loss", type=probability, default=0.0, metavar="P",
                   help="switch loss simulator: drop each update with probability P")
    d.add_argument("--compressors", default="nat,int32",
                   help="what to compare (default nat,int32; e.g. nat,nat+cm,int32)")
    d.add_argument("--out", help="run folder (default <runs-dir>/<time>-demo)")
    d.add_argument("--runs-dir", default="runs", help="parent of the default run folder")
    d.add_argument("--no-trace", action="store_true", help="no switch trace (faster)")
    d.add_argument("--no-pcap", action="store_true", help="no per-port packet captures")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = d.add_argument_group("a switch and workers started elsewhere (docker-compose.yml)")
    g.add_argument("--switch", type=host_port, metavar="HOST:PORT",
                   help="use this running switch's UDP data address instead of a rack "
                        "(needs --grpc)")
    g.add_argument("--grpc", type=grpc_address, metavar="HOST:PORT",
                   help="that switch's P4Runtime address")
    g.add_argument("--bmv2-json", metavar="FILE",
                   help="push this BMv2 JSON with the P4Info when the switch (BMv2) has no "
                        "pipeline yet")
    g.add_argument("--macs-from-arp", action="store_true",
                   help="put the workers' and the switch's MACs, from this host's ARP table, "
                        "in the job (a switch that rewrites Ethernet: BMv2 on a docker network)")
    g.add_argument("--external-workers", action="store_true",
                   help="start no workers: wait for --workers worker processes "
                        "(python -m worker.worker_proc --coord tcp://HOST:PORT --serve)")
    g.add_argument("--coord-bind", type=host_port, default=("0.0.0.0", 5555), metavar="IP:PORT",
                   help="where the coordinator listens for external workers "
                        "(default 0.0.0.0:5555)")
    g.add_argument("--exact", type=positive_int, default=None, metavar="N",
                   help="first all-reduce N random elements per worker (NAT8, then INT32) "
                        "through the switch and check every result bit for bit against the "
                        "exact sum of what the workers sent (the workers must see the run "
                        "folder at the same path: compose's runs volume does that)")
    d.set_defaults(func=cmd_demo)


def _fail(msg: str) -> int:
    print(f"nina demo: error: {msg}", file=sys.stderr)
    return 2


def cmd_demo(args) -> int:
    if not [c for c in args.compressors.split(",") if c.strip()]:
        return _fail(f"--compressors {args.compressors!r} names no compressor")
    if args.switch or args.grpc:
        if not (args.switch and args.grpc):
            return _fail("--switch and --grpc go together (data address and P4Runtime)")
        return _external_demo(args)
    if args.external_workers:
        return _fail("--external-workers needs the switch they send to: --switch and --grpc")
    if args.exact:
        return _fail("--exact is for a switch started elsewhere (--switch/--grpc); on a rack "
                     "`nina rack --run allreduce` checks all-reduces exactly")
    return _rack_demo(args)


def _rack_demo(args) -> int:
    from topology.rack_cli import make_rack
    from topology.rackbase import RackError
    from jobs.demo import run_demo
    from jobs.runfolder import new_run_dir
    folder = os.path.abspath(new_run_dir("demo", args.out, args.runs_dir))
    rack_args = argparse.Namespace(mode=args.mode, workers=args.workers, bw=None, delay=0.0,
                                   jitter=0.0, loss=0.0, dup=0.0, reorder=0.0,
                                   switch="embedded", run_dir=folder, no_trace=args.no_trace,
                                   pcap=not args.no_pcap)
    try:
        rack = make_rack(rack_args)
    except ValueError as e:
        return _fail(str(e))
    args.out = folder
    rc = 2
    try:
        with rack:
            rc = run_demo(args, switch=rack, spawn=rack.spawn_worker,
                          coordinator=rack.coordinator_factory())
            rack.reap_finished()
    except RackError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted: rack removed", file=sys.stderr)
        return 130
    if rc == 0:
        _print_outputs(folder, rack.mode, args)
    return rc


def _print_outputs(folder: str, mode: str, args) -> None:
    """The switch-side outputs, once the rack is down (the trace is complete then)."""
    from switch.trace_file import TRACE_NAME
    trace = os.path.join(folder, TRACE_NAME)
    rel = os.path.relpath(folder)
    where = rel if not rel.startswith("..") else folder
    if os.path.exists(trace):
        from nina.decisions import TRACE_DTYPE
        n = os.path.getsize(trace) // TRACE_DTYPE.itemsize
        print(f"switch trace: {trace} ({n} packet records)")
    elif not args.no_trace:
        print(f"switch trace: none written (see {folder}/switch*.log)")
    pcaps = sorted(glob.glob(os.path.join(folder, "pcap", "*.pcap")))
    if pcaps:
        what = ("one per switch port, the last is the coordinator's" if mode == "mininet"
                else "the switch's loopback traffic")
        print(f"pcaps ({what}): {os.path.dirname(pcaps[0])}/ "
              + " ".join(os.path.basename(p) for p in pcaps))
    elif not args.no_pcap:
        print("pcaps: none (" + ("local mode captures loopback only as root with tcpdump"
                                 if mode == "local" else "tcpdump did not run") + ")")
    if os.path.exists(trace):
        print(f"next: nina trace summary {where}    (or: make trace)")


def _external_demo(args) -> int:
    from switch.handles import ExternalSwitch
    from nina.jobmsg import JobAborted
    from jobs.demo import run_demo
    from jobs.runner import external_worker
    from jobs.runfolder import new_run_dir
    folder = os.path.abspath(new_run_dir("demo", args.out, args.runs_dir))
    args.out = folder
    print(f"using the switch at {args.switch[0]}:{args.switch[1]} (P4Runtime {args.grpc})")
    try:
        switch = ExternalSwitch(args.switch, args.grpc, args.bmv2_json)
    except JobAborted as e:
        return _fail(str(e))
    kw = {}
    if args.external_workers:
        kw = {"spawn": external_worker, "coord_ip": args.coord_bind[0],
              "coord_port": args.coord_bind[1]}
    if args.macs_from_arp:
        kw["spec_factory"] = arp_spec_factory(switch.data_addr[0])
    try:
        rc = _exact_checks(args, switch, folder, kw) if args.exact else 0
        if rc == 0:
            rc = run_demo(args, switch=switch, **kw)
    finally:
        switch.stop()
    if rc == 0:
        print("switch trace: wherever the switch writes it (docker-compose.yml: $NINA_TRACE, "
              "default runs/compose-switch/switch.trace; nina trace summary <its folder>)")
    return rc


EXACT_JOB_IDS = {"nat8": 101, "int32": 102}   # apart from the training jobs' 1, 2, ...


def _exact_checks(args, switch, folder: str, kw: dict) -> int:
    """All-reduces of seeded random tensors (NAT8, then INT32) on the demo's workers, each
    result checked bit for bit; the workers stay for the training jobs (more_jobs)."""
    from nina.wire import Encoding
    from jobs.check import check_allreduce
    from jobs.runner import run_allreduce
    from nina.jobmsg import JobAborted
    for name, job_id in EXACT_JOB_IDS.items():
        enc = Encoding.NAT8 if name == "nat8" else Encoding.INT32
        run_dir = os.path.join(folder, f"exact-{name}")
        os.makedirs(run_dir, exist_ok=True)
        print(f"exact check: {args.workers} workers all-reduce {args.exact} elements, {name} "
              f"(job {job_id})", flush=True)
        try:
            out = run_allreduce(args.workers, switch, size=args.exact, encoding=enc,
                                calls=1, job_id=job_id, run_dir=run_dir, more_jobs=True,
                                log=lambda *a: None, **kw)
        except JobAborted as e:
            return _fail(f"exact check ({name}): {e}")
        problems = check_allreduce(run_dir, args.workers, 1, out.config["shift"], enc, False,
                                   seed=0, size=args.exact)   # run_allreduce's default seed
        if problems:
            print(f"WRONG: {name}: " + "; ".join(problems[:3]), flush=True)
            return 1
        print(f"EXACT: {name}: every worker's result equals the exact sum of what the "
              f"workers sent ({run_dir})", flush=True)
    return 0


def read_arp(path: str = "/proc/net/arp") -> dict[str, str]:
    """IP -> MAC of this host's complete ARP entries."""
    out = {}
    try:
        with open(path) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if len(cols) >= 4 and cols[2] != "0x0" and cols[3] != "00:00:00:00:00:00":
                    out[cols[0]] = cols[3].lower()
    except OSError:
        pass
    return out


def arp_spec_factory(switch_ip: str, arp=read_arp):
    """A spec_factory (jobs.runner.run_training) for a switch on the same L2 network as the
    coordinator: the workers' and the switch's MACs from the ARP table, which their TCP
    connections (coordination, P4Runtime) have filled by the time a job is installed."""
    from dataclasses import replace

    from nina.jobmsg import JobAborted
    from jobs.runner import make_spec

    def factory(job_id, n, encoding, cm, loss, members):
        spec = make_spec(job_id, n, encoding, cm, loss, members, switch_ip=switch_ip)
        table = arp()
        missing = [w.ip for w in spec.workers if w.ip not in table]
        if switch_ip not in table:
            missing.append(f"{switch_ip} (the switch)")
        if missing:
            raise JobAborted(f"no ARP entry for {', '.join(missing)}: --macs-from-arp needs the "
                             f"workers and the switch on this host's Ethernet segment")
        workers = tuple(replace(w, mac=table[w.ip]) for w in spec.workers)
        return replace(spec, workers=workers, switch_mac=table[switch_ip])
    return factory
