"""Job coordination over pyzmq: rendezvous, ids, model broadcast, barriers, metrics, aborts."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from jobs.coordinator import Coordinator
from nina.jobmsg import JobAborted
from worker.link import WorkerLink
from jobs.runner import run_training
from worker.train import TrainConfig

QUIET = lambda *a, **k: None  # noqa: E731


def _worker(endpoint, rank, results, steps=3, beat=True, stall_after=None):
    """A thread playing a worker process's part of the protocol."""
    link = WorkerLink(endpoint, timeout=10)
    try:
        link.send({"t": "hello", "udp": ["127.0.0.1", 1000 + rank],
                   "gather": ["127.0.0.1", 2000 + rank], "pid": 1, "host": "h", "rank": rank})
        welcome, blob = link.expect("welcome")
        link.wid = welcome["wid"]
        if beat:
            link.start_heartbeat()
        results[rank] = {"welcome": welcome,
                         "model": np.frombuffer(blob, np.float32).copy()}
        link.send({"t": "ready"})
        link.barrier("start")
        for t in range(steps):
            link.send({"t": "metrics", "rec": {"step": t + 1, "wid": link.wid}})
            if stall_after is not None and t + 1 >= stall_after:
                link._stop.set()            # heartbeats stop: the process "hangs"
                results[rank]["abort"] = link.expect("never", timeout=20)
            time.sleep(0.01)
        link.send({"t": "done", "hash": "h0"})
        link.expect("bye")
    except JobAborted as e:
        results[rank]["abort"] = str(e)
    finally:
        link.close()


def test_rendezvous_ranks_model_broadcast_barrier_and_metrics():
    n = 3
    coord = Coordinator(n, log=QUIET)
    got, results = [], {}
    coord.on_metrics = lambda wid, rec: got.append((wid, rec["step"]))
    threads = [threading.Thread(target=_worker, args=(coord.endpoint, r, results))
               for r in (2, 0, 1)]        # arrival order differs from the requested ranks
    for t in threads:
        t.start()
    try:
        members = coord.rendezvous(timeout=20)
        assert [m.udp[1] for m in members] == [1000, 1001, 1002]   # ids follow ranks
        model = np.arange(10, dtype=np.float32)
        coord.welcome({"task": {"kind": "train"}}, model)
        coord.wait_ready(timeout=20)
        coord.barrier("start", timeout=20)
        done = coord.wait_done(timeout=20)
    finally:
        for t in threads:
            t.join(20)
        coord.close()
    assert sorted(done) == [0, 1, 2]
    assert sorted(got) == [(w, s) for w in range(3) for s in (1, 2, 3)]
    for r in range(3):
        assert results[r]["welcome"]["wid"] == r
        np.testing.assert_array_equal(results[r]["model"], model)
        assert results[r]["welcome"]["peers"]["1"] == ["127.0.0.1", 2001]


def test_silent_worker_aborts_the_job_with_its_name():
    n = 2
    coord = Coordinator(n, log=QUIET, heartbeat_timeout=1.0)
    coord.on_metrics = lambda wid, rec: None
    results = {}
    threads = [threading.Thread(target=_worker, args=(coord.endpoint, 0, results, 50)),
               threading.Thread(target=_worker, args=(coord.endpoint, 1, results, 50, True, 2))]
    for t in threads:
        t.start()
    try:
        coord.rendezvous(timeout=20)
        coord.welcome({"task": {"kind": "train"}}, np.zeros(1, np.float32))
        coord.wait_ready(timeout=20)
        coord.barrier("start", timeout=20)
        t0 = time.monotonic()
        with pytest.raises(JobAborted, match=r"worker 1 .*stopped answering"):
            coord.wait_done(timeout=30)
        assert time.monotonic() - t0 < 10
    finally:
        for t in threads:
            t.join(20)
        coord.close()
    # every worker learns the reason
    assert "worker 1" in results[0]["abort"] and "stopped answering" in results[0]["abort"]


def test_rendezvous_timeout_says_how_many_joined():
    coord = Coordinator(3, log=QUIET)
    try:
        with pytest.raises(JobAborted, match="only 0 of 3 workers joined"):
            coord.rendezvous(timeout=0.5)
    finally:
        coord.close()




def test_killed_worker_ends_the_job_with_a_clear_error(switch, tmp_path):
    """A worker process killed mid-training: the job ends (no hang) naming that worker, and the
    other workers' processes exit."""
    cfg = TrainConfig(model="logreg", compressor="nat", steps=400, timeout=5.0)
    victim = {}

    def on_step(row, procs):
        if row["step"] == 3 and not victim:
            victim["pid"] = procs[1].pid
            victim["t"] = time.monotonic()
            os.kill(procs[1].pid, signal.SIGKILL)
    procs_seen = []

    def spawn(endpoint, wid, log_path):
        from jobs.runner import spawn_local_worker
        p = spawn_local_worker(endpoint, wid, log_path)
        procs_seen.append(p)
        return p
    with pytest.raises(JobAborted) as e:
        run_training(cfg, 3, switch, job_id=41, run_dir=str(tmp_path), log=QUIET,
                     progress=False, on_step=on_step, spawn=spawn)
    assert victim, "the job never reached step 3"
    assert time.monotonic() - victim["t"] < cfg.timeout + 10
    msg = str(e.value)
    assert "worker 1" in msg and f"pid {victim['pid']}" in msg and "signal 9" in msg
    for p in procs_seen:          # nobody is left running
        assert p.poll() is not None
    assert all(p.returncode != 0 for p in procs_seen)
