"""`nina demo`: the project's main job in one command.

The same MLP on scikit-learn's digits, trained by n worker processes through the switch with
natural compression (NAT8 codes, 8 bits per element up) and with the INT32 baseline (SwitchML's
block floating point, 32 bits), on one embedded switch process; a comparison table with the
steps and bytes each needs to reach the target accuracy, and the run folders with metrics and
plots. run_demo takes the switch and the worker spawner as arguments so a rack (e.g. Mininet)
can run the same demo on its own hosts.
"""
from __future__ import annotations

import sys

DEMO_COMPRESSORS = ("nat", "int32")
BASELINE = "int32"


def run_demo(args, switch=None, spawn=None, spec_factory=None, log=print) -> int:
    """The demo on `switch` (default: a fresh local switch process), workers started by
    `spawn` and described by `spec_factory` (see worker.launch.run_training)."""
    from worker.cli import _fail, compare, default_target, format_table
    from worker.coordinator import JobAborted
    from worker.train import TrainConfig, default_lr
    data = "lsq" if args.model == "lsq" else "digits"
    base = TrainConfig(model=args.model, data=data, steps=args.steps, lr=default_lr(args.model))
    target, key, higher = default_target(args.model)
    for k, v in (("switch", None), ("grpc", None), ("window", base.window),
                 ("timeout", base.timeout), ("name", "demo")):
        if not hasattr(args, k):
            setattr(args, k, v)
    comps = [c.strip() for c in getattr(args, "compressors", ",".join(DEMO_COMPRESSORS))
             .split(",") if c.strip()]
    log(f"NINA demo: {args.workers} workers train a {args.model} on {data} for {args.steps} "
        f"steps, once per compressor: {', '.join(comps)} (the INT32 baseline is {BASELINE})")
    try:
        rows, folder = compare(comps, base, args.workers, args, target, key,
                               higher, log=log, switch=switch, spawn=spawn,
                               spec_factory=spec_factory)
    except (JobAborted, ValueError, OSError) as e:
        return _fail(str(e))
    print(format_table(rows, target, key, baseline=BASELINE))
    for r in rows:
        print(f"  {r['compressor']:<8} {r['folder']}")
    print(f"comparison: {folder}/comparison.csv, plots {folder}/accuracy.png, {folder}/loss.png")
    sys.stdout.flush()
    return 0
