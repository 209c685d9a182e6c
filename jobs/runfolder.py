"""Run folders: metrics of a training job as JSON and CSV, and plots as PNG.

Layout (runs/<timestamp>-<name>/ unless --out says otherwise):
  config.json     the job (model, data, compressor, path, workers, switch)
  metrics.json    config + one record per step + summary
  metrics.csv     the per-step records
  loss.png        training/test loss (least squares: f - f*) vs steps, bytes on the wire and
                  training wall-clock time, log axis
  accuracy.png    test accuracy vs steps, bytes and time (classification models; decentralized
                  jobs: of the averaged model)
  consensus.png   decentralized jobs: consensus distance vs steps, bytes and time
A comparison (--compare) writes one folder per compressor under the run folder, plus
comparison.json/.csv and the same plots with one line per compressor.
"""
from __future__ import annotations

import csv
import json
import os
import re
import time

import numpy as np


def new_run_dir(name: str, out: str | None = None, root: str = "runs") -> str:
    """Create and return the run folder: `out` as given, else runs/<timestamp>-<name>."""
    if out:
        path = out
    else:
        safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") or "run"
        path = os.path.join(root, time.strftime("%Y%m%d-%H%M%S") + "-" + safe)
        base, i = path, 1
        while os.path.exists(path):
            i += 1
            path = f"{base}-{i}"
    os.makedirs(path, exist_ok=True)
    return path


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=_jsonable)


def write_csv(path: str, rows: list[dict]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def write_run(folder: str, config: dict, records: list[dict], summary: dict) -> list[str]:
    """Write one job's metrics and plots; returns the files written."""
    write_json(os.path.join(folder, "config.json"), config)
    write_json(os.path.join(folder, "metrics.json"),
               {"config": config, "summary": summary, "steps": records})
    write_csv(os.path.join(folder, "metrics.csv"), records)
    files = ["config.json", "metrics.json", "metrics.csv"]
    files += plot_runs(folder, {config.get("compressor", "run"): records})
    return [os.path.join(folder, f) for f in files]


def _series(records: list[dict], key: str):
    have = [r for r in records if r.get(key) is not None]
    xs = [r["step"] for r in have]
    bs = [r["bytes_total"] for r in have]
    ts = [r.get("wall_s", np.nan) for r in have]
    ys = [r[key] for r in have]
    return np.array(xs), np.array(bs, float), np.array(ts, float), np.array(ys, float)


LSQ_GAP = "f - f* (test suboptimality)"


def plot_runs(folder: str, runs: dict[str, list[dict]]) -> list[str]:
    """loss.png, accuracy.png and consensus.png (those with data), one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    lsq = any(r.get("test_objective") is not None for rs in runs.values() for r in rs[:1])
    panels = [("loss.png", [("train_loss", "training loss (minibatch, mean over workers)"),
                            ("test_loss", LSQ_GAP if lsq else "test loss")]),
              ("accuracy.png", [("test_accuracy", "test accuracy")]),
              ("consensus.png", [("consensus_distance", "consensus distance (mean squared "
                                                        "distance to the average model)")])]
    for fname, keys in panels:
        have = [(k, label) for k, label in keys
                if any(r.get(k) is not None for rs in runs.values() for r in rs)]
        if not have:
            continue
        fig, axes = plt.subplots(len(have), 3, figsize=(15, 3.6 * len(have)), squeeze=False)
        for row, (key, label) in enumerate(have):
            for name, rs in runs.items():
                steps, nbytes, secs, ys = _series(rs, key)
                if not len(ys):
                    continue
                if "loss" in key:   # a log axis shows only positive values: f - f* can reach
                    ys = np.where(ys > 0, ys, np.nan)   # 0 or round below it
                axes[row, 0].plot(steps, ys, label=name, lw=1.2)
                axes[row, 1].plot(nbytes / 1e6, ys, label=name, lw=1.2)
                axes[row, 2].plot(secs, ys, label=name, lw=1.2)
            axes[row, 0].set_xlabel("step")
            axes[row, 1].set_xlabel("MB on the wire (all workers, up + down)")
            axes[row, 2].set_xlabel("training wall-clock time, s (start-up excluded)")
            for ax in axes[row]:
                ax.set_ylabel(label)
                ax.grid(alpha=0.3, which="both")
                if "loss" in key or key == "consensus_distance":
                    ax.set_yscale("log")
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, fname), dpi=90)
        plt.close(fig)
        written.append(fname)
    return written


def write_comparison(folder: str, rows: list[dict], runs: dict[str, list[dict]]) -> None:
    """The comparison of several jobs in one folder: comparison.json (whole rows),
    comparison.csv (without the nested switch counters) and the metric plots of every run."""
    write_json(os.path.join(folder, "comparison.json"), rows)
    write_csv(os.path.join(folder, "comparison.csv"),
              [{k: v for k, v in r.items() if k != "switch_counters"} for r in rows])
    if runs:
        plot_runs(folder, runs)
