"""A coordinator with workers it did not start (docker-compose.yml's worker services), on
loopback: the workers are started first with a fixed --coord address and --serve, the
coordinator binds that address, installs each job on the switch and the same workers serve
both demo jobs (C_nat, then INT32), then leave on their own."""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys

import pytest

from jobs import runner as launch
from switch.handles import InProcessSwitch, local_switch_unavailable
from nina.procs import REPO, free_port, stop_process
from jobs.runner import external_worker

QUIET = lambda *a, **k: None  # noqa: E731


def _start_workers(n: int, coord_port: int, tmp_path, udp_ports=None):
    procs = []
    for r in range(n):
        cmd = [sys.executable, "-m", "worker.worker_proc", "--coord",
               f"tcp://127.0.0.1:{coord_port}", "--ip", "127.0.0.1", "--rank", str(r),
               "--serve", "--join-timeout", "60"]
        if udp_ports:
            cmd += ["--udp-port", str(udp_ports[r])]
        log = open(tmp_path / f"external-worker{r}.log", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=REPO))
    return procs


def _finish(procs, tmp_path) -> list[int]:
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(30))
        except subprocess.TimeoutExpired:
            stop_process(p)
            codes.append(None)
    if any(c != 0 for c in codes):
        for r in range(len(procs)):
            print((tmp_path / f"external-worker{r}.log").read_text()[-1500:])
    return codes


def test_coordinator_runs_two_jobs_with_workers_it_did_not_start(tmp_path, monkeypatch):
    from jobs.demo import run_demo
    monkeypatch.setattr(launch, "EXTERNAL_JOIN_TIMEOUT", 60.0)   # fail fast, not in 10 min
    port = free_port()
    procs = _start_workers(2, port, tmp_path)        # before the coordinator exists
    switch = InProcessSwitch()
    args = argparse.Namespace(workers=2, steps=6, model="mlp", loss=0.0,
                              compressors="nat,int32", out=str(tmp_path / "run"),
                              runs_dir=str(tmp_path), no_progress=True)
    try:
        rc = run_demo(args, switch=switch, spawn=external_worker, log=QUIET,
                      coord_ip="127.0.0.1", coord_port=port)
    finally:
        switch.stop()
        codes = _finish(procs, tmp_path)
    assert rc == 0
    # the same two processes served both jobs, then left because the last bye said so
    assert codes == [0, 0]
    rows = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert [r["compressor"] for r in rows] == ["nat", "int32"]
    for r in rows:
        assert r["steps"] == 6 and r["bytes_up"] > 0 and r["packets_up"] > 0
    # NAT8 puts 4x the elements of INT32 in a packet
    assert rows[1]["packets_up"] > 3 * rows[0]["packets_up"]


def test_a_serving_worker_leaves_when_no_coordinator_comes(tmp_path):
    p = subprocess.run([sys.executable, "-m", "worker.worker_proc", "--coord",
                        f"tcp://127.0.0.1:{free_port()}", "--serve", "--join-timeout", "3"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2
    assert "did not send 'welcome'" in p.stderr and "Traceback" not in p.stderr


def test_nina_demo_on_a_switch_process_with_external_workers(tmp_path):
    """docker-compose.yml on loopback: `nina switch` as its own process, worker processes with
    fixed UDP ports, `nina demo --switch --grpc --external-workers --coord-bind`."""
    why = local_switch_unavailable()
    if why:
        pytest.skip(why)
    import numpy as np

    from nina.decisions import TRACE_DTYPE
    from topology.runenv import wait_tcp
    udp, grpc, coord = free_port(socket.SOCK_DGRAM), free_port(), free_port()
    trace = tmp_path / "switch" / "switch.trace"
    sw_log = open(tmp_path / "switch.log", "w")
    switch = subprocess.Popen([sys.executable, "-m", "nina.cli", "switch", "--mode", "local",
                               "--listen", f"127.0.0.1:{udp}", "--grpc", f"127.0.0.1:{grpc}",
                               "--trace", str(trace)], stdout=sw_log,
                              stderr=subprocess.STDOUT, cwd=REPO)
    procs = _start_workers(2, coord, tmp_path,
                           udp_ports=[free_port(socket.SOCK_DGRAM) for _ in range(2)])
    try:
        wait_tcp(f"127.0.0.1:{grpc}", switch, 60.0, "nina switch", str(tmp_path / "switch.log"))
        r = subprocess.run([sys.executable, "-m", "nina.cli", "demo", "--workers", "2",
                            "--steps", "6", "--switch", f"127.0.0.1:{udp}",
                            "--grpc", f"127.0.0.1:{grpc}", "--external-workers",
                            "--coord-bind", f"127.0.0.1:{coord}", "--out",
                            str(tmp_path / "demo"), "--no-progress"],
                           capture_output=True, text=True, timeout=240, cwd=REPO)
    finally:
        codes = _finish(procs, tmp_path)
        stop_process(switch)
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0
    assert "waiting for 2 external workers to join tcp://127.0.0.1:" in r.stdout
    assert "bit/el up" in r.stdout and "train s" in r.stdout
    assert codes == [0, 0]
    assert (tmp_path / "demo" / "comparison.csv").exists()
    # the switch process saw the demo's packets: its trace holds both jobs
    recs = np.fromfile(trace, TRACE_DTYPE)
    assert set(np.unique(recs["job"])) >= {1, 2}


def test_demo_refuses_half_an_external_switch_in_one_line():
    r = subprocess.run([sys.executable, "-m", "nina.cli", "demo", "--switch", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--switch and --grpc go together" in r.stderr
    r = subprocess.run([sys.executable, "-m", "nina.cli", "demo", "--external-workers"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "needs the switch they send to" in r.stderr


def test_macs_from_arp_fill_the_job_for_an_ethernet_switch():
    from nina.wire import Encoding
    from topology.demo_cli import arp_spec_factory, read_arp
    from nina.jobmsg import JobAborted

    class M:
        def __init__(self, wid, ip):
            self.wid, self.udp = wid, (ip, 48865)
    table = {"172.29.77.11": "02:42:ac:1d:4d:0b", "172.29.77.12": "02:42:ac:1d:4d:0c",
             "172.29.77.3": "02:42:ac:1d:4d:03"}
    make = arp_spec_factory("172.29.77.3", arp=lambda: table)
    spec = make(1, 2, Encoding.NAT8, False, 0.0, [M(0, "172.29.77.11"), M(1, "172.29.77.12")])
    assert [w.mac for w in spec.workers] == ["02:42:ac:1d:4d:0b", "02:42:ac:1d:4d:0c"]
    assert spec.switch_mac == "02:42:ac:1d:4d:03" and spec.switch_ip == "172.29.77.3"
    with pytest.raises(JobAborted, match="172.29.77.13"):
        make(1, 1, Encoding.NAT8, False, 0.0, [M(0, "172.29.77.13")])
    assert isinstance(read_arp(), dict)
