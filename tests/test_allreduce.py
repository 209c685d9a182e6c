"""The all-reduce client: exact sums through a real switch process, errors that never hang.

End-to-end tests run the embedded switch as a process (`nina switch --mode local`) and the
workers as processes (worker/worker_proc.py) over real UDP; every worker dumps what it sent and
check_allreduce recomputes the sums independently from those codes/integers.
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from nina.config import JobSpec, WorkerAddr
from nina.wire import (FLAG_VER, Encoding, Header, MsgType, headroom_shift,
                       nat8_to_int, pack_packet, parse_packet, round_flags, round_of)
from worker.allreduce import (AllReduceClient, AllReduceError, SlotStalled, SwitchSilent,
                              check_size)
from switch.handles import JobInstaller
from jobs.check import check_allreduce
from jobs.runner import run_allreduce
from worker.transport import UdpTransport

QUIET = lambda *a, **k: None  # noqa: E731


# ---- without a switch ----

def test_tensor_too_large_for_u32_offsets_is_refused_before_sending():
    assert check_size(0, Encoding.NAT8) == 0
    assert check_size(2**32, Encoding.INT32) == 2**32 // 64
    with pytest.raises(ValueError, match="32-bit header field"):
        check_size(2**32 + 64 * 2, Encoding.INT32)
    with UdpTransport(("127.0.0.1", 9)) as t:
        spec = JobSpec(job_id=1, n_workers=1, encoding=Encoding.INT32)
        c = AllReduceClient(spec, 0, t)
        huge = np.broadcast_to(np.float32(1.0), (2**32 + 1000,))  # no memory behind it
        with pytest.raises(ValueError, match="too large"):
            c.allreduce(huge)
        assert t.counters.packets_out == 0


def test_bad_worker_id_and_non_finite_tensor():
    with UdpTransport(("127.0.0.1", 9)) as t:
        spec = JobSpec(job_id=1, n_workers=2)
        with pytest.raises(ValueError, match="worker id 2"):
            AllReduceClient(spec, 2, t)
        c = AllReduceClient(spec, 0, t)
        with pytest.raises(ValueError, match="non-finite"):
            c.allreduce(np.array([1.0, np.nan], np.float32))


def test_silent_switch_gives_a_clear_error_in_bounded_time():
    mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mute.bind(("127.0.0.1", 0))   # receives the updates, never answers
    try:
        with UdpTransport(mute.getsockname()) as t:
            spec = JobSpec(job_id=7, n_workers=2, encoding=Encoding.NAT8)
            c = AllReduceClient(spec, 0, t, rto=0.05, peer_timeout=0.6)
            t0 = time.monotonic()
            with pytest.raises(SwitchSilent) as e:
                c.allreduce(np.ones(1000, np.float32))
            assert time.monotonic() - t0 < 5
            msg = str(e.value)
            assert "job 7" in msg and f"{mute.getsockname()[1]}" in msg
            assert "not installed" in msg
            with pytest.raises(AllReduceError, match="out of step"):
                c.allreduce(np.ones(10, np.float32))   # no silent reuse after an error
    finally:
        mute.close()


class ScriptedSwitch:
    """A one-worker 'switch' for a unit test: answers every update first with copies the client
    must ignore, each carrying other values (so taking one shows in the result): the other
    version bit, the same version bit of another round, a wrong offset, a foreign job, garbage;
    then the right result twice, out of order (duplicates)."""

    def __init__(self, encoding: Encoding):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.encoding, self.stop = encoding, False
        self.rounds = self.parts = 0   # updates answered, right result parts per copy
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        s = headroom_shift(1)
        while not self.stop:
            try:
                buf, addr = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            h, vals = parse_packet(buf)
            ints = nat8_to_int(vals, s) if h.encoding == Encoding.NAT8 else vals.astype(np.int32)

            # a NAT8 result comes as parts of 128 sums (part 0 always), INT32 as one packet
            step = 128 if h.encoding == Encoding.NAT8 else 64

            def res(start=0, **kw):
                f = dict(msg_type=MsgType.RESULT, encoding=h.encoding, flags=h.flags,
                         job=h.job, worker=0, exponent=h.exponent, slot=h.slot,
                         count=min(step, h.count - start), offset=h.offset + start)
                f.update(kw)
                return pack_packet(Header(**f), ints[start:start + f["count"]])
            whole = [res(a) for a in range(0, max(h.count, 1), step)]
            other_round = round_flags(round_of(h.flags) + 2)   # same version bit
            ints = -ints - 1                                    # what a wrong copy carries
            wrong = [res(flags=h.flags ^ FLAG_VER), res(flags=other_round),
                     res(offset=h.offset + 1), res(job=h.job + 1)]
            self.rounds += 1
            self.parts += len(whole)
            for p in (*wrong, b"\x01\x02junk", *whole[::-1], *whole):
                self.sock.sendto(p, addr)

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("encoding", [Encoding.NAT8, Encoding.INT32])
def test_client_ignores_duplicates_and_results_not_outstanding(encoding):
    sw = ScriptedSwitch(encoding)
    try:
        with UdpTransport(sw.sock.getsockname()) as t:
            spec = JobSpec(job_id=3, n_workers=1, encoding=encoding)
            # an RTO far above the scripted switch's answer time even on a loaded machine
            # (its Python thread shares the GIL): a retransmission then means a right result
            # was ignored, not that the answer came late
            c = AllReduceClient(spec, 0, t, window=4, seed=1, rto=5.0, rto_min=5.0, rto_max=5.0)
            x = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
            for call in range(2):   # versions carry over between calls
                r = c.allreduce(x, record=True)
                # the right copy won every round: a wrong one carries -sum - 1
                np.testing.assert_array_equal(r.values, r.contribution)
                rounds = r.stats.chunks + min(4, r.stats.chunks)
                # every wrong copy of every round is ignored (the right ones' duplicates
                # of the last rounds may come after the call's end)
                assert r.stats.ignored >= 5 * rounds
            assert c.calls == 2 and c.total.retransmissions == 0
            # nothing but wrong copies and duplicates is ignored: per round 5 bad packets
            # and the second copy of each right part
            assert c.total.ignored <= 5 * sw.rounds + sw.parts
    finally:
        sw.close()


# ---- through the embedded switch as a process ----



CASES = [  # (job id, encoding, C_M, switch loss, size)
    pytest.param(11, Encoding.NAT8, False, 0.0, 20_000, id="nat8"),
    pytest.param(12, Encoding.INT32, False, 0.0, 7_000, id="int32"),
    pytest.param(13, Encoding.NAT8, True, 0.0, 20_000, id="nat8+cm"),
    pytest.param(14, Encoding.NAT8, False, 0.05, 20_000, id="nat8-loss0.05"),
]


@pytest.mark.parametrize("job_id,encoding,cm,loss,size", CASES)
def test_allreduce_is_the_exact_sum_of_what_workers_sent(switch, tmp_path, job_id, encoding,
                                                         cm, loss, size):
    n, calls = 4, 2
    out = run_allreduce(n, switch, size=size, encoding=encoding, cm=cm, calls=calls,
                        loss=loss, seed=job_id, job_id=job_id, run_dir=str(tmp_path),
                        log=QUIET)
    problems = check_allreduce(str(tmp_path), n, calls, out.config["shift"], encoding, cm,
                               seed=job_id, size=size)
    assert problems == []
    retx = sum(st["retransmissions"] for calls_ in out.per_worker.values() for st in calls_)
    if loss:
        assert out.counters.get("DROP_INJECTED", 0) > 0 and retx > 0
    # every worker sent every chunk at least once, plus one priming packet per window slot
    k = 256 if encoding == Encoding.NAT8 else 64
    chunks = -(-size // k)
    for calls_ in out.per_worker.values():
        for st in calls_:
            assert st["packets_out"] >= chunks + min(32, chunks)


def _clients(switch, job_id, n, **kw):
    ts = [UdpTransport(switch.data_addr) for _ in range(n)]
    spec = JobSpec(job_id=job_id, n_workers=n, encoding=Encoding.NAT8, slot_base=40 * 64,
                   workers=tuple(WorkerAddr(w, *t.address) for w, t in enumerate(ts)))
    return spec, ts, [AllReduceClient(spec, w, ts[w], seed=w, **kw) for w in range(n)]


def test_vanished_peer_names_the_slot_and_the_missing_worker(switch):
    jobs = JobInstaller(switch)
    spec, ts, (c0, c1) = _clients(switch, 21, 2, peer_timeout=1.0, rto=0.05)
    c0.slot_reader = lambda slot, ver: switch.slot_bitmap(spec, slot, ver)
    jobs.install(spec)
    try:
        x = np.ones(600, np.float32)
        res = [None, None]
        th = threading.Thread(target=lambda: res.__setitem__(1, c1.allreduce(x)))
        th.start()
        res[0] = c0.allreduce(x)
        th.join(10)
        np.testing.assert_array_equal(res[0].values, res[1].values)
        np.testing.assert_array_equal(res[0].values, 2 * x)
        # worker 1 vanishes; worker 0's next call must end with an error, not hang
        t0 = time.monotonic()
        with pytest.raises(SlotStalled) as e:
            c0.allreduce(x)
        assert time.monotonic() - t0 < 10
        assert e.value.missing == [1]
        assert "slot 0" in str(e.value) and "[1]" in str(e.value)
    finally:
        jobs.remove(spec.job_id)
        for t in ts:
            t.close()


def test_job_not_installed_is_reported_not_hung(switch):
    jobs = JobInstaller(switch)
    spec, ts, (c0,) = _clients(switch, 22, 1, peer_timeout=0.8, rto=0.05)
    before = jobs.counters().get("DROP_UNKNOWN_JOB", 0)
    try:
        with pytest.raises(SwitchSilent, match="not installed"):
            c0.allreduce(np.ones(100, np.float32))
    finally:
        ts[0].close()
    assert jobs.counters().get("DROP_UNKNOWN_JOB", 0) > before
