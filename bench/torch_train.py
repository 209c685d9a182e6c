"""PyTorch DDP on the rack: Gloo vs INT32 vs NAT8 vs NAT8 + C_M, time and steps to a target.

    flock /tmp/nina-rack.lock python bench/torch_train.py --model mnist1d --steps 400 --bw 10
    flock /tmp/nina-rack.lock python bench/torch_train.py --model resnet20 --steps 60 --bw 10

One rack (Mininet as root, else local mode without link shaping) with N worker hosts on links of
--bw Mbit/s; the same DDP job (same seed, same minibatches) runs once per comm: torch's own Gloo
all-reduce over those links (the baseline, no switch), and the DDP hook through the switch with
INT32, NAT8 and NAT8 + C_M. The table gives the final accuracy, steps / training seconds /
bytes until the test accuracy first reaches --target, their ratios to Gloo, and the mean step
split into compute, communication (bucket all-reduce busy time), exposed communication and the
share of communication overlapped with backward. The bound every comm is held against is its
link time: the bytes one worker sends and receives per step over its link at --bw (printed as
`link ms`). Goals of the project (issue 13): NAT8 + C_M reaches the target in <= 0.35 x Gloo's
training time and <= 1.15 x its steps, final accuracy within 0.5 points of Gloo's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from jobs.torch_cli import DEFAULT_LR, DEFAULT_TARGET  # noqa: E402
from jobs.torch_job import compare_torch, format_torch_table  # noqa: E402
from worker.torch_names import COMMS, TORCH_MODELS  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def open_rack(mode: str, n: int, bw: float | None, delay: float, run_dir: str):
    """The rack as `nina rack` makes it (traces off: they cost switch time), and a label."""
    from types import SimpleNamespace

    from topology.rack_cli import make_rack
    args = SimpleNamespace(mode=mode, workers=n, bw=bw, delay=delay, jitter=0.0, loss=0.0,
                           dup=0.0, reorder=0.0, switch="embedded", run_dir=run_dir,
                           no_trace=True, pcap=False)
    rack = make_rack(args, log=log)
    if rack.mode == "local":
        return rack, "local (loopback, no link shaping)"
    return rack, (f"mininet, {n} worker links of {bw:g} Mbit/s"
                  + (f", {delay:g} ms one-way delay" if delay else ""))


def link_ms(row: dict, n: int, bw: float | None) -> float | None:
    """Per step, the time one worker's link needs for its bytes (the busier direction)."""
    if not bw or not row["steps"]:
        return None
    per = max(row["bytes_up"], row["bytes_down"]) / n / row["steps"]
    return per * 8 / (bw * 1e6) * 1e3


def goals(rows: list[dict]) -> list[str]:
    by = {r["compressor"]: r for r in rows}
    g, c = by.get("gloo"), by.get("nat8+cm")
    if not g or not c:
        return []
    out = []
    if g["seconds_to_target"] and c["seconds_to_target"]:
        xt = c["seconds_to_target"] / g["seconds_to_target"]
        xs = c["steps_to_target"] / g["steps_to_target"]
        out.append(f"nat8+cm time to target {xt:.2f} x gloo (goal <= 0.35): "
                   f"{'met' if xt <= 0.35 else 'NOT met'}")
        out.append(f"nat8+cm steps to target {xs:.2f} x gloo (goal <= 1.15): "
                   f"{'met' if xs <= 1.15 else 'NOT met'}")
    else:
        out.append("target not reached by gloo and nat8+cm both: no time/steps ratio")
    d = 100 * (g["final_test_accuracy"] - c["final_test_accuracy"])
    out.append(f"final accuracy nat8+cm {100 * c['final_test_accuracy']:.2f}% vs gloo "
               f"{100 * g['final_test_accuracy']:.2f}% ({-d:+.2f} points; goal within 0.5): "
               f"{'met' if d <= 0.5 else 'NOT met'}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=TORCH_MODELS, default="mnist1d")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--target", type=float, default=None,
                    help="test accuracy (default: the model's nina train target)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--bw", type=float, default=10.0, help="Mbit/s per worker link (default 10)")
    ap.add_argument("--delay", type=float, default=0.0, help="one-way link delay, ms")
    ap.add_argument("--comms", default=",".join(COMMS))
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--window", type=int, default=None,
                    help="slots in flight per worker (default: the rack's); on a slow link a "
                         "window near its bandwidth-delay product fills it with fewer priming "
                         "packets per call (min(window, chunks) each way) and no queue")
    ap.add_argument("--mode", choices=["auto", "mininet", "local"], default="auto")
    ap.add_argument("--out", help="also write the table to this file")
    a = ap.parse_args(argv)
    if a.window is not None and a.window < 1:
        ap.error(f"--window must be at least 1, got {a.window}")
    comms = [c.strip() for c in a.comms.split(",") if c.strip()]
    bad = [c for c in comms if c not in COMMS]
    if bad:
        ap.error(f"unknown comm {bad[0]!r} (choose from {', '.join(COMMS)})")
    from worker.torch_ddp import TorchConfig
    target = a.target if a.target is not None else DEFAULT_TARGET[a.model]
    tmp = tempfile.mkdtemp(prefix="nina-bench-torch-")
    log(f"run folders and logs under {tmp}")
    rack, where = open_rack(a.mode, a.workers, a.bw, a.delay, tmp)
    from topology.rack_jobs import torch_rack_kwargs
    t0 = time.monotonic()
    with rack:
        base = TorchConfig(model=a.model, comm=comms[0], steps=a.steps, batch=a.batch,
                           lr=a.lr if a.lr is not None else DEFAULT_LR[a.model],
                           eval_every=a.eval_every, window=a.window or rack.default_window)
        rows = compare_torch(comms, base, a.workers, rack, folder=os.path.join(tmp, "jobs"),
                             target=target, log=log, next_job_id=rack.next_job_id,
                             **torch_rack_kwargs(rack))
    bw = a.bw if "mininet" in where else None
    lines = [f"## PyTorch DDP: {a.model}, {a.workers} ranks, {a.steps} steps, batch {a.batch} "
             f"per rank, lr {base.lr:g} (momentum 0.9, warm-up + cosine), window {base.window}; "
             f"rack: {where}",
             "", format_torch_table(rows, target), "",
             "link ms per step (bytes of one worker's busier direction / link rate): "
             + ", ".join(f"{r['compressor']} "
                         + (f"{link_ms(r, a.workers, bw):.1f}" if bw else "-")
                         for r in rows),
             f"model {rows[0]['model_size']} parameters; bench wall time "
             f"{time.monotonic() - t0:.0f} s", ""] + goals(rows)
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
