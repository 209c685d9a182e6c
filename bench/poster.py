"""The seed poster's table, measured: bits per iteration, iterations to target, speedup.

    python bench/poster.py [--steps 200] [--target 0.9] [--workers 4] [--q 0.25] [--s 4]
                           [--p inf] [--seeds 1] [--rack-bw MBIT]
    flock /tmp/nina-rack.lock python bench/poster.py --rack-bw 20     (the rack needs root)

For identity, C_nat, S^q, C_nat o S^q, D_sta^{p,2^(s-1)} and D_nat^{p,s} the same training
job (an MLP on scikit-learn's digits, d = 2410 parameters, n worker processes, the embedded
switch as a process) runs once per operator and seed through `nina train --compare`. The table
puts next to each other:
  - bits/iter: the measured bits one worker sends to the master per iteration: one copy of the
    operator's real encoding (for the switch paths the element payload; protocol overhead is
    the next column), next to the poster's formula evaluated at this d, q, s;
  - all bits/iter: everything the worker sent per iteration (headers, priming, padding,
    retransmissions; the host all-gather sends its message to each of the n-1 others);
  - iterations until the test accuracy first reaches the target, relative to identity;
  - speedup = (bits x iterations of identity) / (bits x iterations of the operator), the
    poster's communication-bound factor, next to the poster's range;
  - with --rack-bw: the same jobs on the Mininet rack with every worker link shaped to that
    bandwidth, and the measured wall-clock time to the target (training only, start-up
    excluded) and its speedup against identity.
Progress goes to stderr, the tables to stdout. Identity is the baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# (name, spec template, poster formula text, formula(d, q, s), poster speedup range)
OPERATORS = [
    ("identity", "none", "32d", lambda d, q, s: 32 * d, "1"),
    ("C_nat", "nat", "9d", lambda d, q, s: 9 * d, "3.2-3.6x"),
    ("S^q", "randk:q={q}", "(33+log2 d)q", lambda d, q, s: (33 + math.log2(d)) * q,
     "0.6-6.0x"),
    ("C_nat o S^q", "nat_randk:q={q}", "(10+log2 d)q", lambda d, q, s: (10 + math.log2(d)) * q,
     "1.0-10.7x"),
    ("D_sta^{p,2^(s-1)}", "dither_sta:s={sl},p={p}", "31+d(2+s)",
     lambda d, q, s: 31 + d * (2 + s), "1.8-15.9x"),
    ("D_nat^{p,s}", "dither_nat:s={s},p={p}", "8+d(2+log2 s)",
     lambda d, q, s: 8 + d * (2 + math.log2(s)), "4.1-16.0x"),
]


def log(msg: str) -> None:
    print(f"[poster] {msg}", file=sys.stderr, flush=True)


def specs(a) -> list[str]:
    return [t.format(q=a.q, s=a.s, sl=2 ** (a.s - 1), p=a.p) for _, t, *_ in OPERATORS]


def run_local(a, spec_list, seed: int, out: Path) -> Path:
    cmd = [sys.executable, "-m", "nina.cli", "train", "--workers", str(a.workers),
           "--compare", ";".join(spec_list), "--steps", str(a.steps), "--target",
           str(a.target), "--seed", str(seed), "--out", str(out), "--no-progress"]
    _run(cmd)
    return out


def run_rack(a, spec_list, seed: int, out: Path) -> Path:
    job = (f"train --compare '{';'.join(spec_list)}' --steps {a.steps} --target {a.target} "
           f"--seed {seed} --lr 0.5 --no-progress")
    cmd = [sys.executable, "-m", "nina.cli", "rack", "--mode", "mininet", "--workers",
           str(a.workers), "--bw", str(a.rack_bw), "--no-trace", "--run-dir", str(out),
           "--run", job]
    _run(cmd)
    folders = sorted(out.glob("train-*"))
    if not folders:
        raise SystemExit(f"the rack wrote no train-* folder under {out}")
    return folders[0]


def _run(cmd: list[str]) -> None:
    log(" ".join(cmd[2:]))
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"{cmd[3]} failed (exit {p.returncode})")


def rows_of(folder: Path) -> list[dict]:
    """comparison.json rows plus the wall-clock time (training only) at the target step."""
    path = folder / "comparison.json"
    if not path.exists():
        raise SystemExit(f"no comparison.json in {folder}")
    rows = json.loads(path.read_text())
    for r in rows:
        if r.get("error"):
            log(f"{r['compressor']}: {r['status']}: {r['error']}")
        path = Path(r["folder"]) / "metrics.json"
        steps = json.loads(path.read_text())["steps"] if path.exists() else []
        st = r.get("steps_to_target")
        r["wall_to_target"] = next((s["wall_s"] for s in steps if s["step"] == st), None)
    return rows


def _num(v, fmt: str, width: int) -> str:
    return f"{('-' if v is None else format(v, fmt)):>{width}}"


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def table(a, per_seed: list[list[dict]], d: int, wall: bool) -> str:
    q_count = max(1, round(a.q * d)) if isinstance(a.q, float) else a.q
    n = len(OPERATORS)
    agg = []
    for i in range(n):
        rs = [rows[i] for rows in per_seed]
        agg.append({"compressor": rs[0]["compressor"], "path": rs[0]["path"],
                    "status": ",".join(sorted({r.get("status", "ok") for r in rs})),
                    "bits": _mean([r.get("payload_bits_per_iteration_up") for r in rs]),
                    "all_bits": _mean([r.get("bits_per_iteration_up") for r in rs]),
                    "iters": (_mean([r.get("steps_to_target") for r in rs])
                              if all(r.get("steps_to_target") for r in rs) else None),
                    "wall": (_mean([r.get("wall_to_target") for r in rs])
                             if all(r.get("wall_to_target") for r in rs) else None),
                    "seeds": [r.get("steps_to_target") for r in rs]})
    base = agg[0]
    head = (f"{'operator':<19}{'spec':<22}{'bits/iter':>10}{'poster':>15}{'=':>2}{'value':>8}"
            f"{'all bits/iter':>14}{'iters':>7}{'x iters':>8}{'speedup':>9}{'poster':>11}"
            f"{'x all':>7}")
    if wall:
        head += f"{'wall s@tgt':>11}{'x wall':>8}"
    lines = [head, "-" * len(head)]
    for (name, _, ftext, f, prange), r in zip(OPERATORS, agg):
        rel = r["iters"] / base["iters"] if r["iters"] and base["iters"] else None
        if r["status"] != "ok":
            rel = None
        sp = (base["bits"] * base["iters"]) / (r["bits"] * r["iters"]) \
            if rel and r["bits"] and base["bits"] else None
        spa = (base["all_bits"] * base["iters"]) / (r["all_bits"] * r["iters"]) \
            if rel and r["all_bits"] and base["all_bits"] else None
        line = (f"{name:<19}{r['compressor']:<22}{_num(r['bits'], '.0f', 10)}{ftext:>15}"
                f"{'':>2}{f(d, q_count, a.s):>8.0f}{_num(r['all_bits'], '.0f', 14)}"
                f"{(format(r['iters'], '.1f') if r['iters'] else 'not hit'):>7}"
                f"{(format(rel, '.2f') if rel else '-'):>8}"
                f"{(format(sp, '.2f') + 'x' if sp else '-'):>9}{prange:>11}"
                f"{(format(spa, '.2f') + 'x' if spa else '-'):>7}")
        if wall:
            xw = base["wall"] / r["wall"] if r["wall"] and base["wall"] else None
            line += (f"{(format(r['wall'], '.2f') if r['wall'] else '-'):>11}"
                     f"{(format(xw, '.2f') + 'x' if xw else '-'):>8}")
        lines.append(line + ("" if r["status"] == "ok" else f"  [{r['status']}]"))
    lines.append(f"d = {d}, q = {q_count} ({a.q} of d), s = {a.s} (D_sta: {2 ** (a.s - 1)} "
                 f"levels), p = {a.p}; iterations to test accuracy {a.target}, per seed: "
                 + "; ".join(f"{r['compressor']} {r['seeds']}" for r in agg))
    lines.append("bits/iter: one copy of the operator's encoding from one worker (switch "
                 "paths: the element payload); all bits/iter: every UDP payload byte the "
                 "worker sent (host all-gather: n-1 copies); speedup: identity's bits x "
                 "iterations over the operator's; x all: the same with all bits/iter")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--q", type=float, default=0.25, help="S^q: fraction of d kept")
    ap.add_argument("--s", type=int, default=4, help="D_nat levels (D_sta gets 2^(s-1))")
    ap.add_argument("--p", default="inf", help="dithering norm (1, 2, inf)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds on loopback (0: rack only)")
    ap.add_argument("--rack-seeds", type=int, default=1, help="seeds on the rack (default 1)")
    ap.add_argument("--rack-bw", type=float, default=None, metavar="MBIT",
                    help="also run on the Mininet rack with links of this bandwidth (root; "
                         "run under flock /tmp/nina-rack.lock)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    a = ap.parse_args(argv)
    sl = specs(a)
    tmp = Path(tempfile.mkdtemp(prefix="nina-bench-poster-"))
    log(f"run folders under {tmp}")
    t0 = time.monotonic()
    try:
        local = [rows_of(run_local(a, sl, seed, tmp / f"local-{seed}"))
                 for seed in range(a.seeds)]
        if local:
            print_local(a, local)
        if a.rack_bw:
            rack = [rows_of(run_rack(a, sl, seed, tmp / f"rack-{seed}"))
                    for seed in range(a.rack_seeds)]
            print(f"\n### Mininet rack: {a.workers} workers, every worker link {a.rack_bw:g} "
                  f"Mbit/s, embedded switch, no traces, {a.rack_seeds} seed(s)\n")
            print("```\n" + table(a, rack, _d(rack), wall=True) + "\n```")
            print("wall s@tgt: training wall-clock time (start barrier to the target step, "
                  "start-up excluded); x wall: identity's over the operator's, measured in "
                  "the same run.")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"bench time {time.monotonic() - t0:.0f} s")
    return 0


def _d(per_seed) -> int:
    r = per_seed[0][0]
    return r["elements"] // (r["steps"] * r["workers"])


def print_local(a, local) -> None:
    d = _d(local)
    print(f"\n### Loopback: {a.workers} worker processes, embedded switch process, mlp on "
          f"digits, {a.seeds} seed(s), {a.steps} steps max\n")
    print("```\n" + table(a, local, d, wall=False) + "\n```")


if __name__ == "__main__":
    sys.exit(main())
