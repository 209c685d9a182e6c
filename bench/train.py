"""Steps and bytes to a target accuracy: none / int32 / nat / nat + C_M through the switch.

    python bench/train.py [--seeds 3] [--steps 100] [--target 0.93] [--workers 4]

The same job (an MLP on scikit-learn's digits, 4 worker processes, the embedded switch as a
process on loopback) is trained once per compressor and seed; the minibatch sequence of a seed
is the same for every compressor, so the runs differ only by compression. For each compressor
the table gives the mean steps until the test accuracy first reaches the target, the bytes on
the wire until then (UDP payloads: NINA header + payload, all workers, retransmissions
included; uplink and total), and their ratios to the uncompressed baseline `none` measured in
the same run. Targets of the project: C_nat <= 1.15 x the steps and <= 0.3 x the bytes.
Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from jobs.runner import run_training  # noqa: E402
from jobs.metrics import steps_to_target
from switch.handles import switch_for_checks
from worker.train import TrainConfig, plan  # noqa: E402

COMPRESSORS = ["none", "int32", "nat", "nat+cm"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def up_to(records, step, key):
    return sum(r[key] for r in records if r["step"] <= step)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--target", type=float, default=0.93)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--model", default="mlp", choices=["mlp", "logreg"])
    ap.add_argument("--compressors", default=",".join(COMPRESSORS))
    a = ap.parse_args(argv)
    comps = [c.strip() for c in a.compressors.split(",")]
    for c in comps:
        plan(c)
    tmp = tempfile.mkdtemp(prefix="nina-bench-train-")
    log(f"run folders and logs under {tmp}")
    sw = switch_for_checks(tmp, log=log)
    if sw is None:
        print("cannot run: no embedded switch (switch/pipeline.py missing)", file=sys.stderr)
        return 2
    where = "switch process" if hasattr(sw, "proc") else "in-process pipeline"
    res: dict[str, list[dict]] = {c: [] for c in comps}
    t_all = time.monotonic()
    try:
        job = 0
        for seed in range(a.seeds):
            for c in comps:
                job += 1
                cfg = TrainConfig(model=a.model, compressor=c, steps=a.steps, seed=seed)
                t0 = time.monotonic()
                out = run_training(cfg, a.workers, sw, job_id=job, run_dir=f"{tmp}/{job}-{c}",
                                   log=lambda m: None, progress=False)
                st, _ = steps_to_target(out.records, a.target)
                last = st or a.steps
                res[c].append({
                    "steps": st, "up": up_to(out.records, last, "bytes_up"),
                    "total": up_to(out.records, last, "bytes_up")
                    + up_to(out.records, last, "bytes_down"),
                    "acc": out.summary.get("final_test_accuracy"),
                    "retx": out.summary["retransmissions"],
                    "step_bytes": out.summary["bytes_total"] / len(out.records),
                    "wall": time.monotonic() - t0, "path": out.config["path"]})
                log(f"seed {seed} {c:>7}: target {a.target} at step {st}, final accuracy "
                    f"{res[c][-1]['acc']:.3f}, {res[c][-1]['wall']:.1f} s")
    finally:
        sw.stop()
    def mean(c, k):
        vals = [r[k] for r in res[c]]
        return None if any(v is None for v in vals) else float(np.mean(vals))
    print(f"\n{a.model} on digits, {a.workers} worker processes, embedded switch ({where}), "
          f"{a.seeds} seeds, target test accuracy {a.target}; ratios against '{comps[0]}' "
          f"(same run)")
    head = (f"{'compressor':<11}{'path':<20}{'steps':>8}{'x steps':>9}{'KB up':>9}"
            f"{'x up':>7}{'KB total':>10}{'x total':>9}{'B/step':>9}{'final acc':>10}"
            f"{'retx':>6}")
    print(head)
    print("-" * len(head))
    for c in comps:
        s, b_s = mean(c, "steps"), mean(comps[0], "steps")
        up, tot = mean(c, "up"), mean(c, "total")
        print(f"{c:<11}{res[c][0]['path'][:19]:<20}"
              f"{(f'{s:.1f}' if s else 'not hit'):>8}"
              f"{(f'{s / b_s:.2f}' if s and b_s else '-'):>9}"
              f"{up / 1e3:>9.1f}{up / mean(comps[0], 'up'):>7.3f}"
              f"{tot / 1e3:>10.1f}{tot / mean(comps[0], 'total'):>9.3f}"
              f"{mean(c, 'step_bytes'):>9.0f}{mean(c, 'acc'):>10.3f}"
              f"{sum(r['retx'] for r in res[c]):>6}")
    print("per seed steps to target: " + "; ".join(
        f"{c} {[r['steps'] for r in res[c]]}" for c in comps))
    for c in ("nat", "nat+cm"):
        if c in res and mean(c, "steps") and mean(comps[0], "steps"):
            xs = mean(c, "steps") / mean(comps[0], "steps")
            xb = mean(c, "total") / mean(comps[0], "total")
            xu = mean(c, "up") / mean(comps[0], "up")
            print(f"{c}: steps x{xs:.2f} (target <= 1.15: {'met' if xs <= 1.15 else 'MISSED'}), "
                  f"bytes x{xb:.3f} up+down / x{xu:.3f} up (target <= 0.3: "
                  + ("met" if xb <= 0.3 else
                     "met on the uplink only" if xu <= 0.3 else "MISSED") + ")")
    print(f"bench time {time.monotonic() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
