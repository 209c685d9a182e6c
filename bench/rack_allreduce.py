"""All-reduce time on the shaped Mininet rack beside each method's link-bound time and the ring.

    flock /tmp/nina-rack.lock python bench/rack_allreduce.py [--bw 100,1000] [--workers 4,8]
                                                             [--size 4194304] [--calls 2]

For every (bandwidth, workers) pair one rack starts with its worker links shaped to the
bandwidth; on it run INT32, NAT8 and NAT8 + C_M through the switch (each checked exactly against
the all-reduce oracle) and a host ring all-reduce of float32 over TCP (worker/ring.py), the
baseline, in the same run. Columns:

  time       best per-call seconds of the slowest worker (`--calls` calls per method)
  link-bound the time a worker's link needs for the call's frames, the busier direction:
             NINA: (data + priming packets) x (UDP payload + 42 B of Ethernet/IPv4/UDP headers)
             per nina.accounting.link_bound_seconds; ring: 2(n-1)/n x 4 B x elements of TCP
             payload, in 1514-byte frames carrying 1448 payload bytes each
  x bound    time / link-bound: 1.0 is a method that fills its link
  x ring     time / the ring's time
  switch CPU the switch process's CPU seconds per call / the call's time: near 1.0 the switch
             is a saturated core and bounds the call
  all CPU    (the switch's CPU per call + every worker's CPU in the best call) / (cores x the
             call's time): near 1.0 the machine's cores are saturated and the call is CPU-bound
             (the kernel's softirq work on the veths and shapers is partly outside both, so
             this is a lower bound)

Goals (issue 12) at 100 Mbit/s: INT32 and NAT8 + C_M each <= 1.3x their link-bound time,
NAT8 + C_M <= 0.25x the ring. Needs root and Mininet (without them the jobs run on loopback,
unshaped, and the table says so). Progress goes to stderr, the tables to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bench.allreduce_net import Net  # noqa: E402
from nina.accounting import link_bound_seconds  # noqa: E402
from nina.procs import cpu_seconds  # noqa: E402
from nina.wire import Encoding  # noqa: E402

TCP_PAYLOAD, TCP_FRAME = 1448, 1514        # MSS with timestamps; Ethernet frame of a full segment
METHODS = (("INT32", Encoding.INT32, False), ("NAT8", Encoding.NAT8, False),
           ("NAT8 + C_M", Encoding.NAT8, True))


def log(msg: str) -> None:
    print(f"[rack-bench] {msg}", file=sys.stderr, flush=True)


def ring_bound_seconds(n: int, elements: int, bw_mbit: float) -> float:
    payload = 2 * (n - 1) / n * 4 * elements
    return payload * TCP_FRAME / TCP_PAYLOAD * 8 / (bw_mbit * 1e6)


def switch_pid(net: Net) -> int | None:
    if net.rack is not None and net.rack.switch_alive():
        return net.rack.switch.proc.pid
    return None


def measure(net: Net, n: int, bw: float, size: int, calls: int, window: int | None) -> list[dict]:
    rows = []
    pid = switch_pid(net)
    for label, enc, cm in METHODS:
        log(f"{bw:g} Mbit/s, {n} workers: {label} of {size} elements, {calls} calls")
        c0 = cpu_seconds(pid) if pid is not None else None
        t, retx, exact = net.allreduce(size, enc, cm, calls=calls, window=window)
        c1 = cpu_seconds(pid) if pid is not None else None
        # the switch's CPU over the whole job (start-up and rendezvous idle) per call's time
        sw = (c1 - c0) / calls if c0 is not None and c1 is not None else None
        rows.append(dict(method=label, time=t, retx=retx, check="exact" if exact else "WRONG",
                         bound=link_bound_seconds(enc, cm, size, window or net.window, bw),
                         cpu=None if sw is None else sw / t,
                         all_cpu=None if sw is None else
                         (sw + net.worker_cpu) / (os.cpu_count() * t)))
    log(f"{bw:g} Mbit/s, {n} workers: ring of {size} float32")
    rows.append(dict(method="ring float32 (TCP)", time=net.ring(size, repeat=calls), retx=0,
                     check="float sum", bound=ring_bound_seconds(n, size, bw), cpu=None,
                     all_cpu=None))
    ring = rows[-1]["time"]
    for r in rows:
        r.update(bw=bw, n=n, x_bound=r["time"] / r["bound"], x_ring=r["time"] / ring)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| Mbit/s | workers | method | time s | link-bound s | x bound | x ring | "
           "switch CPU | all CPU | retx | check |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    f2 = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        out.append(f"| {r['bw']:g} | {r['n']} | {r['method']} | {r['time']:.3f} | "
                   f"{r['bound']:.3f} | {r['x_bound']:.2f} | {r['x_ring']:.2f} | "
                   f"{f2(r['cpu'])} | {f2(r['all_cpu'])} | {r['retx']} | {r['check']} |")
    return "\n".join(out)


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's goals at 100 Mbit/s, and what bounds each method that is not link-bound."""
    lines = []
    for r in rows:
        if r["method"].startswith("ring"):
            continue
        where = f"{r['bw']:g} Mbit/s, {r['n']} workers, {r['method']}"
        goals = []
        if r["bw"] == 100 and r["method"] in ("INT32", "NAT8 + C_M"):
            goals.append(f"goal <= 1.3: {'met' if r['x_bound'] <= 1.3 else 'NOT met'}")
        if r["bw"] == 100 and r["method"] == "NAT8 + C_M":
            goals.append(f"{r['x_ring']:.2f}x the ring, goal <= 0.25: "
                         f"{'met' if r['x_ring'] <= 0.25 else 'NOT met'}")
        if goals or r["x_bound"] > 1.3 or r["bw"] != 100:
            lines.append(f"- {where}: {r['x_bound']:.2f}x its link-bound time"
                         + (f" ({'; '.join(goals)})" if goals else "") + f": {bound_by(r)}")
    return lines


def bound_by(r: dict) -> str:
    """What bounds a method's call, from its columns."""
    if r["x_bound"] <= 1.3:
        return "link-bound"
    if r["cpu"] is None:
        return "not link-bound (no CPU figures)"
    if r["cpu"] >= 0.8:
        return f"the switch's core (busy {r['cpu']:.0%} of the call)"
    if r["all_cpu"] >= 0.8:
        return (f"CPU-bound: the machine's {os.cpu_count()} cores at least {r['all_cpu']:.0%} "
                f"busy (switch {r['cpu']:.0%} of one core, the rest the workers)")
    return (f"neither links nor CPU saturated (cores {r['all_cpu']:.0%} busy, switch "
            f"{r['cpu']:.0%}): waiting (round trips, the window, retransmission timers)")


def floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return vals


def worker_counts(text: str) -> list[int]:
    vals = floats(text)
    if any(v != int(v) or not 1 <= v <= 32 for v in vals):
        raise argparse.ArgumentTypeError(f"worker counts are whole numbers 1..32, got {text!r}")
    return [int(v) for v in vals]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--bw", type=floats, default=[100.0, 1000.0],
                    help="worker link bandwidths, Mbit/s, comma separated (default 100,1000)")
    ap.add_argument("--workers", type=worker_counts, default=[4, 8],
                    help="worker counts, comma separated (default 4,8)")
    ap.add_argument("--size", type=int, default=4_194_304, help="elements (default 4M)")
    ap.add_argument("--calls", type=int, default=2, help="calls per method; the best counts")
    ap.add_argument("--window", type=int, default=None,
                    help="slots in flight per worker (default: the rack's)")
    args = ap.parse_args(argv)
    if args.size < 1 or args.calls < 1 or (args.window is not None and args.window < 1):
        ap.error("--size, --calls and --window must be positive")
    rows, where = [], []
    for bw in args.bw:
        for n in args.workers:
            with tempfile.TemporaryDirectory(prefix="nina-rackbench-") as d:
                net = Net(n, bw, d)
                try:
                    where.append(net.where)
                    rows += measure(net, n, bw, args.size, args.calls, args.window)
                finally:
                    net.close()
    print("\n".join(f"Run on: {w}" for w in dict.fromkeys(where)))
    print()
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
