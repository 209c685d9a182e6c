"""`nina train`, `nina allreduce` and `nina demo`: worker-side jobs from the command line."""
from __future__ import annotations

import argparse
import sys

from nina.config import DEFAULT_WINDOW
from nina.cli_types import (grpc_address, host_port, positive_float, positive_int,
                            probability, worker_count)
from jobs.compare import compare, default_target, format_table, open_switch
from jobs.train_args import add_train_args, compressor_specs, train_config

TRAIN_EPILOG = """compressors (--compressor SPEC / --compare LIST):
  in the switch: none (INT32, nearest rounding: the uncompressed baseline), int32 (INT32,
  stochastic rounding), nat (NAT8 natural compression), nat+cm (NAT8 up, C_M in the switch
  down); every other spec below is all-gathered by the hosts (nat9 goes through the switch).
  A spec is NAME or NAME:KEY=VALUE,KEY=VALUE; prefix ef+ adds error feedback.
  In a LIST, specs are separated by commas, semicolons or spaces; an item with "=" after a
  comma continues the spec before it, so "nat,dither_nat:s=4,p=inf,int32" is three specs.
{catalogue}
decentralized training (--algorithm exact | powergossip | choco; no switch aggregation):
  every worker keeps its own model, takes a local SGD step and gossips with its neighbours on
  --topology (ring, torus, complete, random) as UDP datagrams; exact sends whole models,
  powergossip rank-r power-iteration products of the neighbours' differences (--rank,
  --iterations), choco Choco-SGD with --compressor (default topk:k=0.01). The metrics are
  those of the averaged model, plus each worker's accuracy and the consensus distance.
examples:
  nina train --workers 4 --compressor nat --model mlp --steps 200
  nina train --compressor "dither_nat:s=4,p=inf" --steps 200
  nina train --workers 8 --algorithm powergossip --topology ring --rank 1 --steps 300
  nina train --compare none,int32,nat,nat+cm --steps 150 --target 0.93
  nina train --compare "none;dither_sta:s=8,p=2;dither_nat:s=4,p=inf" --model lsq
  nina train --compressor nat --loss 0.05 --steps 50"""


def compressor_catalogue(width: int = 96) -> str:
    """The compressors with their parameters and defaults, from the registry (one source)."""
    import textwrap
    from worker.compress import list_compressors
    lines = []
    for name, desc in list_compressors():
        lines += textwrap.wrap(f"{name}: {desc}", width, initial_indent="    ",
                               subsequent_indent="        ")
    return "\n".join(lines)



def add_switch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("switch (default: start a fresh embedded switch process)")
    g.add_argument("--mode", choices=["local"], default="local",
                   help="local: the switch and the workers are processes on loopback")
    g.add_argument("--switch", type=host_port, metavar="IP:PORT",
                   help="use a running switch: its UDP data address (needs --grpc)")
    g.add_argument("--grpc", type=grpc_address, metavar="IP:PORT",
                   help="the running switch's P4Runtime address")
    g.add_argument("--loss", type=probability, default=0.0, metavar="P",
                   help="switch loss simulator: drop each update with probability P")
    g.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW,
                   help=f"slots in flight per worker (default {DEFAULT_WINDOW})")
    g.add_argument("--timeout", type=positive_float, default=10.0,
                   help="seconds a slot may stay incomplete before the job fails (default 10)")


def register(subparsers) -> None:
    from jobs.torch_cli import EPILOG as TORCH_EPILOG
    p = subparsers.add_parser(
        "train", help="train a model with n worker processes through the switch",
        description="Quantized data-parallel SGD (Algorithm 1: worker compression, switch "
                    "aggregation, optional master compression) with real worker processes "
                    "and the embedded switch as a process, or decentralized SGD where the "
                    "workers gossip with their graph neighbours (--algorithm); writes a run "
                    "folder with metrics and plots.",
        epilog=TRAIN_EPILOG.format(catalogue=compressor_catalogue()) + "\n\n" + TORCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=worker_count, default=4, help="worker processes (default 4)")
    add_train_args(p)
    p.add_argument("--out", help="run folder (default runs/<timestamp>-<name>)")
    p.add_argument("--runs-dir", default="runs", help="parent of the default run folders")
    add_switch_args(p)
    p.set_defaults(func=cmd_train)

    a = subparsers.add_parser(
        "allreduce", help="all-reduce random tensors through the switch and check the sums",
        description="n worker processes all-reduce seeded random tensors through the switch; "
                    "every result is checked against the sum of the workers' inputs (rebuilt "
                    "from --seed; within the encoding's error bound, unbiased) and against the "
                    "exact sum of what the workers sent (bit for bit; with C_M: a neighbouring "
                    "power of two of it). docs/testing.md gives the bounds.")
    a.add_argument("--workers", type=worker_count, default=4, help="worker processes (default 4)")
    a.add_argument("--size", type=positive_int, default=100_000, help="elements per tensor")
    a.add_argument("--encoding", choices=["nat8", "int32"], default="nat8")
    a.add_argument("--cm", action="store_true", help="master compression in the switch (NAT8)")
    a.add_argument("--calls", type=positive_int, default=3, help="all-reduces per worker")
    a.add_argument("--seed", type=int, default=0, help="seed of the random tensors")
    a.add_argument("--out", help="folder for logs and dumps (default runs/<timestamp>-allreduce)")
    a.add_argument("--runs-dir", default="runs", help="parent of the default folders")
    add_switch_args(a)
    a.set_defaults(func=cmd_allreduce)
    # `nina demo` is registered by topology/demo_cli.py: it runs on a rack


def _fail(msg: str) -> int:
    print(f"nina: error: {msg}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    from nina.jobmsg import JobAborted
    if args.framework == "torch":
        from jobs.torch_cli import cmd_train_torch
        return cmd_train_torch(args, _fail)
    if args.algorithm != "allreduce" and (args.switch or args.grpc or args.loss):
        return _fail(f"--algorithm {args.algorithm} gossips between the workers: --switch, "
                     "--grpc and --loss are for --algorithm allreduce")
    try:
        specs = compressor_specs(args, args.workers)
    except ValueError as e:
        return _fail(str(e))
    base = train_config(args, args.window)
    target, key, higher = default_target(args.model)
    if args.target is not None:
        target = args.target
    try:
        results, folder = compare(specs, base, args.workers, args, target, key, higher)
    except (JobAborted, ValueError, OSError) as e:
        return _fail(str(e))
    if len(results) > 1:
        print(format_table(results, target, key))
    else:
        r = results[0]
        fin = r.get("final_test_accuracy") if key == "test_accuracy" else r.get("final_test_loss")
        what = "accuracy" if key == "test_accuracy" else "f - f*"
        reached = (f"{what} {target:g} reached at step {r['steps_to_target']}"
                   if r["steps_to_target"] else f"{what} {target:g} not reached")
        print(f"{r['compressor']} ({r['path']}): final test {what} {fin:.4g}; {reached}; "
              f"{r['bytes_up'] / 1e6:.2f} MB up, {r['bytes_down'] / 1e6:.2f} MB down "
              f"({r.get('bits_per_element_up', 0):.1f} / {r.get('bits_per_element_down', 0):.1f}"
              f" bits per element, payload {r.get('payload_bits_per_element_up', 0):.1f} / "
              f"{r.get('payload_bits_per_element_down', 0):.1f}); "
              f"{r['retransmissions']} retransmissions; {r['seconds']:.1f} s "
              f"({r['startup_s']:.1f} s start-up, {r['train_s']:.1f} s training)")
        from jobs.compare import format_parts
        print(format_parts(results))
    print(f"run folder: {folder}")
    return 0


def format_breakdown(per_worker: dict, encoding, cm: bool) -> str:
    """Where the bytes of every worker's calls went (nina.accounting), with bits per element;
    a line saying so if the parts do not add up to what the transport counted."""
    from nina import accounting as acc
    head = (f"{'worker':>6}{'dir':>5}{'payload':>9}{'padding':>9}{'headers':>9}{'parts':>7}"
            f"{'priming':>9}{'retx':>7}{'total B':>9}{'bits/elem':>10}{'payload':>8}")
    lines = ["bytes by part (UDP payloads; docs/workbench.md, Byte accounting):", head]
    problems = []
    for w, calls in sorted(per_worker.items()):
        tot, elements, up, down = {}, 0, 0, 0
        for st in calls:
            acc.add(tot, acc.from_call_stats(st, encoding, cm))
            elements += st["elements"]
            up, down = up + st["bytes_out"], down + st["bytes_in"]
        problems += [f"worker {w}: {p}" for p in acc.check(tot, up, down)]
        bpe = acc.bits_per_element(tot, elements)
        for d in ("up", "down"):
            lines.append(f"{w:>6}{d:>5}" + "".join(
                f"{tot[f'{d}_{p}']:>{9 if p != 'parts' and p != 'retx' else 7}}"
                for p in acc.PARTS) + f"{tot[f'{d}_bytes']:>9}"
                f"{bpe.get(f'{d}_bits_per_element', 0):>10.2f}"
                f"{bpe.get(f'{d}_payload_bits_per_element', 0):>8.1f}")
    lines += [f"ACCOUNTING MISMATCH: {p}" for p in problems]
    return "\n".join(lines)


def cmd_allreduce(args) -> int:
    from nina.wire import Encoding
    from nina.jobmsg import JobAborted
    from jobs.check import check_allreduce
    from jobs.runner import run_allreduce
    from jobs.runfolder import new_run_dir
    enc = Encoding.NAT8 if args.encoding == "nat8" else Encoding.INT32
    if args.cm and enc != Encoding.NAT8:
        return _fail("--cm needs --encoding nat8")
    folder = new_run_dir("allreduce", args.out, args.runs_dir)
    try:
        switch = open_switch(args, folder)
    except (JobAborted, ValueError) as e:
        return _fail(str(e))
    try:
        out = run_allreduce(args.workers, switch, size=args.size, encoding=enc, cm=args.cm,
                            calls=args.calls, loss=args.loss, seed=args.seed, run_dir=folder,
                            window=args.window, timeout=args.timeout)
    except JobAborted as e:
        return _fail(str(e))
    finally:
        switch.stop()
    problems = check_allreduce(folder, args.workers, args.calls, out.config["shift"], enc,
                               args.cm, seed=args.seed, size=args.size)
    print(f"{'worker':>6}{'call':>5}{'packets up':>11}{'down':>7}{'KB up':>9}{'KB down':>9}"
          f"{'retx':>6}{'ignored':>8}{'ms':>8}")
    for w, calls in sorted(out.per_worker.items()):
        for c, st in enumerate(calls):
            print(f"{w:>6}{c:>5}{st['packets_out']:>11}{st['packets_in']:>7}"
                  f"{st['bytes_out'] / 1e3:>9.1f}{st['bytes_in'] / 1e3:>9.1f}"
                  f"{st['retransmissions']:>6}{st['ignored']:>8}{st['seconds'] * 1e3:>8.1f}")
    print(format_breakdown(out.per_worker, enc, args.cm))
    if out.counters:
        print("switch decisions: " + ", ".join(f"{k} {v}" for k, v in out.counters.items()))
    what = f"{args.workers} workers x {args.size} elements, {args.encoding}" + \
        (" + C_M" if args.cm else "") + (f", loss {args.loss}" if args.loss else "")
    if problems:
        print(f"WRONG: {what}: " + "; ".join(problems[:5]))
        return 1
    print(f"EXACT: {what}, {args.calls} calls: every result equals "
          + ("the C_M rounding (a neighbouring power of two) of " if args.cm else "")
          + "the exact sum of what the workers sent, and lies within the encoding's error "
          + f"bound of the sum of their inputs, unbiased (run folder {folder})")
    return 0
