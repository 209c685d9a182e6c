"""The demo's jobs: the same training job with C_nat and with the INT32 baseline, one switch.

The same MLP on scikit-learn's digits, trained by n worker processes through the switch with
natural compression (NAT8 codes, 8 bits per element up) and with the INT32 baseline (SwitchML's
block floating point, 32 bits); a comparison table (accuracy, steps and bytes to the target
accuracy, bytes and packets each way, retransmissions, wall time) and the run folders with
metrics and plots. run_demo takes the switch, the worker spawner and the coordinator address as
arguments, so a rack (topology/demo_cli.py: Mininet or local) or docker-compose.yml (a switch
service and worker services) runs the same jobs on its own hosts.
"""
from __future__ import annotations

import sys

DEMO_COMPRESSORS = ("nat", "int32")
BASELINE = "int32"


def run_demo(args, switch=None, spawn=None, spec_factory=None, log=print,
             coord_ip: str | None = None, coord_port: int | None = None,
             coordinator=None) -> int:
    """The demo on `switch` (default: a fresh local switch process), workers started by
    `spawn` and described by `spec_factory` (see jobs.runner.run_training); coord_ip and
    coord_port fix the coordinator's address (workers started elsewhere join it there)."""
    from jobs.cli import _fail
    from jobs.compare import compare, default_target, format_table
    from nina.jobmsg import JobAborted
    from worker.train import TrainConfig, default_lr
    data = "lsq" if args.model == "lsq" else "digits"
    base = TrainConfig(model=args.model, data=data, steps=args.steps, lr=default_lr(args.model))
    target, key, higher = default_target(args.model)
    for k, v in (("switch", None), ("grpc", None), ("window", base.window),
                 ("timeout", base.timeout), ("name", "demo")):
        if not hasattr(args, k):
            setattr(args, k, v)
    from worker.compress import split_specs
    try:
        comps = split_specs(getattr(args, "compressors", ",".join(DEMO_COMPRESSORS)))
    except ValueError as e:
        return _fail(str(e))
    log(f"NINA demo: {args.workers} workers train a {args.model} on {data} for {args.steps} "
        f"steps, once per compressor: {', '.join(comps)} (the INT32 baseline is {BASELINE})")
    try:
        rows, folder = compare(comps, base, args.workers, args, target, key,
                               higher, log=log, switch=switch, spawn=spawn,
                               spec_factory=spec_factory, coord_ip=coord_ip,
                               coord_port=coord_port, coordinator=coordinator)
    except (JobAborted, ValueError, OSError) as e:
        return _fail(str(e))
    print("\n" + format_table(rows, target, key, baseline=BASELINE))
    print(f"\nrun folder: {folder}")
    for r in rows:
        print(f"  {r['compressor']:<8} {r['folder']}  (metrics.json, metrics.csv, loss.png"
              + (", accuracy.png)" if key == "test_accuracy" else ")"))
    if len(rows) > 1:
        print(f"  comparison {folder}/comparison.csv, plots {folder}/"
              + ("accuracy.png, " if key == "test_accuracy" else "") + f"{folder}/loss.png")
    sys.stdout.flush()
    return 0
