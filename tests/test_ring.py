"""The host ring all-reduce baseline (worker/ring.py): real processes over TCP on loopback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

from worker.ring import task_tensor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_ring_of_processes_sums_and_sends_the_ring_volume():
    n, size = 3, 10_007                      # segments of unequal length
    ports = _ports(n)
    procs = [subprocess.Popen([sys.executable, "-m", "worker.ring", "--rank", str(r), "--n",
                               str(n), "--listen", f"127.0.0.1:{ports[r]}", "--right",
                               f"127.0.0.1:{ports[(r + 1) % n]}", "--size", str(size),
                               "--repeat", "2", "--timeout", "30"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(n)]
    outs = [p.communicate(timeout=90) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    res = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    for r in res:
        assert r["max_rel_err"] < 1e-6
        # 2 (n-1)/n of the tensor per call, float32
        assert abs(r["bytes_sent"] - 2 * 2 * (n - 1) / n * size * 4) <= 2 * 2 * (n - 1) * 4
    want = sum(task_tensor(size, 0, w).astype(np.float64) for w in range(n))
    assert np.isfinite(want).all()


def test_ring_cli_bad_arguments_give_one_line_errors():
    r = subprocess.run([sys.executable, "-m", "worker.ring", "--rank", "3", "--n", "2",
                        "--listen", "127.0.0.1:1", "--right", "127.0.0.1:2"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "rank" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "worker.ring", "--rank", "0", "--n", "2",
                        "--listen", "nohost", "--right", "127.0.0.1:2"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "IP:PORT" in r.stderr
