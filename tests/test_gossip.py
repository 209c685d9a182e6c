"""Decentralized training: graphs and their weights, the gossip algorithms on a consensus
problem over real UDP datagrams (exact gossip, PowerGossip, Choco-SGD), lost and missing
messages, and decentralized jobs of worker processes (a ring reaching an accuracy, a killed
worker named in the error)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from nina import gossip_wire as gw
from nina.jobmsg import JobAborted
from worker.gossip import PowerGossip, make_gossip
from worker.gossip_graph import GraphError, make_graph
from worker.gossip_local import LocalGroup
from worker.gossip_net import GossipError

QUIET = lambda *a, **k: None  # noqa: E731
SHAPES = [(12, 8), (8,)]          # one matrix (gossiped low-rank) and one bias (exact)


# ---- graphs ----

@pytest.mark.parametrize("name,n", [("ring", 8), ("torus", 16), ("torus", 6), ("complete", 5),
                                    ("random", 12)])
def test_metropolis_weights_are_symmetric_and_doubly_stochastic(name, n):
    g = make_graph(name, n, seed=3)
    W = g.matrix()
    assert np.allclose(W, W.T) and np.allclose(W.sum(1), 1.0) and (W >= 0).all()
    assert all(W[i, j] > 0 for i, j in g.edges)
    assert 0 < g.spectral_gap() <= 1
    if name == "ring":
        assert all(g.degree(i) == 2 for i in range(n))
    if name == "torus" and n == 16:
        assert all(g.degree(i) == 4 for i in range(n))
    if name == "random":
        assert all(g.degree(i) == 3 for i in range(n))


def test_impossible_topologies_are_clear_errors():
    with pytest.raises(GraphError, match="torus: 7 workers"):
        make_graph("torus", 7)
    with pytest.raises(GraphError, match="n \\* d even"):
        make_graph("random", 7, degree=3)
    with pytest.raises(GraphError, match="unknown topology"):
        make_graph("star", 4)
    with pytest.raises(GraphError, match="at least 2"):
        make_graph("ring", 1)


# ---- consensus over real datagrams ----

def _start(w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + w)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def consensus(graph, algorithm, steps, **kw):
    """Every worker starts from its own random tensors and only gossips. Returns per step the
    consensus distance and the sum of the models, and the workers' nets and algorithms."""
    with LocalGroup(graph) as grp:
        def body(w, net):
            X = _start(w)
            algo = make_gossip(algorithm, graph, w, net, **kw)
            hist, stats = [[x.copy() for x in X]], []
            for _ in range(steps):
                stats.append(algo.step(X))
                hist.append([x.copy() for x in X])
            return hist, stats, algo, net.totals(), dict(net.edges)
        res = grp.run(body)
    dist, total = [], []
    for s in range(steps + 1):
        flat = np.stack([np.concatenate([t.ravel() for t in r[0][s]]) for r in res]) \
            .astype(np.float64)
        avg = flat.mean(0)
        dist.append(float(((flat - avg) ** 2).sum(1).mean()))
        total.append(flat.sum(0))
    return dist, total, res


@pytest.mark.parametrize("algorithm,kw,per10", [("exact", {}, 0.05),
                                                ("powergossip", {"rank": 1}, 0.7),
                                                ("powergossip", {"rank": 2}, 0.5)])
def test_consensus_distance_decreases_geometrically(algorithm, kw, per10):
    dist, _, _ = consensus(make_graph("ring", 8), algorithm, 40, **kw)
    ratios = [dist[s + 10] / dist[s] for s in range(0, 40, 10)]
    assert all(r <= per10 for r in ratios), ratios          # every 10 steps, by this factor
    assert dist[40] <= per10 ** 4 * dist[0] * 1.0001


@pytest.mark.parametrize("algorithm,kw", [("exact", {}), ("powergossip", {"rank": 1}),
                                          ("powergossip", {"rank": 2, "iterations": 2}),
                                          ("choco", {"compressor": "topk:k=0.2", "gamma": 0.4})])
def test_gossip_keeps_the_average_of_the_models(algorithm, kw):
    dist, total, _ = consensus(make_graph("ring", 6), algorithm, 15, **kw)
    assert dist[-1] < 0.8 * dist[0]
    for t in total[1:]:
        assert np.allclose(t, total[0], rtol=0, atol=2e-4 * np.abs(total[0]).max()), \
            np.abs(t - total[0]).max()


def test_powergossip_moves_exactly_the_projected_difference():
    """Both ends of an edge apply the same matrix with opposite signs: after one step of a
    two-worker graph, X0 + X1 is unchanged and X0 - X1 lost its component along the shared
    (orthonormalised, seeded) factor."""
    g = make_graph("complete", 2)
    _, total, res = consensus(g, "powergossip", 1, rank=1)
    rng = np.random.default_rng([0, 0, 1, 0])      # seed, edge (0, 1), layer 0: p then q
    rng.standard_normal((12, 1))
    q = rng.standard_normal((8, 1)).astype(np.float64)
    q /= np.linalg.norm(q)
    (a0, _), (a1, _) = res[0][0][0], res[1][0][0]
    (x0, _), (x1, _) = res[0][0][1], res[1][0][1]
    D = (a0 - a1).astype(np.float64)
    w = g.weight(0, 1)
    want = D - 2 * w * D @ q @ q.T
    assert np.allclose(x0 - x1, want, atol=1e-4)
    assert np.allclose(x0 + x1, a0 + a1, atol=1e-5)


@pytest.mark.parametrize("algorithm,kw", [("exact", {}), ("powergossip", {"rank": 2}),
                                          ("powergossip", {"rank": 1, "iterations": 2}),
                                          ("choco", {"compressor": "topk:k=0.1"})])
def test_bytes_counted_are_the_bytes_on_the_wire(algorithm, kw):
    """What each worker counts as sent equals what its neighbours' sockets received, datagram
    for datagram, and equals the message size of the algorithm plus the gossip headers."""
    g = make_graph("ring", 4)
    steps = 5
    _, _, res = consensus(g, algorithm, steps, **kw)
    for w, (_, stats, algo, tot, edges) in enumerate(res):
        assert tot.resent == 0 and tot.nacks_out == 0         # loopback, nothing lost
        for j in g.neighbours(w):
            assert edges[j].bytes_out == res[j][4][w].bytes_in
            assert edges[j].datagrams_out == res[j][4][w].datagrams_in
        assert sum(s["bytes_up"] for s in stats) == tot.bytes_out
        assert sum(s["bytes_down"] for s in stats) == tot.bytes_in
    # the size of every message, from the algorithm's own formula
    probe = res[0][2]
    if algorithm == "powergossip":
        per_step = []
        for s in range(steps):
            probe.t = s * kw.get("iterations", 1)
            per_step.append(probe.message_bytes(SHAPES))
        r, it = kw["rank"], kw.get("iterations", 1)
        # rank r products of the 12 x 8 matrix alternate X q (12 r) and X^T p (8 r); the
        # bias goes whole once per step
        first = [4 * r * (12 if (s * it + k) % 2 == 0 else 8) for s in range(steps)
                 for k in range(it)]
        assert sum(per_step) == sum(first) + steps * 4 * 8
        payload = per_step
        datagrams = [gw.chunk_count(b) for b in payload]   # one message per power step
    else:
        payload = [probe.message_bytes(SHAPES)] * steps
        datagrams = [gw.chunk_count(b) for b in payload]
        if algorithm == "exact":
            assert payload[0] == 4 * (12 * 8 + 8)
    its = kw.get("iterations", 1) if algorithm == "powergossip" else 1
    headers = sum(datagrams) * gw.HEADER.size if its == 1 else None
    tot0 = res[0][3]
    if headers is not None:
        assert tot0.bytes_out == 2 * (sum(payload) + headers)   # two neighbours on the ring
    else:
        assert tot0.bytes_out == 2 * (sum(payload) + steps * its * gw.HEADER.size)


def test_a_lost_datagram_is_recovered_and_changes_nothing():
    """Datagrams dropped at the sender (really not sent) are asked for again with a NACK and
    resent: the models end bit-identical to a run without loss."""
    g = make_graph("ring", 4)
    clean = consensus(g, "powergossip", 6, rank=1)[2]
    lost: set = set()
    with LocalGroup(g, resend=0.05) as grp:
        for w, net in enumerate(grp.nets):
            def drop(dst, rnd, chunk, w=w):
                key = (w, dst, rnd, chunk)
                if rnd in (2, 4) and key not in lost:
                    lost.add(key)
                    return True
                return False
            net.drop = drop

        def body(w, net):
            X = _start(w)
            algo = make_gossip("powergossip", g, w, net, rank=1)
            for _ in range(6):
                algo.step(X)
            return X, net.totals()
        res = grp.run(body)
    assert lost
    assert sum(t.resent for _, t in res) >= len(lost)
    assert sum(t.recovery_bytes for _, t in res) > sum(t.resent for _, t in res) * gw.HEADER.size
    for w, (X, _) in enumerate(res):
        for a, b in zip(X, clean[w][0][-1]):
            assert np.array_equal(a, b)


def test_a_silent_neighbour_is_an_error_naming_it():
    g = make_graph("ring", 4)
    with LocalGroup(g, timeout=1.0, resend=0.1) as grp:
        def body(w, net):
            X = _start(w)
            algo = make_gossip("exact", g, w, net)
            for s in range(5):
                if w == 2 and s == 3:
                    return "left"       # worker 2 stops answering
                algo.step(X)
        t0 = time.monotonic()
        with pytest.raises(GossipError) as e:
            grp.run(body)
    msg = str(e.value)
    assert "worker 2" in msg and "round 3" in msg and "within 1 s" in msg
    assert time.monotonic() - t0 < 10


def test_bad_gossip_parameters_are_clear_errors():
    g = make_graph("ring", 4)
    with LocalGroup(g) as grp:
        with pytest.raises(ValueError, match="rank 0"):
            PowerGossip(g, 0, grp.nets[0], rank=0)
        with pytest.raises(ValueError, match="unknown gossip algorithm"):
            make_gossip("dpsgd", g, 0, grp.nets[0])
        with pytest.raises(ValueError, match="unknown compressor"):
            make_gossip("choco", g, 0, grp.nets[0], compressor="zip")


# ---- decentralized jobs: worker processes, the job runner ----

def test_powergossip_ring_job_reaches_accuracy(tmp_path):
    """4 worker processes on a ring, PowerGossip rank 1 on the digits MLP: the averaged model
    reaches 0.9 test accuracy in 80 steps; every worker is close and their models differ."""
    from jobs.runner import run_training
    from worker.train import TrainConfig
    cfg = TrainConfig(model="mlp", steps=80, lr=0.5, algorithm="powergossip", topology="ring",
                      rank=1, eval_every=20)
    out = run_training(cfg, 4, None, run_dir=str(tmp_path), log=QUIET, progress=False)
    s = out.summary
    assert s["final_test_accuracy"] >= 0.9, s
    assert s["worker_accuracy_worst"] >= 0.85, s
    assert s["consensus_distance"] > 0 and len(set(out.hashes)) == 4
    assert s["path"] == "PowerGossip rank 1 x1 on a ring"
    # every datagram sent was received, but for NACKs (header only) that may reach a
    # neighbour after its last step on a loaded machine
    assert 0 <= s["bytes_up"] - s["bytes_down"] <= 32 * gw.HEADER.size, s
    assert set(s["edge_bytes"]) == {"0->1", "1->0", "1->2", "2->1", "2->3", "3->2", "3->0",
                                    "0->3"}
    assert sum(s["edge_bytes"].values()) == s["bytes_up"]
    evals = [r for r in out.records if "consensus_distance" in r]
    assert [r["step"] for r in evals] == [20, 40, 60, 80]


def test_a_killed_gossip_worker_ends_the_job_naming_it(tmp_path):
    from jobs.runner import run_training
    from worker.train import TrainConfig
    cfg = TrainConfig(model="logreg", steps=400, algorithm="exact", topology="ring",
                      timeout=5.0, eval_every=50)
    victim = {}

    def on_step(row, procs):
        if row["step"] == 3 and not victim:
            victim["pid"] = procs[2].pid
            victim["t"] = time.monotonic()
            os.kill(procs[2].pid, signal.SIGKILL)
    with pytest.raises(JobAborted) as e:
        run_training(cfg, 4, None, run_dir=str(tmp_path), log=QUIET, progress=False,
                     on_step=on_step)
    assert victim, "the job never reached step 3"
    assert time.monotonic() - victim["t"] < cfg.timeout + 10
    msg = str(e.value)
    assert "worker 2" in msg and f"pid {victim['pid']}" in msg, msg


def test_a_bad_decentralized_job_fails_before_starting_workers(tmp_path):
    from jobs.runner import run_training
    from worker.train import TrainConfig
    with pytest.raises(JobAborted, match="torus: 5 workers"):
        run_training(TrainConfig(algorithm="exact", topology="torus"), 5, None,
                     run_dir=str(tmp_path), log=QUIET, progress=False)
    assert not any(p.name.startswith("worker") for p in tmp_path.iterdir())


@pytest.mark.parametrize("argv,why", [
    (["--algorithm", "exact", "--topology", "torus", "--workers", "5"], "torus: 5 workers"),
    (["--algorithm", "powergossip", "--compressor", "topk"], "--compressor is for allreduce"),
    (["--algorithm", "exact", "--loss", "0.1"], "--switch, --grpc and --loss")])
def test_nina_train_rejects_bad_gossip_options_in_one_line(argv, why):
    import subprocess
    import sys
    from nina.procs import REPO
    p = subprocess.run([sys.executable, "-m", "nina.cli", "train", *argv, "--no-progress"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_decentralized_configs_are_checked_before_a_job_starts():
    from worker.train import TrainConfig, check_decentralized
    for cfg, why in ((TrainConfig(algorithm="exact", gamma=1.5), "must be in \\(0, 1\\]"),
                     (TrainConfig(algorithm="choco", compressor="zip"), "unknown compressor"),
                     (TrainConfig(algorithm="gossip"), "unknown algorithm"),
                     (TrainConfig(algorithm="powergossip", rank=0), "rank 0"),
                     (TrainConfig(algorithm="exact", topology="random", degree=3), "even")):
        with pytest.raises(ValueError, match=why):
            check_decentralized(cfg, 5)
    check_decentralized(TrainConfig(algorithm="choco", compressor="topk:k=0.1"), 5)
