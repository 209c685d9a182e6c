"""Memory of a large all-reduce: the switch's resident set over the job and the workers' extra
memory per call, against the tensor's size.

    python bench/memory.py [--size 16777216] [--workers 4] [--calls 3]

Local mode: one embedded switch process and --workers worker processes on loopback. For INT32,
NAT8 and NAT8+C_M one job does --calls all-reduces of --size float32 elements (no recording of
what was sent, which a check would need and which costs memory of its own). Columns:

  switch RSS  the switch's resident set sampled every 20 ms: before the job (installed, idle),
              its peak during the job and after it; growth = peak - before, against the tensor
              (a switch that holds no per-tensor state stays flat: growth << 1x)
  worker      each call's peak resident set above what the worker held with its input in hand
              (Linux's VmHWM, reset before the call via /proc/self/clear_refs); the worst call
              of the worst worker, against the tensor (goal <= 3x)

Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nina.procs import memory_bytes  # noqa: E402
from nina.wire import Encoding  # noqa: E402

METHODS = (("INT32", Encoding.INT32, False), ("NAT8", Encoding.NAT8, False),
           ("NAT8+C_M", Encoding.NAT8, True))
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"[memory] {msg}", file=sys.stderr, flush=True)


class RssSampler:
    """A process's resident set every `every` seconds, on a thread, while in a `with`."""

    def __init__(self, pid: int, every: float = 0.02):
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = memory_bytes(self.pid).get("rss")
            if rss is not None:
                self.samples.append(rss)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(switch, n: int, size: int, calls: int, workdir: str) -> list[dict]:
    from jobs.runner import run_allreduce
    rows, pid = [], switch.proc.pid
    for i, (label, enc, cm) in enumerate(METHODS):
        log(f"{label}: {n} workers x {calls} calls of {size} elements")
        before = memory_bytes(pid)["rss"]
        with RssSampler(pid) as s:
            out = run_allreduce(n, switch, size=size, encoding=enc, cm=cm, calls=calls,
                                job_id=i + 1, run_dir=f"{workdir}/job{i + 1}", timeout=60.0,
                                dump=False, log=lambda *a: None)
        after = memory_bytes(pid)["rss"]
        extra = [st.get("peak_extra_bytes") for cs in out.per_worker.values() for st in cs]
        secs = [max(out.per_worker[w][c]["seconds"] for w in out.per_worker)
                for c in range(calls)]
        rows.append(dict(method=label, before=before, peak=max(s.samples + [after]),
                         after=after, worker=None if None in extra else max(extra),
                         seconds=min(secs)))
    return rows


def table(rows: list[dict], size: int) -> str:
    tensor = 4 * size
    out = ["| method | switch RSS before MiB | peak MiB | after MiB | growth x tensor | "
           "worker extra MiB | x tensor (goal <= 3) | s per call |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        w = ("-", "-") if r["worker"] is None else (f"{r['worker'] / MIB:.0f}",
                                                    f"{r['worker'] / tensor:.2f}")
        out.append(f"| {r['method']} | {r['before'] / MIB:.0f} | {r['peak'] / MIB:.0f} | "
                   f"{r['after'] / MIB:.0f} | {(r['peak'] - r['before']) / tensor:.3f} | "
                   f"{w[0]} | {w[1]} | {r['seconds']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--size", type=int, default=16 * MIB, help="elements (default 16M)")
    ap.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    ap.add_argument("--calls", type=int, default=3, help="calls per method (default 3)")
    args = ap.parse_args(argv)
    if args.size < 1 or args.calls < 1 or not 1 <= args.workers <= 32:
        ap.error("--size and --calls must be positive, --workers 1..32")
    from switch.handles import LocalSwitch, local_switch_unavailable
    why = local_switch_unavailable()
    if why:
        print(f"bench/memory.py: error: the embedded switch cannot run here: {why}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nina-memory-") as d:
        switch = LocalSwitch(d, log=log)
        try:
            rows = measure(switch, args.workers, args.size, args.calls, d)
        finally:
            switch.stop()
    print(f"{args.workers} workers, {args.size} float32 elements ({4 * args.size / MIB:.0f} MiB) "
          f"per tensor, {args.calls} calls per method, local mode")
    print()
    print(table(rows, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
