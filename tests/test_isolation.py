"""Isolation: a host that is not the registered worker of a job cannot touch the job's slots,
and jobs sharing a switch run side by side with exact results.

The switch is the embedded pipeline serving a real UDP socket (in a thread, so its registers
can be read); every sender is a real UDP socket, impostors included (other ports, another
loopback address, another job's registered worker).
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from faultnet import UdpSwitch
from nina import p4spec
from nina.config import JobSpec, WorkerAddr
from nina.wire import (FLAG_VER, Encoding, Header, MsgType, headroom_shift, nat8_to_int,
                       pack_packet, parse_packet)
from jobs.check import check_allreduce
from jobs.runner import run_allreduce

QUIET = lambda *a, **k: None  # noqa: E731


def _sock(ip: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    s.settimeout(0.3)
    return s


def _update(job, wid, slot, ver, codes, exp=130) -> bytes:
    return pack_packet(Header(msg_type=MsgType.UPDATE, encoding=Encoding.NAT8,
                              flags=FLAG_VER if ver else 0, job=job, worker=wid, exponent=exp,
                              slot=slot, count=len(codes), offset=0), np.asarray(codes, np.uint8))


def _drain(s: socket.socket) -> list[bytes]:
    out = []
    try:
        while True:
            out.append(s.recv(4096))
    except (socket.timeout, BlockingIOError):
        return out


def test_impostors_cannot_change_a_jobs_aggregate_or_bitmap():
    sw = UdpSwitch()
    a, b, c, d = (_sock() for _ in range(4))
    try:
        for job, (w0, w1), base in ((1, (a, b), 0), (2, (c, d), 64)):
            sw.pipeline.install_job(JobSpec(
                job_id=job, n_workers=2, encoding=Encoding.NAT8, slot_base=base,
                workers=(WorkerAddr(0, *w0.getsockname()), WorkerAddr(1, *w1.getsockname()))))
        rng = np.random.default_rng(0)
        codes_a = rng.integers(0, 40, 256).astype(np.uint8)    # offsets 0..39, some below S
        codes_b = (rng.integers(0, 40, 256) | 0x80).astype(np.uint8)
        sw.send(a, _update(1, 0, 3, 1, codes_a))                # the genuine worker 0: FIRST
        idx = (0 + 3) * 2 + 1
        regs = {name: sw.pipeline.registers[name].copy() for name in
                (p4spec.REG_BITMAP, p4spec.REG_COUNT, p4spec.REG_MAX_EXP, p4spec.REG_OFFSET)}
        acc = sw.pipeline.acc.copy()
        assert regs[p4spec.REG_BITMAP][idx] == 1
        before = sw.counter("DROP_UNREGISTERED")
        evil = np.zeros(256, np.uint8)                          # +2^S everywhere: a big dent
        b_port = b.getsockname()[1]
        impostors = [
            (_sock(), 1),                     # a stranger's port on the right host, as worker 1
            (_sock("127.0.0.2", b_port), 1),  # worker 1's UDP port, another host address
            (c, 1),                           # job 2's registered worker 0, as job 1's worker 1
            (d, 1),                           # job 2's registered worker 1 (same id), in job 1
            (a, 1),                           # job 1's worker 0 claiming worker 1's id
        ]
        for s, wid in impostors:
            for ver in (0, 1):                # neither the open version nor the other one
                sw.send(s, _update(1, wid, 3, ver, evil, exp=200))
        assert sw.counter("DROP_UNREGISTERED") - before == 2 * len(impostors)
        for name, arr in regs.items():
            assert np.array_equal(sw.pipeline.registers[name], arr), name
        assert np.array_equal(sw.pipeline.acc, acc)
        assert all(_drain(s) == [] for s, _ in impostors)       # nobody got a result
        # the genuine worker 1 completes the slot: the sum is a's and b's, nothing else
        sw.send(b, _update(1, 1, 3, 1, codes_b))
        shift = headroom_shift(2)
        want = nat8_to_int(codes_a, shift).astype(np.int64) + nat8_to_int(codes_b, shift)
        for s in (a, b):
            got = sorted((parse_packet(p) for p in _drain(s)), key=lambda hv: hv[0].offset)
            assert len(got) == 2   # a NAT8 result without C_M: two parts of 128 sums
            for hdr, _ in got:
                assert hdr.exponent == 130 and hdr.job == 1
            vals = np.concatenate([v for _, v in got])
            assert np.array_equal(vals.astype(np.int64), want)
        # job 2's slots were never touched by any of this
        lo, hi = 2 * 64, 2 * 128
        assert not sw.pipeline.registers[p4spec.REG_BITMAP][lo:hi].any()
        assert not sw.pipeline.acc[lo:hi].any()
    finally:
        sw.close()
        for s in (a, b, c, d):
            s.close()




def test_two_jobs_at_once_are_both_exact(switch, tmp_path):
    jobs = [(41, 4, Encoding.NAT8, True, 20_000), (42, 3, Encoding.INT32, False, 6_000)]
    out, errors = {}, []

    def run(job_id, n, enc, cm, size):
        try:
            out[job_id] = run_allreduce(n, switch, size=size, encoding=enc, cm=cm, calls=10,
                                        job_id=job_id, run_dir=str(tmp_path / str(job_id)),
                                        log=QUIET)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    for job_id, n, enc, cm, size in jobs:
        assert check_allreduce(str(tmp_path / str(job_id)), n, 10, out[job_id].config["shift"],
                               enc, cm, seed=0, size=size) == []
