"""`nina train --framework torch`: PyTorch DDP jobs from the command line (local mode).

The flags shared with the numpy jobs keep their meaning (--workers, --steps, --lr, --batch,
--seed, --eval-every, --target, --compare, --switch/--grpc, --window, --timeout); --compressor
names the comm: gloo (torch's own all-reduce, no switch: the baseline), int32, nat8, nat8+cm
(the aliases none, nat, nat+cm of the numpy jobs work too).
"""
from __future__ import annotations

import argparse
import importlib.util

from worker.torch_names import TORCH_MODELS, comm_name

DEFAULT_LR = {"digits": 0.1, "mnist1d": 0.2, "resnet20": 0.1}
DEFAULT_TARGET = {"digits": 0.93, "mnist1d": 0.75, "resnet20": 0.9}
DEFAULT_EVAL_EVERY = 20

EPILOG = """torch jobs (--framework torch; needs the torch extra: pip install -e '.[torch]'):
  models: digits (small CNN, sklearn's 8x8 digits), mnist1d (1-D CNN, the mnist1d package),
  resnet20 (ResNet-20 on synthetic 32x32 images); momentum SGD, warm-up + cosine schedule.
  comms (--compressor / --compare): gloo (torch's all-reduce, no switch), int32, nat8, nat8+cm.
  nina train --framework torch --model digits --compare gloo,int32,nat8,nat8+cm --steps 200
  torchrun --nproc-per-node 4 -m jobs.torch_rank --switch IP:PORT --grpc IP:PORT --comm nat8
  (a job across machines against a running switch; see docs/torch.md)"""


def add_torch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("torch jobs (--framework torch)")
    g.add_argument("--framework", choices=["numpy", "torch"], default="numpy",
                   help="numpy: the numpy models (worker/models.py); torch: PyTorch DDP with "
                        "a communication hook through the switch")
    g.add_argument("--bucket-mb", type=float, default=0.0,
                   help="DDP bucket size in MB (default 0: a quarter of the model, so buckets "
                        "overlap backward)")


def torch_missing() -> str | None:
    for mod in ("torch", "mnist1d"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed: pip install -e '.[torch]' (CPU torch==2.13.0)"
    return None


def torch_job(args, window: int):
    """(comms, TorchConfig, target) of parsed training arguments with --framework torch, for
    `nina train` and the rack's `train` alike; ValueError with the reason."""
    from worker.torch_ddp import TorchConfig
    model = args.model or "digits"
    if model not in TORCH_MODELS:
        raise ValueError(f"--model {model} is a numpy model; torch models: "
                         f"{', '.join(TORCH_MODELS)}")
    if getattr(args, "algorithm", "allreduce") != "allreduce":
        raise ValueError("--algorithm (gossip) has no torch path: torch jobs all-reduce")
    given = args.compare if args.compare is not None else (args.compressor or "nat8")
    comms = [comm_name(s.strip()) for s in given.split(",") if s.strip()]
    if not comms:
        raise ValueError(f"no compressor given in {given!r}")
    cfg = TorchConfig(model=model, comm=comms[0], steps=args.steps, batch=args.batch,
                      lr=args.lr if args.lr is not None else DEFAULT_LR[model],
                      bucket_mb=args.bucket_mb, seed=args.seed,
                      eval_every=args.eval_every or DEFAULT_EVAL_EVERY, window=window,
                      timeout=args.timeout)
    target = args.target if args.target is not None else DEFAULT_TARGET[model]
    return comms, cfg, target


def cmd_train_torch(args, fail) -> int:
    """The torch branch of `nina train`; fail(msg) prints one error line and returns 2."""
    if args.loss:
        return fail("--loss (the switch's loss simulator) is not offered for torch jobs")
    try:
        comms, base, target = torch_job(args, args.window)
    except ValueError as e:
        return fail(str(e))
    why = torch_missing()
    if why:
        return fail(why)
    from jobs.compare import open_switch
    from jobs.runfolder import new_run_dir
    from jobs.torch_job import compare_torch, format_torch_table
    from nina.jobmsg import JobAborted
    folder = new_run_dir(f"torch-{'-'.join(comms)}-{base.model}", args.out, args.runs_dir)
    switch = None
    try:
        if any(c != "gloo" for c in comms):
            switch = open_switch(args, folder)
        rows = compare_torch(comms, base, args.workers, switch, folder=folder, target=target)
    except (JobAborted, ValueError, OSError) as e:
        return fail(str(e))
    finally:
        if switch is not None:
            switch.stop()
    print(format_torch_table(rows, target))
    print(f"run folder: {folder}")
    return 0
