"""Faults: lossy/duplicating/reordering links, a worker killed mid-job, the switch restarted
mid-job. Real worker processes (worker/worker_proc.py) run real jobs through the job runner
(jobs/runner.py) and a real switch; every result is checked by jobs/check.py against the sum
of the workers' inputs (regenerated from the seed) and bit for bit against the switch sums.

Local mode: each worker's link is an impairing UDP relay (tests/faultnet.py) with independent
loss, duplication and reordering per direction. The same on a Mininet rack's impaired veths is
in test_faults_rack.py (its own module: p4runtime-shell allows one controller per process, and
this module's switch fixture holds one).
"""
from __future__ import annotations

import os
import re
import threading
import time

import numpy as np
import pytest

from faultnet import ImpairedLinks, LinkedSwitch, SwitchProcess, counters_of
from nina.config import DEFAULT_WINDOW
from nina.wire import Encoding
from nina.jobmsg import JobAborted
from jobs.check import check_allreduce
from jobs.runner import run_allreduce, spawn_local_worker

QUIET = lambda *a, **k: None  # noqa: E731
N = 4
CONTRIB = ("FIRST", "AGGREGATE", "COMPLETE")


def rounds(size: int, encoding: Encoding, calls: int, window: int = DEFAULT_WINDOW) -> int:
    """Aggregation rounds of a job: data chunks plus one priming round per window slot."""
    k = 256 if encoding == Encoding.NAT8 else 64
    chunks = -(-size // k)
    return calls * (chunks + min(window, chunks))




def _delta(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}


def _load(run_dir: str, wid: int, call: int, what: str) -> np.ndarray:
    return np.load(os.path.join(run_dir, f"worker{wid}.npz"))[f"{what}{call}"]


# ---- lossy, duplicating, reordering links -------------------------------------------------

LINK_CASES = [  # (encoding, C_M, loss=dup=reorder probability per link direction, size)
    pytest.param(Encoding.INT32, False, 0.01, 6_000, id="int32-1%"),
    pytest.param(Encoding.INT32, False, 0.05, 6_000, id="int32-5%"),
    pytest.param(Encoding.NAT8, False, 0.01, 20_000, id="nat8-1%"),
    pytest.param(Encoding.NAT8, False, 0.05, 20_000, id="nat8-5%"),
    pytest.param(Encoding.NAT8, True, 0.01, 20_000, id="nat8cm-1%"),
    pytest.param(Encoding.NAT8, True, 0.05, 20_000, id="nat8cm-5%"),
]
_JOB_IDS = iter(range(100, 200))


def _linked_job(switch, tmp_path, encoding, cm, p, size, calls=2, seed=3, name="run"):
    links = ImpairedLinks(switch.data_addr, loss=p, dup=p, reorder=p, seed=seed)
    run_dir = str(tmp_path / name)
    try:
        before = counters_of(switch)
        out = run_allreduce(N, LinkedSwitch(switch, links), size=size, encoding=encoding,
                            cm=cm, calls=calls, seed=seed, job_id=next(_JOB_IDS),
                            run_dir=run_dir, rounding="nearest", timeout=20.0, log=QUIET)
        delta = _delta(counters_of(switch), before)
    finally:
        links.close()
    return out, run_dir, delta, dict(links.stats)


@pytest.mark.parametrize("encoding,cm,p,size", LINK_CASES)
def test_impaired_links_give_the_lossless_result_and_never_double_count(switch, tmp_path,
                                                                        encoding, cm, p, size):
    calls = 2
    out, run_dir, delta, link = _linked_job(switch, tmp_path, encoding, cm, p, size, calls)
    print(f"links {link}; switch {delta}")
    # the links did what they were asked: lost, duplicated and reordered packets both ways
    assert link["dropped"] > 0 and link["duplicated"] > 0 and link["reordered"] > 0
    # exact: every worker got, bit for bit, the decoded sum of what all workers sent (with
    # C_M: one of the two neighbouring powers of two of that exact sum, identical everywhere)
    problems = check_allreduce(run_dir, N, calls, out.config["shift"], encoding, cm, seed=3,
                               size=size)
    assert problems == []
    # the counter proof: every (worker, round) was added exactly once, however many copies
    # of its update reached the switch (duplicates/retransmissions were consumed or answered)
    added = sum(delta.get(d, 0) for d in CONTRIB)
    assert added == N * rounds(size, encoding, calls)
    assert delta.get("COMPLETE", 0) == rounds(size, encoding, calls)
    assert delta.get("DROP_DUPLICATE", 0) + delta.get("RETRANSMIT_REPLY", 0) > 0
    if encoding == Encoding.INT32:
        # deterministic encoding (nearest rounding): identical to the same job on clean links
        clean, clean_dir, _, _ = _linked_job(switch, tmp_path, encoding, cm, 0.0, size, calls,
                                             name="clean")
        for c in range(calls):
            for w in range(N):
                a, b = _load(run_dir, w, c, "values"), _load(clean_dir, w, c, "values")
                assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    if cm:
        # the pre-C_M sums really were rounded: some results are not the exact sums
        shift = out.config["shift"]
        from nina.wire import nat8_to_int
        from worker import switch_encoding as se
        ints = sum(nat8_to_int(_load(run_dir, w, 0, "sent"), shift).astype(np.int64)
                   for w in range(N))
        exact = se.decode_sums(ints, _load(run_dir, 0, 0, "exponents"), shift).ravel()[:size]
        assert (exact != _load(run_dir, 0, 0, "values")).any()


# ---- a worker killed mid-job --------------------------------------------------------------

class KillingSpawner:
    """spawn_local_worker that remembers the processes so a test can kill one."""

    def __init__(self):
        self.procs: dict[int, object] = {}

    def __call__(self, endpoint, wid, log_path):
        p = spawn_local_worker(endpoint, wid, log_path)
        self.procs[wid] = p
        return p


def test_killed_worker_ends_its_job_naming_it_and_nothing_else(switch, tmp_path):
    installed = threading.Event()

    class Watch:   # the victim job's switch: signals when its job is installed
        def __init__(self, inner):
            self.inner, self.data_addr = inner, inner.data_addr
            # not `controller`: the job runner would install through it and bypass the watch
            self._ctl = getattr(inner, "controller", None)

        def install_job(self, spec):
            if self._ctl is not None:
                from switch.handles import JobInstaller
                firsts = JobInstaller(self.inner).install(spec)
            else:
                firsts = self.inner.install_job(spec)
            installed.set()
            return firsts

        def remove_job(self, job_id):
            (self._ctl or self.inner).remove_job(job_id)

        def read_counters(self):
            return (self._ctl or self.inner).read_counters()

        def died(self):
            return self.inner.died()

    victim_spawn = KillingSpawner()
    outcome: dict = {}

    def victim():
        t0 = time.monotonic()
        try:
            run_allreduce(N, Watch(switch), size=20_000, encoding=Encoding.NAT8, calls=400,
                          job_id=301, run_dir=str(tmp_path / "victim"), timeout=5.0,
                          spawn=victim_spawn, log=QUIET)
            outcome["error"] = None
        except JobAborted as e:
            outcome["error"] = str(e)
        outcome["seconds"] = time.monotonic() - t0

    def bystander():
        try:
            outcome["bystander"] = run_allreduce(
                2, switch, size=20_000, encoding=Encoding.NAT8, calls=12, job_id=302,
                run_dir=str(tmp_path / "bystander"), log=QUIET)
        except JobAborted as e:
            outcome["bystander"] = e

    tv = threading.Thread(target=victim)
    tv.start()
    assert installed.wait(120), "the victim job never got installed"
    tb = threading.Thread(target=bystander)
    tb.start()
    time.sleep(1.5)                              # both jobs are exchanging gradients now
    killed_at = time.monotonic()
    victim_spawn.procs[2].kill()
    tv.join(60)
    assert not tv.is_alive()
    err = outcome["error"]
    print("victim:", err, f"(ended {time.monotonic() - killed_at:.1f} s after the kill)")
    assert err is not None and "worker 2" in err and "killed by signal 9" in err
    tb.join(120)
    by = outcome["bystander"]
    assert not isinstance(by, Exception), by
    assert check_allreduce(str(tmp_path / "bystander"), 2, 12, by.config["shift"],
                           Encoding.NAT8, False, seed=0, size=20_000) == []
    # the switch is still up and takes a new job
    new = run_allreduce(N, switch, size=5_000, encoding=Encoding.INT32, calls=1, job_id=303,
                        run_dir=str(tmp_path / "after"), log=QUIET)
    assert check_allreduce(str(tmp_path / "after"), N, 1, new.config["shift"],
                           Encoding.INT32, False, seed=0, size=5_000) == []


# ---- the switch process restarted mid-job -------------------------------------------------
#
# What a restart promises (docs/testing.md): the switch's registers are lost, not its job
# table, and the restarted switch starts each slot at round 0, as after any fresh install
# (nina/install_rounds.py): it cannot tell the running job's rounds from copies held back from
# an earlier installation, so it drops them as stale. A running job therefore does not
# recover: it ends within the peer timeout with a one-line error naming a stalled slot, never
# with a wrong sum, and the next job installed on the restarted switch is exact.

@pytest.mark.parametrize("encoding,cm", [(Encoding.NAT8, False), (Encoding.NAT8, True),
                                         (Encoding.INT32, False)],
                         ids=["nat8", "nat8cm", "int32"])
def test_switch_restart_mid_job_ends_naming_a_stalled_slot_then_takes_a_new_job(tmp_path,
                                                                               encoding, cm):
    """A crash at an arbitrary moment mid-job (see above): the job fails cleanly, naming the
    slot, in bounded time; the restarted switch then runs a new job exactly."""
    sw = SwitchProcess(str(tmp_path))
    # enough calls that the job is still running when the switch has done a few ticks of work
    # (the compiled switch with GRO/GSO spends ~1 us per update: 150 calls were over in fewer
    # than 15 ticks)
    calls, size = 400, 20_000 if encoding == Encoding.NAT8 else 5_000
    result: dict = {}

    def job():
        try:
            result["out"] = run_allreduce(N, sw, size=size, encoding=encoding, cm=cm,
                                          calls=calls, job_id=7, run_dir=str(tmp_path / "job"),
                                          timeout=6.0, log=QUIET)
        except JobAborted as e:
            result["error"] = str(e)
        result["end"] = time.monotonic()

    t = threading.Thread(target=job)
    t.start()
    try:
        assert sw.installed.wait(120), "the job never got installed"
        time.sleep(0.3)                           # the start-up's own CPU use is over
        assert sw.wait_busy(ticks=5), "the job never sent anything"
        crashed_at = time.monotonic()
        sw.kill()                                 # all registers and counters are gone
        time.sleep(0.3)
        sw.start()                                # same address, same job table, empty state
        t.join(180)
        assert not t.is_alive()
        assert result["end"] > crashed_at, "the job ended before the crash: nothing was tested"
        # the promised failure: a stalled slot named, one line, within the peer timeout
        assert "error" in result, "the job recovered: the restart promise has changed"
        err = result["error"]
        print("failed cleanly:", err)
        assert re.search(r"slot \d+ \(version [01], .*\) did not complete within", err), err
        assert "\n" not in err and "Traceback" not in err
        assert result["end"] - crashed_at < 6.0 + 30.0
        # the restarted switch serves the next job exactly
        after = run_allreduce(N, sw, size=3_000, encoding=encoding, cm=cm, calls=2, job_id=9,
                              run_dir=str(tmp_path / "after"), log=QUIET)
        assert check_allreduce(str(tmp_path / "after"), N, 2, after.config["shift"], encoding,
                               cm, seed=0, size=3_000) == []
    finally:
        if sw.alive():
            sw.stop()
