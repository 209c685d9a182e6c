"""The embedded switch's per-packet algorithm alone: ns per update in process, no I/O.

    python bench/switch_kernel.py [--workers 2,8] [--batch 256] [--passes 20] [--rounds 3]
                                  [--before CHECKOUT]

bench/switch.py measures the switch as a process on loopback, where the kernel's share is a
fraction of the syscalls' and the run-to-run noise of a shared VM is larger than a kernel
change. This bench isolates it: the same update sequence bench/switch.py sends (whole rounds
over a window of 32 slots, n workers) is copied into receive rows once, then
`Pipeline.process_batch` runs over it in batches (--batch) with a send callback that only counts
the results, as the server's I/O loop calls it: one warm pass, then --passes passes timed
together with the trace sink's close (a trace buffer still unwritten when the passes end is part
of their cost, so the rows with traces on are the steady state, not the first buffers). Each
row runs in --rounds fresh processes; the best round counts.

Rows: INT32, NAT8 and NAT8+C_M at each n, with traces off and on (a `TraceSink` writing to a
file in a temporary directory: records, hand-over and the writer thread, as `nina switch
--trace` runs them). --before CHECKOUT measures another checkout of this project (e.g. main
before a change) in the same run, its rounds alternating with this one's, and adds the ratio
before/this. Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = (("INT32", False), ("NAT8", False), ("NAT8", True))


def measure(enc_name: str, cm: bool, n: int, batch: int, passes: int, trace: bool) -> dict:
    """Runs in the checkout on sys.path: mean ns per update over `passes` passes after a warm
    one, traces written out included."""
    import numpy as np

    from bench.switch_load import make_sequence
    from nina.config import JobSpec, WorkerAddr
    from nina.wire import Encoding
    from switch.pipeline import Pipeline
    from switch.trace_sink import TraceSink

    enc = Encoding[enc_name]
    with tempfile.TemporaryDirectory(prefix="ninakernel") as tmp:
        sink = TraceSink(Path(tmp) / "t.trace") if trace else None
        p = Pipeline(trace=sink)
        ws = tuple(WorkerAddr(w, "127.0.0.1", 40000 + w) for w in range(n))
        p.install_job(JobSpec(1, n, enc, cm, slot_count=32, workers=ws))
        seq = make_sequence(n, enc, 32, 20000)
        m = len(seq) // batch * batch
        rx = np.zeros((m, 272), np.uint8)
        for i, (_, data) in enumerate(seq[:m]):
            rx[i, :len(data)] = np.frombuffer(data, np.uint8)
        off = np.zeros(m, np.int64)
        ln = np.full(m, 272, np.int64)
        port = np.zeros(m, np.int64)
        ip = np.full(m, int.from_bytes(socket.inet_aton("127.0.0.1"), "big"), np.int64)
        udp = np.array([40000 + w for w, _ in seq[:m]], np.int64)
        fl = np.full(m, 314, np.int64)
        results = [0]

        def send(out, out_len, out_rep, k, img):
            results[0] += k

        def one_pass():
            for s in range(0, m, batch):
                e = s + batch
                p.process_batch(rx[s:e], off[s:e], ln[s:e], port[s:e], ip[s:e], udp[s:e],
                                fl[s:e], batch, send)

        one_pass()   # warm: caches, the first buffers of the sink
        results[0] = 0
        # the passes and the sink's close, timed together: a trace buffer not yet written
        # when the passes end is part of their cost
        t0 = time.perf_counter()
        for _ in range(passes):
            one_pass()
        if sink is not None:
            sink.close()
        mean = (time.perf_counter() - t0) / (m * passes)
    return {"ns": mean * 1e9, "results": results[0] / (m * passes)}


def run_in(root: Path, specs: list) -> list[dict]:
    """Measure every row spec [enc, cm, n, batch, passes, trace] in a fresh interpreter with
    `root` first on sys.path (that checkout's pipeline, its own compile cache)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", json.dumps(specs)]
    env = dict(os.environ, PYTHONPATH=str(root))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if r.returncode != 0:
        raise SystemExit(f"bench/switch_kernel.py: the measurement in {root} failed:\n"
                         f"{r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="2,8", help="values of n, comma list (1..32)")
    ap.add_argument("--batch", type=int, default=256,
                    help="packets per process_batch call (the server's receive batch: 256)")
    ap.add_argument("--passes", type=int, default=20,
                    help="timed passes over the ~20000-update sequence per row and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="fresh processes per row (per checkout); the best counts")
    ap.add_argument("--before", metavar="CHECKOUT",
                    help="also measure another checkout of this project, same run")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:   # in a child: the checkout under test (PYTHONPATH) first, in place of
        # bench/, whose switch.py would shadow the switch package
        sys.path[0] = os.environ.get("PYTHONPATH", str(REPO))
        print(json.dumps([measure(*spec) for spec in json.loads(args.measure)]))
        return 0
    try:
        ns = [int(x) for x in args.workers.split(",")]
    except ValueError:
        ap.error(f"--workers wants a comma list of integers, got {args.workers!r}")
    if any(not 1 <= n <= 32 for n in ns):
        ap.error("--workers values must be in 1..32")
    if not 1 <= args.batch <= 256:
        ap.error("--batch must be in 1..256 (the kernel's batch)")
    if args.passes < 1 or args.rounds < 1:
        ap.error("--passes and --rounds must be >= 1")
    before = Path(args.before).resolve() if args.before else None
    if before and not (before / "switch" / "pipeline.py").is_file():
        ap.error(f"--before {args.before}: not a checkout of this project (no switch/pipeline.py)")
    # every row in one child per checkout; the children alternate round by round: drifts of
    # a shared machine hit both checkouts alike
    rounds, per = args.rounds, args.passes
    keys = [(enc, cm, n, trace) for enc, cm in VARIANTS for n in ns for trace in (False, True)]
    specs = [[enc, cm, n, args.batch, per, trace] for enc, cm, n, trace in keys]
    mine: list[list[dict]] = []
    theirs: list[list[dict]] = []
    for r in range(rounds):
        print(f"[kernel-bench] round {r + 1}/{rounds}: {len(keys)} rows x {per} passes"
              + (" here and in --before" if before else ""), file=sys.stderr, flush=True)
        mine.append(run_in(REPO, specs))
        if before:
            theirs.append(run_in(before, specs))

    def best(runs, i):
        return min((run[i] for run in runs), key=lambda x: x["ns"])

    rows = [(*k, best(mine, i), best(theirs, i) if before else None)
            for i, k in enumerate(keys)]
    print(f"switch kernel in process (Pipeline.process_batch, no I/O): batches of {args.batch}, "
          f"{per} passes, best of {rounds} rounds; {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.1f}")
    hdr = (f"{'enc':<10}{'n':>3}{'trace':>6}{'ns/update':>11}{'results/upd':>13}"
           f"{'trace cost':>11}" + (f"{'before ns':>11}{'before/this':>12}" if before else ""))
    print(hdr)
    print("-" * len(hdr))
    off = {(e, c, n): r["ns"] for e, c, n, t, r, _ in rows if not t}
    for enc, cm, n, trace, r, b in rows:
        cost = f"{r['ns'] / off[enc, cm, n] - 1:>+10.0%}" if trace else f"{'':>10}"
        line = (f"{enc + ('+C_M' if cm else ''):<10}{n:>3}{'on' if trace else 'off':>6}"
                f"{r['ns']:>11.1f}{r['results']:>13.2f} {cost}")
        if b:
            line += f"{b['ns']:>11.1f}{b['ns'] / r['ns']:>11.2f}x"
        print(line)
    print("ns/update: wall time per update packet through process_batch (results counted, not "
          "sent); results/upd:\nresult packets per update (NAT8 without C_M: 2 parts); trace "
          "cost: over the same row with traces off\n(records, the sink's hand-over and its "
          "writer thread writing the file)"
          + ("; before: the checkout --before,\nsame run, rounds alternating." if before else "."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
