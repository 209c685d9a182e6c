"""Job installs (issue 16, items 1-3): a copy from an earlier installation of a job id never
joins a round of a later one; overlapping slot ranges are refused on every install path; a
refused install leaves nothing behind.

The data-plane half of item 1 is the conformance vector
`reinstalled_job_drops_copy_of_earlier_installation` (both planes); here: the rule itself,
the real all-reduce client across a re-install with held-back copies on the wire, and the
install paths of the embedded switch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nina import p4spec
from nina.config import JobSpec, WorkerAddr
from nina.decisions import Decision
from nina.install_rounds import first_round, install_cells, install_rounds, latest_round
from nina.wire import ROUND_MOD, Encoding, Header, MsgType, pack_packet, round_flags
from switch.pipeline import PacketIn, Pipeline
from switch.tables import P4Error

REPO = Path(__file__).resolve().parents[1]


# ---- the rule (nina.install_rounds) ----

def test_fresh_slot_starts_at_round_zero_and_a_used_one_after_its_latest_round():
    assert latest_round((0, 0), (0, 0)) is None and first_round((0, 0), (0, 0)) == 0
    assert first_round((2, 0), (0, 0)) == 2            # only round 0 ran
    assert first_round((2, 2), (4, 5)) == 7            # rounds 4 (v0), 5 (v1): latest 5
    assert first_round((2, 2), (6, 5)) == 8            # round 6 opened after 5
    assert first_round((2, 2), (0, 127)) == 2          # wrap: 0 follows 127
    assert first_round((2, 2), (126, 127)) == 1


def test_installed_state_admits_exactly_the_first_round_in_each_version():
    for first in range(ROUND_MOD):
        rounds, counts = install_cells([first])
        for v in (0, 1):
            # the switch's rule for an idle version with count != 0: only round[v] + 2 opens it
            nxt = (rounds[v] + 2) % ROUND_MOD
            assert counts[v] != 0 and nxt & 1 == v
            assert nxt == (first if v == first & 1 else (first + 1) % ROUND_MOD)
        # installing again over an untouched install: the earlier installation's workers may
        # have sent round `first` (its copies never arrived); round first + 1 they could send
        # only after `first` completed, which would have changed the registers. Neither round
        # the new installation admits is `first`.
        again = install_rounds(counts, rounds)[0]
        assert first not in (again, (again + 1) % ROUND_MOD)


def _spec(job_id=20, n=2, base=4, count=2, enc=Encoding.INT32, ports=(40000, 40001)):
    workers = tuple(WorkerAddr(w, f"10.0.0.{w + 1}", ports[w], port=0) for w in range(n))
    return JobSpec(job_id, n, enc, slot_base=base, slot_count=count, workers=workers)


def _update(spec, w, rnd, value, slot=0):
    return PacketIn(0, int.from_bytes(bytes([10, 0, 0, w + 1]), "big"),
                    spec.workers[w].udp_port,
                    pack_packet(Header(msg_type=MsgType.UPDATE, encoding=spec.encoding,
                                       flags=round_flags(rnd), job=spec.job_id, worker=w,
                                       exponent=120, slot=slot, count=1),
                                np.array([value], np.int32)))


def _sum(outs) -> int:
    return int(np.frombuffer(outs[0].payload[16:20], ">i4")[0])


def test_issue_scenario_every_copy_of_the_earlier_installation_is_stale():
    """Job 20 ran rounds 0..5 on slot 0; after remove + install, a copy of any of those
    rounds from either worker, arriving in any order with the new rounds, changes nothing."""
    p = Pipeline(pool_slots=64)
    spec = _spec()
    p.install_job(spec)
    old = []
    for r in range(6):
        for w in (0, 1):
            old.append(_update(spec, w, r, 1000 + r))
            p.process(old[-1])
    p.remove_job(spec.job_id)
    firsts = p.install_job(spec)
    assert firsts[0] == 7                       # latest round 5 -> 7 (v1), 8 (v0)
    for pkt in old:
        assert p.process(pkt) == []
    a = p.process(_update(spec, 0, firsts[0], 2))
    for pkt in old:
        assert p.process(pkt) == []
    b = p.process(_update(spec, 1, firsts[0], 200))
    assert a == [] and _sum(b) == 202
    assert p.counters_packets[Decision.DROP_DUPLICATE] == 2 * len(old)


def test_real_clients_across_a_reinstall_with_held_back_copies_on_the_wire():
    """The all-reduce client of a re-installed job starts where the install says; copies of
    the earlier installation's rounds sent from the same worker sockets (same addresses, as
    with fixed ports) are dropped as stale and the new sums are exact."""
    from worker.allreduce import AllReduceClient
    from switch.handles import InProcessSwitch, JobInstaller
    from worker.transport import UdpTransport
    switch = InProcessSwitch()
    ts = [UdpTransport(switch.data_addr) for _ in range(2)]
    try:
        spec = JobSpec(job_id=5, n_workers=2, encoding=Encoding.NAT8, slot_base=64,
                       slot_count=8, workers=tuple(WorkerAddr(w, *t.address)
                                                   for w, t in enumerate(ts)))
        jobs = JobInstaller(switch)

        def run(firsts, x):
            cs = [AllReduceClient(spec, w, ts[w], window=4, seed=w, peer_timeout=5,
                                  first_rounds=firsts) for w in range(2)]
            res = [None, None]
            th = threading.Thread(target=lambda: res.__setitem__(1, cs[1].allreduce(x)))
            th.start()
            res[0] = cs[0].allreduce(x)
            th.join(10)
            return res

        firsts = jobs.install(spec)
        assert firsts[:4] == [0, 0, 0, 0]       # a fresh switch: round 0 as always
        run(firsts, np.full(4 * 256, 8.0, np.float32))   # rounds 0 (priming) and 1 per slot
        firsts = jobs.install(spec)             # JobInstaller re-installs the same job id
        assert firsts[:4] == [3, 3, 3, 3]
        # worker 1's copies of the old rounds arrive before and during the new job
        stale = [pack_packet(Header(msg_type=MsgType.UPDATE, encoding=Encoding.NAT8,
                                    flags=round_flags(r), job=5, worker=1, exponent=140,
                                    slot=s, count=256), np.zeros(256, np.uint8))
                 for r in (0, 1) for s in range(4)]
        before = switch.pipeline.counters_packets[Decision.DROP_DUPLICATE]
        ts[1].send(stale)
        x = np.full(4 * 256, 0.5, np.float32)
        res = run(firsts, x)
        for r in res:
            np.testing.assert_array_equal(r.values, 2 * x)
        assert switch.pipeline.counters_packets[Decision.DROP_DUPLICATE] - before >= len(stale)
    finally:
        for t in ts:
            t.close()
        switch.stop()


# ---- item 2: overlapping slot ranges, every install path ----

def test_pipeline_refuses_overlapping_slots_and_leaves_no_trace():
    p = Pipeline(pool_slots=256)
    p.install_job(_spec(job_id=1, base=0, count=64))
    tables = {t.name: dict(p.tables.entries(t.name)) for t in p4spec.TABLES}
    for base, count in ((32, 64), (0, 1), (63, 10)):
        with pytest.raises(P4Error, match="overlap job 1's"):
            p.install_job(_spec(job_id=2, base=base, count=count, ports=(41000, 41001)))
    assert {t.name: dict(p.tables.entries(t.name)) for t in p4spec.TABLES} == tables
    assert list(p.mcast_groups) == [2]
    p.install_job(_spec(job_id=2, base=64, count=64, ports=(41000, 41001)))   # adjacent: fine


def test_refused_install_writes_nothing_and_a_failing_one_is_rolled_back():
    p = Pipeline(pool_slots=256)
    with pytest.raises(P4Error, match="not an IPv4 address"):
        p.install_job(JobSpec(3, 1, workers=(WorkerAddr(0, "10.0.0.1", 1),),
                              switch_ip="notanip"))
    with pytest.raises(P4Error, match="not a MAC address"):
        p.install_job(JobSpec(3, 1, workers=(WorkerAddr(0, "10.0.0.1", 1),),
                              switch_mac="zz"))
    with pytest.raises(P4Error, match="share the address"):
        p.install_job(JobSpec(3, 2, workers=(WorkerAddr(0, "10.0.0.1", 1),
                                             WorkerAddr(1, "10.0.0.1", 1))))
    assert not p.mcast_groups and all(not p.tables.entries(t.name) for t in p4spec.TABLES)
    # a write the tables refuse half-way (a leftover admission entry of job 3) is undone
    p.tables.insert(p4spec.WORKER_TABLE.name, (3, 1, 0, 0x0A000002, 2))
    with pytest.raises(P4Error, match="already exists"):
        p.install_job(JobSpec(3, 2, workers=(WorkerAddr(0, "10.0.0.1", 1),
                                             WorkerAddr(1, "10.0.0.2", 2))))
    assert not p.mcast_groups and not p.tables.entries(p4spec.WORKER_ADDR.name)
    assert list(p.tables.entries(p4spec.WORKER_TABLE.name)) == [(3, 1, 0, 0x0A000002, 2)]


def test_switch_jobs_file_with_overlapping_slots_is_one_error_line(tmp_path):
    jobs = [{"job_id": 1, "n_workers": 1, "slot_base": 0, "slot_count": 64,
             "workers": [{"wid": 0, "ip": "127.0.0.1", "udp_port": 41000}]},
            {"job_id": 2, "n_workers": 1, "slot_base": 32, "slot_count": 64,
             "workers": [{"wid": 0, "ip": "127.0.0.1", "udp_port": 41001}]}]
    f = tmp_path / "jobs.json"
    f.write_text(json.dumps(jobs))
    r = subprocess.run([sys.executable, "-m", "nina.cli", "switch", "--listen", "127.0.0.1:0",
                        "--jobs", str(f)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"nina switch: error: cannot load jobs from {f}: job 2: slots [32, 96) overlap "
        f"job 1's [0, 64)"]
