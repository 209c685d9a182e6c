"""Overflow and range: at the largest n (32) and the largest exponent spread no accumulator can
wrap (the headroom rule of docs/protocol.md), values below a block's resolution are rounded as
the protocol says (unbiased, to 0 or the smallest power), and values the wire cannot carry are
refused with a clear error.
"""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from faultnet import UdpSwitch
from nina.config import JobSpec, WorkerAddr
from nina.wire import (ELEMENTS_INT32, FLAG_CM, MAX_WORKERS, NAT8_ZERO, Encoding, Header,
                       MsgType, cm_codes_to_int, headroom_shift, int_to_cm_codes, nat8_to_int,
                       pack_packet, parse_packet)
from worker import switch_encoding as se
from worker.allreduce import AllReduceClient
from worker.transport import UdpTransport


def test_headroom_holds_for_every_allowed_n():
    for n in range(1, MAX_WORKERS + 1):
        s = headroom_shift(n)
        assert n * 2 ** s <= 2 ** 30 < 2 ** 31 - 1
        # C_M of the largest possible |sum| still has a code (p <= 31)
        top = np.array([n * 2 ** s, -n * 2 ** s, n * 2 ** s - 1])
        codes = int_to_cm_codes(top, np.full(3, 0xFFFFFFFF, np.uint32))
        assert (np.abs(cm_codes_to_int(codes)) <= 2 ** 31).all()


@pytest.mark.parametrize("encoding,cm", [(Encoding.NAT8, False), (Encoding.NAT8, True),
                                         (Encoding.INT32, False)], ids=["nat8", "nat8cm", "int32"])
def test_32_workers_at_full_scale_sum_without_wrapping(encoding, cm):
    n = MAX_WORKERS
    s = headroom_shift(n)
    sw = UdpSwitch()
    socks = []
    try:
        for _ in range(n):
            k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            k.bind(("127.0.0.1", 0))
            k.settimeout(2)
            socks.append(k)
        sw.pipeline.install_job(JobSpec(
            job_id=9, n_workers=n, encoding=encoding, cm=cm,
            workers=tuple(WorkerAddr(w, *k.getsockname()) for w, k in enumerate(socks))))
        cap = 256 if encoding == Encoding.NAT8 else ELEMENTS_INT32
        for slot, sign in ((0, 1), (1, -1)):
            for w, k in enumerate(socks):   # every worker at the largest magnitude 2^S
                vals = (np.full(cap, 0x80 if sign < 0 else 0x00, np.uint8)
                        if encoding == Encoding.NAT8 else np.full(cap, sign * 2 ** s, np.int32))
                sw.send(k, pack_packet(Header(msg_type=MsgType.UPDATE, encoding=encoding,
                                              job=9, worker=w, exponent=254, slot=slot,
                                              count=cap), vals))
            parts = 2 if encoding == Encoding.NAT8 and not cm else 1   # 128 sums a part
            for k in socks:
                got_n = 0
                for _ in range(parts):
                    hdr, got = parse_packet(k.recv(4096))
                    assert hdr.slot == slot and hdr.exponent == 254
                    ints = cm_codes_to_int(got) if cm else got.astype(np.int64)
                    assert bool(hdr.flags & FLAG_CM) == cm
                    assert (ints == sign * 2 ** 30).all()       # n * 2^S exactly, no wrap
                    got_n += len(ints)
                assert got_n == cap
    finally:
        sw.close()
        for k in socks:
            k.close()


def test_below_resolution_values_are_rounded_unbiased_to_zero_or_the_smallest_power():
    s = headroom_shift(MAX_WORKERS)
    rng = np.random.default_rng(0)
    # one block from 2^100 down to subnormals: offsets far beyond S
    x = np.array([2.0 ** 100, 2.0 ** (100 - s - 1), 2.0 ** (100 - s - 7), -2.0 ** (100 - s - 3),
                  2.0 ** -140, 0.0], np.float32)
    eb = se.exponent_bytes(x[None])
    draws = 20_000
    codes = se.nat8_encode(np.tile(x, (draws, 1)), np.repeat(eb, draws), s, rng)
    assert (codes[:, 0] == 1).all()          # the top value is exact: e_top = 101, offset 1
    small = codes[:, 1:]
    assert np.isin(small & 0x7F, [s, NAT8_ZERO]).all()      # 0 or the resolution 2^(e_top-S)
    meaning = se.nat8_values(codes, np.repeat(eb, draws), s).astype(np.float64)
    for i in (1, 2, 3):
        p = abs(float(x[i])) / 2.0 ** (101 - s)             # chance of keeping the power
        sd = 2.0 ** (101 - s) * np.sqrt(p * (1 - p) / draws)
        assert abs(meaning[:, i].mean() - x[i]) < 6 * sd, i  # unbiased
    assert (meaning[:, 4] == 0).all() and (meaning[:, 5] == 0).all()


def _run_clients(n, encoding, x_of, rounding="stochastic"):
    from switch.handles import InProcessSwitch
    sw = InProcessSwitch(seed=3)
    ts = [UdpTransport(sw.data_addr) for _ in range(n)]
    try:
        spec = JobSpec(job_id=5, n_workers=n, encoding=encoding,
                       workers=tuple(WorkerAddr(w, *t.address) for w, t in enumerate(ts)))
        sw.install_job(spec)
        cs = [AllReduceClient(spec, w, ts[w], seed=w, rounding=rounding, peer_timeout=20)
              for w in range(n)]
        res = [None] * n

        def go(w):
            try:
                res[w] = cs[w].allreduce(x_of(w), record=True)
            except Exception as e:   # reported by the caller
                res[w] = e
        th = [threading.Thread(target=go, args=(w,)) for w in range(n)]
        for t in th:
            t.start()
        for t in th:
            t.join(120)
        return spec, res
    finally:
        for t in ts:
            t.close()
        sw.stop()


@pytest.mark.parametrize("encoding", [Encoding.NAT8, Encoding.INT32], ids=["nat8", "int32"])
def test_largest_n_and_exponent_spread_end_to_end_exact(encoding):
    n = MAX_WORKERS

    def x_of(w):   # every block spans 2^100 .. subnormals; signs and scales vary per worker
        r = np.random.default_rng(w)
        e = r.integers(-149, 101, 1024)
        e[::64] = 100
        return (np.ldexp(r.uniform(1, 2, 1024), e) * r.choice([-1, 1], 1024)).astype(np.float32)
    spec, res = _run_clients(n, encoding, x_of)
    bad = [r for r in res if isinstance(r, Exception)]
    assert not bad, bad[0]
    ints = sum((nat8_to_int(r.sent, spec.shift) if encoding == Encoding.NAT8 else r.sent)
               .astype(np.int64) for r in res)
    assert np.abs(ints).max() <= 2 ** 30                      # within the headroom
    assert np.abs(ints).max() > 2 ** 28                        # and really near its top
    want = se.decode_sums(ints, res[0].exponents, spec.shift).ravel()[:1024]
    for r in res:
        assert np.array_equal(r.values.view(np.uint32), want.view(np.uint32))


def test_non_finite_values_are_refused_before_anything_is_sent():
    with UdpTransport(("127.0.0.1", 9)) as t:
        c = AllReduceClient(JobSpec(job_id=1, n_workers=2), 0, t)
        for bad in (np.inf, -np.inf, np.nan):
            x = np.ones(500, np.float32)
            x[321] = bad
            with pytest.raises(ValueError, match="non-finite.*index 321"):
                c.allreduce(x)
        assert t.counters.packets_out == 0


def test_sums_beyond_float32_range_are_reported_not_silent_inf():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec, res = _run_clients(4, Encoding.NAT8, lambda w: np.full(300, 3e38, np.float32))
    for r in res:   # every worker gets the same clear error, none a silent inf
        assert isinstance(r, Exception) and "exceeds float32's range" in str(r), r
