"""Decentralized gossip: consensus against bytes sent, and training on a ring of 8.

    python bench/gossip.py consensus [--sizes 8,16] [--budget 30] [--dim 32]
    python bench/gossip.py train [--workers 8] [--steps 300] [--hidden 128]

consensus (the paper's consensus experiments): workers on a ring or a 2-D torus start from
different random matrices (dim x dim, plus a bias of dim) and only gossip, over real UDP
datagrams on loopback (threads in one process, one socket each). Two kinds of starting points:
`gauss`, i.i.d. normal entries (a flat spectrum, the worst case for a low-rank method), and
`decay`, matrices whose differences have singular values falling as 1/k^2 (as differences of
trained models do). Every algorithm gets the same byte budget per worker: what exact gossip
sends in --budget steps. The table gives the bytes per worker until the consensus distance is
1e-2 and 1e-4 of its start, the distance reached with the whole budget, and the bytes ratio to
exact gossip measured in the same run (bytes: gossip datagrams, UDP payload, header included).
Choco-SGD (top-k 10%) is tuned: the best of its step sizes is shown.

train: an MLP (--hidden units) on scikit-learn's digits, 8 worker processes, same seed and
minibatches for every algorithm: all-reduce SGD through the embedded switch (INT32, the
uncompressed centralized reference), exact gossip, PowerGossip rank 1 and 2, Choco-SGD with
top-k at about PowerGossip rank 1's bytes. The table gives the final test accuracy of the
averaged model and the worst worker, bytes per worker per step, total bytes and their ratio to
exact gossip, the accuracy at the bytes PowerGossip rank 1 sent in the whole run and in its
first quarter (equal bytes), the final consensus distance, and the wall time. Goals of the
project: PowerGossip within 1 point of exact gossip's final accuracy with <= 1/10 of its
bytes, and at least as accurate as Choco-SGD at equal bytes.
Progress goes to stderr, the tables to stdout.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nina import gossip_wire as gw  # noqa: E402
from worker.gossip import make_gossip  # noqa: E402
from worker.gossip_graph import make_graph  # noqa: E402
from worker.gossip_local import LocalGroup  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---- consensus ----

def start_point(kind: str, w: int, dim: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + w)
    if kind == "gauss":
        M = rng.standard_normal((dim, dim))
    else:
        U, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        V, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        M = (U * (dim / np.arange(1, dim + 1) ** 2)) @ V.T / np.sqrt(dim)
    return [M.astype(np.float32), rng.standard_normal(dim).astype(np.float32)]


def run_consensus(graph, kind, dim, algorithm, budget, **kw):
    """Gossip until every worker sent `budget` bytes; (bytes, distance) after every step.
    Ring and torus are regular and message sizes do not depend on the values, so every worker
    stops after the same number of steps, counted without loss recovery (NACKs and resent
    datagrams, which a loaded machine causes at random); the bytes reported include them."""
    with LocalGroup(graph, timeout=60.0) as grp:
        def body(w, net):
            X = start_point(kind, w, dim)
            algo = make_gossip(algorithm, graph, w, net, **kw)
            hist, sent, plan = [[x.copy() for x in X]], [0], 0
            while plan < budget:
                st = algo.step(X)
                plan += st["bytes_up"] - st["recovery_bytes"]
                sent.append(sent[-1] + st["bytes_up"])
                hist.append([x.copy() for x in X])
            return hist, sent
        res = grp.run(body)
    steps = {len(r[1]) for r in res}
    assert len(steps) == 1, f"workers took different step counts {steps}"
    out = []
    for s in range(len(res[0][1])):
        flat = np.stack([np.concatenate([t.ravel() for t in r[0][s]]) for r in res]) \
            .astype(np.float64)
        d = float(((flat - flat.mean(0)) ** 2).sum(1).mean())
        out.append((float(np.mean([r[1][s] for r in res])), d))
    return out


def bytes_to(curve, frac: float) -> float | None:
    d0 = curve[0][1]
    for b, d in curve:
        if d <= frac * d0:
            return b
    return None


CONSENSUS_ALGOS = [("exact", "exact", {}),
                   ("powergossip r1 k1", "powergossip", {"rank": 1}),
                   ("powergossip r1 k2", "powergossip", {"rank": 1, "iterations": 2}),
                   ("powergossip r2 k1", "powergossip", {"rank": 2}),
                   ("powergossip r2 k2", "powergossip", {"rank": 2, "iterations": 2})]
CHOCO_GAMMAS = (0.05, 0.1, 0.2, 0.4)


def consensus_main(a) -> int:
    rows = []
    for kind in a.kinds.split(","):
        for topo in ("ring", "torus"):
            for n in (int(s) for s in a.sizes.split(",")):
                g = make_graph(topo, n)
                exact_step = len(g.neighbours(0)) * gw.datagram_bytes(4 * (a.dim * a.dim + a.dim))
                budget = a.budget * exact_step
                results = []
                for label, alg, kw in CONSENSUS_ALGOS:
                    t0 = time.monotonic()
                    results.append((label, run_consensus(g, kind, a.dim, alg, budget, **kw),
                                    time.monotonic() - t0))
                best = None
                for gam in CHOCO_GAMMAS:
                    t0 = time.monotonic()
                    c = run_consensus(g, kind, a.dim, "choco", budget,
                                      compressor="topk:k=0.1", gamma=gam)
                    if best is None or c[-1][1] < best[1][-1][1]:
                        best = (f"choco topk10% g={gam}", c, time.monotonic() - t0)
                results.append(best)
                log(f"{kind} {topo} {n}: gap {g.spectral_gap():.3f}, budget "
                    f"{budget / 1e3:.0f} kB/worker")
                ex = results[0][1]
                for label, c, secs in results:
                    rows.append((kind, f"{topo}{n}", g.spectral_gap(), label, len(c) - 1,
                                 bytes_to(c, 1e-2), bytes_to(c, 1e-4), c[-1][1] / c[0][1],
                                 bytes_to(ex, 1e-2), bytes_to(ex, 1e-4), secs))
    head = (f"{'start':<6}{'graph':<8}{'gap':>6}  {'algorithm':<22}{'steps':>6}"
            f"{'kB@1e-2':>9}{'x exact':>8}{'kB@1e-4':>9}{'x exact':>8}{'dist@budget':>12}"
            f"{'s':>6}")
    print(head)
    print("-" * len(head))
    for kind, graph, gap, label, steps, b2, b4, fin, e2, e4, secs in rows:
        def kb(b):
            return f"{b / 1e3:.1f}" if b is not None else "-"

        def ratio(b, e):
            return f"{b / e:.3f}" if b is not None and e else "-"
        print(f"{kind:<6}{graph:<8}{gap:>6.3f}  {label:<22}{steps:>6}{kb(b2):>9}"
              f"{ratio(b2, e2):>8}{kb(b4):>9}{ratio(b4, e4):>8}{fin:>12.2e}{secs:>6.1f}")
    print(f"kB@1e-2 / kB@1e-4: gossip bytes sent per worker until the consensus distance is that "
          f"fraction of its start ('-': not within the budget of {a.budget} exact-gossip steps); "
          f"x exact: ratio to exact gossip on the same graph; dist@budget: distance / start "
          f"after the whole budget. Matrices {a.dim} x {a.dim} + a bias of {a.dim}.")
    return 0


# ---- training ----

def train_main(a) -> int:
    from jobs.runner import run_training
    from switch.handles import switch_for_checks
    from worker.train import TrainConfig
    tmp = tempfile.mkdtemp(prefix="nina-bench-gossip-")
    log(f"run folders and logs under {tmp}")
    base = dict(model="mlp", steps=a.steps, lr=a.lr, hidden=a.hidden, seed=a.seed,
                eval_every=a.eval_every, batch=a.batch, timeout=30.0)
    jobs = [("all-reduce (switch INT32)", TrainConfig(compressor="none", **base)),
            ("exact gossip", TrainConfig(algorithm="exact", **base)),
            ("powergossip r1", TrainConfig(algorithm="powergossip", rank=1, **base)),
            ("powergossip r2", TrainConfig(algorithm="powergossip", rank=2, **base))]
    for k in a.choco_k.split(","):
        for gam in a.choco_gamma.split(","):
            jobs.append((f"choco topk:k={k} g={gam}",
                         TrainConfig(algorithm="choco", compressor=f"topk:k={k}",
                                     gamma=float(gam), **base)))
    if a.skip_allreduce:
        jobs = jobs[1:]
    sw = None
    rows = []
    try:
        for i, (label, cfg) in enumerate(jobs):
            if cfg.algorithm == "allreduce" and sw is None:
                sw = switch_for_checks(tmp, log=log)
                if sw is None:
                    log("no embedded switch: the all-reduce reference is left out")
                    continue
            log(f"[{i + 1}/{len(jobs)}] {label}")
            out = run_training(cfg, a.workers, sw if cfg.algorithm == "allreduce" else None,
                               job_id=i + 1, run_dir=f"{tmp}/{i}", log=log, progress=False,
                               heartbeat_timeout=30.0)   # a loaded machine stalls processes
            rows.append((label, out))
    finally:
        if sw is not None:
            sw.stop()
    ex = next(o for lab, o in rows if lab == "exact gossip")
    pg = next(o for lab, o in rows if lab == "powergossip r1")
    pg_bytes = pg.summary["bytes_up"]
    n, steps = a.workers, a.steps
    head = (f"{'algorithm':<26}{'acc avg':>8}{'worst':>7}{'kB/wkr/step':>12}{'MB total':>9}"
            f"{'x exact':>8}{'acc@PG1/4':>10}{'acc@PG1':>8}{'consensus':>10}{'time s':>8}")
    print(head)
    print("-" * len(head))
    for label, o in rows:
        s = o.summary
        up = s["bytes_up"]
        worst = s.get("worker_accuracy_worst", s.get("final_test_accuracy"))
        at = _acc_at_bytes(o.records, pg_bytes)
        at4 = _acc_at_bytes(o.records, pg_bytes / 4)
        print(f"{label:<26}{s['final_test_accuracy']:>8.3f}{worst:>7.3f}"
              f"{up / (n * steps) / 1e3:>12.2f}{up / 1e6:>9.2f}"
              f"{up / ex.summary['bytes_up']:>8.3f}{(format(at4, '.3f') if at4 else '-'):>10}"
              f"{(format(at, '.3f') if at else '-'):>8}"
              f"{s.get('consensus_distance', 0.0):>10.3g}{o.seconds:>8.1f}")
    print(f"{n} workers on a ring (gossip) / through the switch (all-reduce), MLP {a.hidden} "
          f"hidden on digits, {steps} steps, lr {a.lr}, batch {a.batch} per worker, seed "
          f"{a.seed}. acc avg: test accuracy of the averaged model (all-reduce: the one model); "
          f"worst: the worst worker's own model; bytes: sent per worker, UDP payload (gossip "
          f"datagrams with their header; all-reduce: NINA packets up); acc@PG1 (acc@PG1/4): "
          f"accuracy of the averaged model at the last evaluation within the bytes PowerGossip "
          f"r1 sent in the whole run (in its first quarter; '-': no evaluation that early); "
          f"time: wall time of the job "
          f"(start-up included).")
    return 0


def _acc_at_bytes(records, budget):
    sent, acc = 0, None
    for r in records:
        sent += r["bytes_up"]
        if sent > budget:
            break
        if r.get("test_accuracy") is not None:
            acc = r["test_accuracy"]
    return acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("consensus", help="consensus distance against bytes")
    c.add_argument("--sizes", default="8,16")
    c.add_argument("--kinds", default="gauss,decay")
    c.add_argument("--budget", type=int, default=30, help="in exact-gossip steps (default 30)")
    c.add_argument("--dim", type=int, default=32)
    t = sub.add_parser("train", help="accuracy against bytes and time")
    t.add_argument("--workers", type=int, default=8)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.5)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=int, default=10)
    t.add_argument("--choco-k", default="0.02")
    t.add_argument("--choco-gamma", default="0.2,0.5")
    t.add_argument("--skip-allreduce", action="store_true",
                   help="leave out the all-reduce reference (e.g. for more seeds)")
    a = ap.parse_args(argv)
    return consensus_main(a) if a.what == "consensus" else train_main(a)


if __name__ == "__main__":
    sys.exit(main())
