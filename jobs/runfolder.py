"""Run folders: metrics of a training job as JSON and CSV, and plots as PNG.

Layout (runs/<timestamp>-<name>/ unless --out says otherwise):
  config.json     the job (model, data, compressor, path, workers, switch)
  metrics.json    config + one record per step + summary
  metrics.csv     the per-step records
  loss.png        training/test loss vs steps and vs bytes on the wire
  accuracy.png    test accuracy vs steps and vs bytes (classification models; decentralized
                  jobs: of the averaged model)
  consensus.png   decentralized jobs: consensus distance vs steps and vs bytes
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
    xs = [r["step"] for r in records if r.get(key) is not None]
    bs = [r["bytes_total"] for r in records if r.get(key) is not None]
    ys = [r[key] for r in records if r.get(key) is not None]
    return np.array(xs), np.array(bs, float), np.array(ys, float)


def plot_runs(folder: str, runs: dict[str, list[dict]]) -> list[str]:
    """loss.png, accuracy.png and consensus.png (those with data), one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    panels = [("loss.png", [("train_loss", "training loss (minibatch, mean over workers)"),
                            ("test_loss", "test loss")]),
              ("accuracy.png", [("test_accuracy", "test accuracy")]),
              ("consensus.png", [("consensus_distance", "consensus distance (mean squared "
                                                        "distance to the average model)")])]
    for fname, keys in panels:
        have = [(k, label) for k, label in keys
                if any(r.get(k) is not None for rs in runs.values() for r in rs)]
        if not have:
            continue
        fig, axes = plt.subplots(len(have), 2, figsize=(11, 3.6 * len(have)), squeeze=False)
        for row, (key, label) in enumerate(have):
            for name, rs in runs.items():
                steps, nbytes, ys = _series(rs, key)
                if not len(ys):
                    continue
                axes[row, 0].plot(steps, ys, label=name, lw=1.2)
                axes[row, 1].plot(nbytes / 1e6, ys, label=name, lw=1.2)
            axes[row, 0].set_xlabel("step")
            axes[row, 1].set_xlabel("MB on the wire (all workers, up + down)")
            for ax in axes[row]:
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
                if "loss" in key or key == "consensus_distance":
                    ax.set_yscale("log")
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, fname), dpi=90)
        plt.close(fig)
        written.append(fname)
    return written
