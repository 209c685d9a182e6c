"""Training: models and data, the compressor -> aggregation path mapping, and end-to-end jobs
(worker processes, the embedded switch as a process, the `nina train` command)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nina.wire import Encoding
from worker import data as datasets
from worker import models
from nina.procs import REPO
from switch.handles import local_switch_unavailable
from jobs.runner import run_training
from worker.train import TrainConfig, plan

QUIET = lambda *a, **k: None  # noqa: E731


# ---- models, data, paths (no processes) ----

@pytest.mark.parametrize("name", ["logreg", "mlp", "lsq"])
def test_gradients_match_finite_differences(name):
    data = datasets.load("lsq" if name == "lsq" else "digits")
    m = models.make_model(name, data, hidden=8)
    rng = np.random.default_rng(0)
    p = (m.init_params(rng) + rng.normal(0, 0.1, m.size)).astype(np.float64)
    X, y = data.X_train[:20].astype(np.float64), data.y_train[:20]
    _, g = m.loss_grad(p, X, y)
    for i in rng.choice(m.size, 12, replace=False):
        e = np.zeros(m.size)
        e[i] = 1e-5
        num = (m.loss_grad(p + e, X, y)[0] - m.loss_grad(p - e, X, y)[0]) / 2e-5
        assert abs(num - g[i]) < 1e-4 + 1e-3 * abs(num), (name, i)


def test_least_squares_optimum_is_known():
    data = datasets.load("lsq")
    m = models.make_model("lsq", data)
    _, g = m.loss_grad(data.optimum, data.X_train, data.y_train)
    assert np.abs(g).max() < 1e-4
    assert m.evaluate(data.optimum, data.X_test, data.y_test)["loss"] < 1e-6
    assert m.evaluate(np.zeros(m.size, np.float32), data.X_test, data.y_test)["loss"] > 0.1


def test_shards_partition_the_training_set():
    data = datasets.load("digits")
    parts = [datasets.shard(data, w, 4)[1] for w in range(4)]
    assert sum(len(p) for p in parts) == len(data.y_train)
    assert abs(len(parts[0]) - len(parts[3])) <= 1
    with pytest.raises(ValueError):
        datasets.shard(data, 4, 4)


def test_compressor_paths():
    assert (plan("none").kind, plan("none").encoding, plan("none").rounding) == \
        ("switch", Encoding.INT32, "nearest")
    assert plan("int32").rounding == "stochastic"
    assert (plan("nat").encoding, plan("nat").cm) == (Encoding.NAT8, False)
    assert (plan("nat+cm").encoding, plan("nat+cm").cm) == (Encoding.NAT8, True)
    assert plan("nat9").pre == "nat9" and plan("nat9").encoding == Encoding.NAT8
    p = plan("ef+topk:k=0.1")
    assert (p.kind, p.host, p.error_feedback) == ("host", "topk:k=0.1", True)
    assert "all-gather" in p.label
    for bad, why in (("int32+cm", "NAT8"), ("topk+cm", "host fallback"), ("zzz", "unknown")):
        with pytest.raises(ValueError, match=why):
            plan(bad)


# ---- end to end ----



def test_nina_train_cnat_mlp_reaches_accuracy_and_writes_a_run_folder(tmp_path):
    """The command itself: its own switch process, 4 worker processes, C_nat, digits MLP."""
    why = local_switch_unavailable()
    if why:
        pytest.skip(why)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nina.cli", "train", "--mode", "local", "--workers", "4",
           "--compressor", "nat", "--model", "mlp", "--steps", "80", "--out", str(out),
           "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:] + p.stdout[-2000:]
    assert "epoch" in p.stdout and "retransmissions" in p.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["summary"]["final_test_accuracy"] >= 0.9
    assert m["summary"]["path"] == "switch NAT8"
    assert len(m["steps"]) == 80 and m["steps"][-1]["bytes_up"] > 0
    for f in ("metrics.csv", "loss.png", "accuracy.png", "config.json"):
        assert (out / f).stat().st_size > 0
    assert "models identical on all workers" in p.stdout


def test_models_stay_bit_identical_and_mlp_learns_with_cm(switch, tmp_path):
    cfg = TrainConfig(model="mlp", compressor="nat+cm", steps=80, lr=0.5)
    out = run_training(cfg, 3, switch, job_id=31, run_dir=str(tmp_path), log=QUIET,
                       progress=False)
    assert len(set(out.hashes)) == 1 and len(out.hashes) == 3
    assert out.summary["final_test_accuracy"] >= 0.9
    # C_M: the downlink carries 8-bit codes, so it is as small as the uplink minus retries
    assert out.summary["bytes_down"] <= 1.1 * out.summary["bytes_up"]


def test_host_fallback_with_error_feedback_keeps_models_identical(switch, tmp_path):
    cfg = TrainConfig(model="lsq", data="lsq", compressor="ef+topk:k=0.2", steps=25, lr=0.1)
    out = run_training(cfg, 2, switch, job_id=32, run_dir=str(tmp_path), log=QUIET,
                       progress=False)
    assert len(set(out.hashes)) == 1
    assert "all-gather" in out.config["path"]
    losses = [r["test_loss"] for r in out.records]
    assert losses[-1] < 0.5 * losses[0]     # f - f* shrinks
    assert out.records[0]["bytes_up"] > 0
