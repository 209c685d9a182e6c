"""Throughput, variance and memory of the gradient compression operators.

    python bench/compress.py [--size 24] [--repeat 3] [--ops nat,dither_nat:s=4,p=inf]
                             [--threads 1,2] [--clock wall|cpu]

For one float32 vector of 2^size Gaussian values, prints one table: bits per element on the
wire, the measured error ratio ||C(x)-x||^2/||x||^2 (one draw; for an unbiased operator an
estimate of omega, very precise at this size), its theoretical bound, encode and decode
throughput in MB/s of float32 input, (encode + decode) speed relative to a numpy memcpy
(np.copyto) of the same array timed in the same run, and the peak extra memory of encode and
of decode as a multiple of the input size (tracemalloc; numpy reports its buffers to it).
For operators that decode in place (decompress(c, out=buf)) two more columns time the decode
into a reused buffer, as the memcpy writes into one: a fresh 2^24-element array costs more
in page faults than C_nat's whole decode. With --threads 1,2 every operator is run once per
thread count (nina.jit.set_threads: the C_nat kernels split over that many threads; the
others are single-threaded numpy). Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nina.jit import max_threads, set_threads  # noqa: E402
from worker.compress import ErrorFeedback, get_compressor  # noqa: E402

DEFAULT_OPS = [
    "none", "nat", "nat9", "dither_nat:s=7,p=inf", "dither_sta:s=7,p=2", "randk:q=0.01",
    "topk:k=0.01", "nat_randk:q=0.01", "sparse_dither:s=1", "spherical:block=8,bits=8",
    "powersgd:r=4", "ef+topk:k=0.01",
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


CLOCK = time.perf_counter   # --clock cpu: time.process_time


def best_time(fn, repeat: int) -> tuple[float, object]:
    """Best wall time of `repeat` calls. The previous call's result is dropped before the next
    call, as a sender drops a payload once sent: held, it would make every call's output fresh
    pages (the allocator cannot reuse it), a page-fault cost that is the allocator's, not the
    operator's."""
    best, out = float("inf"), None
    for _ in range(repeat):
        out = None
        t0 = CLOCK()
        out = fn()
        best = min(best, CLOCK() - t0)
    return best, out


def peak_extra(fn) -> float:
    """Peak bytes allocated while fn runs, above what was allocated before it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def bound_text(op, d: int) -> str:
    w = op.omega(d)
    if w is not None:
        return f"{w:.4g}"
    delta = getattr(getattr(op, "compressor", op), "delta", None)
    return f"<={1 - delta(d):.4g}" if delta else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=24, help="log2 of the element count (24)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats, best kept (3)")
    ap.add_argument("--ops", default=";".join(DEFAULT_OPS),
                    help="operator specs separated by ';'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="1",
                    help="comma-separated thread counts for the compiled kernels (1)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall (default): elapsed time; cpu: this process's CPU time, which "
                         "a loaded machine's other processes do not inflate (with --threads "
                         "above 1 it adds up the threads' time: use wall for speed-ups)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
        for t in thread_counts:
            set_threads(t)
    except ValueError as e:
        ap.error(f"--threads {args.threads!r}: {e}" if "threads must" in str(e) else
                 f"--threads {args.threads!r}: give whole numbers 1..{max_threads()}, "
                 "e.g. 1,2")

    d = 1 << args.size
    nbytes = 4 * d
    x = np.random.default_rng(args.seed).standard_normal(d, dtype=np.float32)
    dst = np.empty_like(x)
    t_copy, _ = best_time(lambda: np.copyto(dst, x), max(20, args.repeat))  # the bound: its best
    del dst
    log(f"d = 2^{args.size} = {d} float32 ({nbytes / 2**20:.0f} MiB); numpy {np.__version__}; "
        f"memcpy {t_copy * 1e3:.1f} ms = {nbytes / t_copy / 1e6:.0f} MB/s")

    rows = []
    specs = [s for s in (s.strip() for s in args.ops.split(";")) if s]
    for threads, spec in ((t, s) for t in thread_counts for s in specs):
        set_threads(threads)
        op = get_compressor(spec, seed=args.seed)
        inp = x.reshape(1 << (args.size // 2), -1) if spec.startswith("powersgd") else x
        # error feedback would otherwise carry its residual from one timing run to the next
        fresh = getattr(op, "reset", None) if isinstance(op, ErrorFeedback) else None
        encode = (lambda: (fresh(), op.compress(inp))[1]) if fresh else (lambda: op.compress(inp))
        log(f"{spec}: encoding ...")
        t_enc, c = best_time(encode, args.repeat)
        log(f"{spec}: encode {t_enc * 1e3:.1f} ms, {c.bits / d:.3f} bits/element; decoding ...")
        t_dec, y = best_time(lambda: op.decompress(c), args.repeat)
        err = float(np.sum((y.astype(np.float64).reshape(-1) - x) ** 2) / np.sum(
            x.astype(np.float64) ** 2))
        del y
        log(f"{spec}: decode {t_dec * 1e3:.1f} ms; measuring memory ...")
        in_place = ("-", "-")
        if hasattr(op, "_decode_into"):
            buf = np.empty(inp.shape, np.float32)
            buf.fill(0)   # touched: its pages exist, like the memcpy's destination
            t_out, _ = best_time(lambda: op.decompress(c, out=buf), args.repeat)
            in_place = (f"{nbytes / t_out / 1e6:.0f}", f"{t_copy / (t_enc + t_out):.3f}")
            del buf
        m_enc = peak_extra(encode) / nbytes
        m_dec = peak_extra(lambda: op.decompress(c)) / nbytes
        rows.append((spec, str(threads), f"{c.bits / d:.3f}", f"{err:.4g}", bound_text(op, d),
                     f"{nbytes / t_enc / 1e6:.0f}", f"{nbytes / t_dec / 1e6:.0f}",
                     f"{t_copy / (t_enc + t_dec):.3f}", *in_place, f"{m_enc:.2f}",
                     f"{m_dec:.2f}"))
        del c

    head = ("operator", "threads", "bits/elt", "omega(meas)", "bound", "enc MB/s", "dec MB/s",
            "(enc+dec)/memcpy", "dec out= MB/s", "(enc+dec out=)/memcpy", "mem enc x",
            "mem dec x")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"d = 2^{args.size} float32, memcpy {nbytes / t_copy / 1e6:.0f} MB/s "
          f"({t_copy * 1e3:.1f} ms); best of {args.repeat}, {args.clock} clock; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    print("omega(meas) = ||C(x)-x||^2/||x||^2 of one draw (biased operators: their relative "
          "error); bound: omega(d), or 1-k/d for top-k; out=: decode into a reused buffer "
          f"(operators that can); threads: of the compiled kernels ({max_threads()} available)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
