"""The Mininet rack on BMv2 (simple_switch_grpc running p4/build/nina.json): all-reduces through
the P4 program are exact (INT32, NAT8 with C_M, NAT8 with results in parts), the P4 trace clones reach the monitor port
and become a switch.trace that `nina trace summary` reads with one record per processed packet
(decision totals equal the switch's own counters, one COMPLETE per round), --no-trace makes no
monitor port, and the teardown leaves no interface or process behind. The collector itself is
also checked alone on a veth pair with hand-made frames (needs root only).

Needs root, Mininet and simple_switch_grpc on PATH; skipped with the reason printed otherwise."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from rackcheck import pid_alive, rack_intfs

from nina.decisions import TRACE_DTYPE, TRACE_ETHERTYPE, TRACE_WIRE_DTYPE, Decision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
WINDOW = 8


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (Mininet namespaces, veths, raw sockets)"
    if shutil.which("simple_switch_grpc") is None:
        return "simple_switch_grpc is not on PATH (build p4lang/behavioral-model)"
    try:
        import mininet.net  # noqa: F401
    except Exception as e:
        return f"mininet not importable ({type(e).__name__}: {e}; apt-get install mininet)"
    from topology.mininet_rack import BMV2_JSON_PATH, P4INFO_PATH
    for path in (BMV2_JSON_PATH, P4INFO_PATH):
        if not os.path.exists(path):
            return f"{path} is missing (p4c output of p4/nina.p4: make p4)"
    return None


SKIP = _skip_reason()
if SKIP:
    print(f"SKIP reason (test_rack_bmv2): {SKIP}")
pytestmark = pytest.mark.root
needs_bmv2_rack = pytest.mark.skipif(SKIP is not None, reason=str(SKIP))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (veths, raw sockets)")


def _settled_counters(ctl, timeout: float = 10.0) -> dict:
    """The decision counters once two reads half a second apart agree (BMv2 may still be
    working through packets queued before the job ended)."""
    last = ctl.read_counters()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = ctl.read_counters()
        if now == last:
            return now
        last = now
    return last


def _rounds(size: int, k: int) -> int:
    """Aggregation rounds of one all-reduce: one per chunk plus the priming of the first
    window (a priming round completes like any other)."""
    chunks = math.ceil(size / k)
    return chunks + min(WINDOW, chunks)


@needs_root
def test_collector_keeps_exactly_the_trace_frames_in_order(tmp_path):
    """Trace frames sent into one end of a veth come out of the other as the same records in
    the file's byte order; other ethertypes and short frames are not records."""
    import socket

    from switch.trace_file import TraceWriter, read_all
    from topology.trace_capture import Capture, open_socket
    a, b = "ninacap0", "ninacap1"
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for n in (a, b):
            from topology.monitor import _disable_ipv6
            _disable_ipv6(n)
            subprocess.run(["ip", "link", "set", n, "up"], check=True)
        rng = np.random.default_rng(1)
        recs = np.zeros(300, TRACE_WIRE_DTYPE)
        for name in ("time_ns", "job", "slot", "bitmap", "offset"):
            recs[name] = rng.integers(0, 1 << 16, len(recs)) + (1 << 40 if name == "time_ns"
                                                                else 0)
        recs["elements"] = rng.integers(0, 257, len(recs))   # what a record can hold
        recs["decision"] = rng.integers(0, len(Decision), len(recs))
        eth = bytes(6) + bytes.fromhex("020000000001")
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind((b, 0))
        cap_sock = open_socket(a)
        with TraceWriter(tmp_path / "t.trace") as w:
            cap = Capture(cap_sock, w)
            for i, r in enumerate(recs):
                tx.send(eth + TRACE_ETHERTYPE.to_bytes(2, "big") + r.tobytes()
                        + bytes(14))                          # padding after the record
                if i % 100 == 0:
                    tx.send(eth + (0x0800).to_bytes(2, "big") + bytes(46))   # not a trace
                    tx.send(eth + TRACE_ETHERTYPE.to_bytes(2, "big") + bytes(20))  # short
            time.sleep(0.2)
            cap.drain()
        tx.close()
        cap_sock.close()
        got = read_all(tmp_path / "t.trace")
        assert got.dtype == TRACE_DTYPE and len(got) == len(recs)
        assert (got == recs.astype(TRACE_DTYPE)).all()
        assert cap.malformed == 3 and cap.drops == 0
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


@needs_bmv2_rack
def test_bmv2_rack_exact_allreduces_and_trace_from_the_monitor_port(tmp_path):
    from switch.trace_tools import summarize
    from topology.impair import LinkShape
    from topology.rack_jobs import run_allreduce
    from topology.mininet_rack import MininetRack

    rack = MininetRack(WORKERS, LinkShape(), switch_kind="bmv2", run_dir=str(tmp_path),
                       trace=True, log=print)
    with rack:
        # frames the hosts sent while the pipeline was loaded but before the clone session
        # existed are counted and cannot be traced (a handful, link-up traffic): the trace is
        # checked against what the counters added from here on
        at_start = _settled_counters(rack.controller)
        assert rack.switch.monitor_port == WORKERS + 2
        assert f"{WORKERS + 2}@s1-mon" in " ".join(rack.switch.command())
        pids = [n.pid for n in rack.net.hosts + rack.net.switches if n.pid]
        pids += [rack.switch.proc.pid, rack.monitor.proc.pid]
        int32 = run_allreduce(rack, size=3000, encoding="int32", window=WINDOW, log=print)
        print(int32.summary())
        assert int32.exact, int32.problems
        nat8 = run_allreduce(rack, size=2048, encoding="nat8", cm=True, window=WINDOW,
                             log=print)
        print(nat8.summary())
        assert nat8.exact, nat8.problems
        # NAT8 without C_M: results in two parts of 128 sums; the last chunk (100 elements)
        # has part 0 only
        parts = run_allreduce(rack, size=2148, encoding="nat8", window=WINDOW, log=print)
        print(parts.summary())
        assert parts.exact, parts.problems
        counters = _settled_counters(rack.controller)
        pids += [p.pid for p in rack._procs.values()]
    # teardown: nothing of the rack is left, and the collector wrote its index
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (rack_intfs(WORKERS) or any(map(pid_alive, pids))):
        time.sleep(0.1)
    assert rack_intfs(WORKERS) == []
    assert [p for p in pids if pid_alive(p)] == []
    assert (tmp_path / "switch.trace.json").exists()
    log = (tmp_path / "trace-capture.log").read_text()
    assert "LOST" not in log, log

    s = summarize(tmp_path / "switch.trace", progress=False)
    per_job = {}
    for (job, _w), c in s.per_worker.items():
        per_job[job] = per_job.get(job, 0) + c
    rounds = {int32.job_id: _rounds(3000, 64), nat8.job_id: _rounds(2048, 256),
              parts.job_id: _rounds(2148, 256)}
    for job, n_rounds in rounds.items():
        c = per_job[job]
        assert c[Decision.COMPLETE] == n_rounds, (job, c)
        assert c[Decision.FIRST] == n_rounds, (job, c)
        for w in range(WORKERS):       # every worker contributed exactly once per round
            cw = s.per_worker[(job, w)]
            assert cw[Decision.FIRST] + cw[Decision.AGGREGATE] + cw[Decision.COMPLETE] \
                == n_rounds, (job, w, cw)
    # one record per processed NINA packet: the trace's totals are the switch's counters
    for d in Decision:
        added = counters[d.name][0] - at_start[d.name][0]
        if d == Decision.FORWARDED:
            assert s.forwarded >= added > 0   # the coordinator's TCP, at least
            continue
        traced = sum(int(c[d]) for c in per_job.values())
        assert traced == added, (d.name, traced, counters[d.name], at_start[d.name])

    r = subprocess.run([sys.executable, "-m", "nina.cli", "trace", "summary", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    assert f"rounds completed: {sum(rounds.values())}" in r.stdout


@needs_bmv2_rack
def test_bmv2_rack_cli_without_trace_has_no_monitor_port(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nina.cli", "rack", "--mode", "mininet",
                        "--switch", "bmv2", "--workers", "1", "--no-trace", "--run-dir",
                        str(tmp_path), "--run", "hosts",
                        "--run", "allreduce --size 500 --encoding int32 --window 4",
                        "--run", "counters"],
                       capture_output=True, text=True, timeout=150, cwd=REPO)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EXACT" in r.stdout and "COMPLETE" in r.stdout
    assert "s1-mon" not in r.stdout
    assert not (tmp_path / "switch.trace").exists()
    assert rack_intfs(1) == []
