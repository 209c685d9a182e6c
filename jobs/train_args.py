"""The arguments of a training job, defined once for `nina train` and the rack's `train`
command, and the TrainConfig they make (so the two cannot drift: same defaults, same checks)."""
from __future__ import annotations

import argparse

from nina.cli_types import finite_float, positive_float, positive_int


def add_train_args(p: argparse.ArgumentParser, default_steps: int = 300) -> None:
    """What a training job is: compressors, model, optimisation, evaluation, target."""
    from worker.models import MODELS
    p.add_argument("--compressor", default="nat", metavar="SPEC",
                   help="compressor spec, e.g. nat or \"dither_nat:s=4,p=inf\" (default nat)")
    p.add_argument("--compare", metavar="LIST",
                   help="compressors separated by , ; or spaces (\"nat,dither_nat:s=4,p=inf\" is "
                        "two): run the same job once per compressor and print a comparison "
                        "table (the first is the baseline of the ratios); a failed or diverged "
                        "job is marked, the others kept")
    p.add_argument("--model", choices=MODELS, default="mlp", help="default mlp")
    p.add_argument("--steps", type=positive_int, default=default_steps,
                   help=f"default {default_steps}")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default 0.5; 0.1 for lsq)")
    p.add_argument("--batch", type=positive_int, default=32, help="minibatch per worker (default 32)")
    p.add_argument("--hidden", type=positive_int, default=32, help="MLP hidden units (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of data split, init and sampling")
    p.add_argument("--eval-every", type=positive_int, default=1, help="test evaluation period")
    p.add_argument("--target", type=finite_float, default=None,
                   help="accuracy (or, for lsq, f - f*) whose steps and bytes the comparison "
                        "table reports (default 0.93 for digits, 0.002 for lsq)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def compressor_specs(args) -> list[str]:
    """The job's compressors, checked (ValueError with the reason). --compressor may be a list
    too, as before; both split with worker.compress.split_specs."""
    from worker.compress import split_specs
    from worker.train import plan
    given = args.compare if args.compare is not None else args.compressor
    if not given.replace(",", "").replace(";", "").strip():
        flag = "--compare" if args.compare is not None else "--compressor"
        raise ValueError(f"no compressor given in {flag} {given!r}")
    specs = split_specs(given)   # between specs, not inside them (docs/workbench.md)
    for s in specs:
        plan(s)
    return specs


def train_config(args, window: int):
    """The TrainConfig of parsed training arguments (`window`: the switch's slots in flight)."""
    from worker.train import TrainConfig, default_lr
    data = "lsq" if args.model == "lsq" else "digits"
    lr = args.lr if args.lr is not None else default_lr(args.model)
    return TrainConfig(model=args.model, data=data, steps=args.steps, lr=lr,
                       batch=args.batch, seed=args.seed, hidden=args.hidden,
                       eval_every=args.eval_every, window=window, timeout=args.timeout)
