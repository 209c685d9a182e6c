"""The arguments of a training job, defined once for `nina train` and the rack's `train`
command, and the TrainConfig they make (so the two cannot drift: same defaults, same checks)."""
from __future__ import annotations

import argparse

from nina.cli_types import finite_float, positive_float, positive_int


def add_train_args(p: argparse.ArgumentParser, default_steps: int = 300) -> None:
    """What a training job is: compressors, model, optimisation, evaluation, target."""
    from jobs.torch_cli import add_torch_args
    from worker.models import MODELS
    from worker.torch_names import TORCH_MODELS
    p.add_argument("--compressor", default=None, metavar="SPEC",
                   help="compressor spec, e.g. nat or \"dither_nat:s=4,p=inf\" (default nat; "
                        "with --algorithm choco topk:k=0.01)")
    p.add_argument("--compare", metavar="LIST",
                   help="compressors separated by , ; or spaces (\"nat,dither_nat:s=4,p=inf\" is "
                        "two): run the same job once per compressor and print a comparison "
                        "table (the first is the baseline of the ratios); a failed or diverged "
                        "job is marked, the others kept")
    p.add_argument("--model", choices=MODELS + TORCH_MODELS, default=None,
                   help="default mlp (torch: digits); " + ", ".join(TORCH_MODELS) +
                        " are torch models (--framework torch)")
    p.add_argument("--steps", type=positive_int, default=default_steps,
                   help=f"default {default_steps}")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default 0.5; 0.1 for lsq)")
    p.add_argument("--batch", type=positive_int, default=32, help="minibatch per worker (default 32)")
    p.add_argument("--hidden", type=positive_int, default=32, help="MLP hidden units (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of data split, init and sampling")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="test evaluation period in steps (default 1; gossip 10, as every "
                        "worker then sends its model to the runner for the averaged metrics)")
    p.add_argument("--target", type=finite_float, default=None,
                   help="accuracy (or, for lsq, f - f*) whose steps and bytes the comparison "
                        "table reports (default 0.93 for digits, 0.002 for lsq)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_gossip_args(p)
    add_torch_args(p)


def add_gossip_args(p: argparse.ArgumentParser) -> None:
    """Decentralized training: the algorithm, the worker graph, PowerGossip's rank."""
    from worker.gossip import ALGORITHMS
    from worker.gossip_graph import TOPOLOGIES
    g = p.add_argument_group("decentralized training (gossip instead of the switch)")
    g.add_argument("--algorithm", choices=("allreduce",) + ALGORITHMS, default="allreduce",
                   help="allreduce: data-parallel SGD through the switch (default); exact: "
                        "D-PSGD with whole models; powergossip: low-rank differences; choco: "
                        "Choco-SGD with --compressor")
    g.add_argument("--topology", choices=TOPOLOGIES, default="ring",
                   help="worker graph (default ring); torus needs a composite worker count")
    g.add_argument("--degree", type=positive_int, default=3,
                   help="neighbours per worker of --topology random (default 3)")
    g.add_argument("--rank", type=positive_int, default=1, help="powergossip rank (default 1)")
    g.add_argument("--iterations", type=positive_int, default=1,
                   help="powergossip power-iteration steps per training step (default 1)")
    g.add_argument("--gamma", type=positive_float, default=None,
                   help="gossip step size in (0, 1] (default 1; choco 0.5)")


def _compressor(args) -> str:
    if args.compressor is not None:
        return args.compressor
    return "topk:k=0.01" if args.algorithm == "choco" else "nat"


def compressor_specs(args, n_workers: int | None = None) -> list[str]:
    """The job's compressors, checked (ValueError with the reason); for a decentralized job
    (--algorithm) also its graph on n_workers and its gossip parameters."""
    from dataclasses import replace
    from worker.compress import split_specs
    from worker.torch_names import TORCH_MODELS
    from worker.train import check_decentralized, plan
    if args.model in TORCH_MODELS:   # numpy jobs only; torch jobs: jobs.torch_cli.torch_job
        raise ValueError(f"--model {args.model} is a torch model: add --framework torch")
    args.model = args.model or "mlp"
    given = args.compare if args.compare is not None else _compressor(args)
    if not given.replace(",", "").replace(";", "").strip():
        flag = "--compare" if args.compare is not None else "--compressor"
        raise ValueError(f"no compressor given in {flag} {given!r}")
    specs = split_specs(given)   # between specs, not inside them (docs/workbench.md)
    if args.algorithm == "allreduce":
        for s in specs:
            plan(s)
        return specs
    if args.compressor is not None and args.algorithm != "choco":
        raise ValueError(f"--compressor is for allreduce and choco; {args.algorithm} sends "
                         + ("whole models" if args.algorithm == "exact" else
                            "rank --rank products"))
    base = train_config(args, 1)
    for s in specs:
        check_decentralized(replace(base, compressor=s), n_workers or 2)
    return specs


def train_config(args, window: int):
    """The TrainConfig of parsed training arguments (`window`: the switch's slots in flight)."""
    from worker.train import TrainConfig, default_lr
    args.model = args.model or "mlp"
    data = "lsq" if args.model == "lsq" else "digits"
    lr = args.lr if args.lr is not None else default_lr(args.model)
    gossip = args.algorithm != "allreduce"
    eval_every = args.eval_every or (10 if gossip else 1)
    return TrainConfig(model=args.model, data=data, compressor=_compressor(args),
                       steps=args.steps, lr=lr, batch=args.batch, seed=args.seed,
                       hidden=args.hidden, eval_every=eval_every, window=window,
                       timeout=args.timeout, algorithm=args.algorithm, topology=args.topology,
                       degree=args.degree, rank=args.rank, iterations=args.iterations,
                       gamma=args.gamma)
