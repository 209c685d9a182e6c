"""GRO/GSO batches on real loopback sockets (nina.udp_batch): every datagram arrives once with
its bytes and size, whatever mix of sizes and destinations a batch has; a send is really one
segmented message per run; and where the kernel or the user rules the batching out, plain
recvmmsg/sendmmsg carry the same traffic."""
from __future__ import annotations

import collections
import errno
import select
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nina import udp_batch as ub
from nina.mmsg import MSG_DONTWAIT

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = 0x7F000001


def _sock(cls=socket.socket) -> socket.socket:
    s = cls(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
    return s


def _drain(rx: ub.BatchRx, width: int) -> list[tuple[int, bytes, int]]:
    """(length, bytes, source port) of everything queued, taken in batches; every batch's
    byte count (rx.nbytes, what a receiver counts) is its datagrams' real lengths summed."""
    out = []
    for _ in range(100):   # loopback delivers at once; allow a slow machine a moment
        if select.select([rx.sock], [], [], 0.05)[0]:
            break
    while True:
        m = rx.recv(MSG_DONTWAIT)
        if not m:
            return out
        while m:
            got = [(int(rx.lengths[i]), bytes(rx.rows[i, :min(width, rx.lengths[i])]),
                    int(rx.ports[i])) for i in range(m)]
            assert rx.nbytes == sum(n for n, _, _ in got)
            out += got
            m = rx.more()


def _batch(rng, k: int, lengths) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.integers(0, 256, (k, 600)).astype(np.uint8)
    return rows, np.asarray(lengths, np.int64)


def _expect(rows, lens, sel) -> collections.Counter:
    return collections.Counter((int(lens[i]), bytes(rows[i, :lens[i]])) for i in sel)


@pytest.fixture
def gso_kernel():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(ub.SOL_UDP, ub.UDP_SEGMENT, 0)
            s.setsockopt(ub.SOL_UDP, ub.UDP_GRO, 1)
        except OSError as e:
            pytest.skip(f"this kernel has no UDP GSO/GRO ({e.strerror})")


def test_mixed_sizes_and_destinations_arrive_whole_in_few_segmented_sends(gso_kernel):
    rng = np.random.default_rng(1)
    lens = [272] * 100 + [528] * 50 + [100] + [272] * 149 + [0] + [600] * 199
    rows, lens = _batch(rng, len(lens), lens)
    a, b, c = _sock(), _sock(), _sock()
    try:
        tx = ub.BatchTx(a, 1024, gso=True)
        rxb, rxc = ub.BatchRx(b, 64, 600, gro=True), ub.BatchRx(c, 64, 600, gro=True)
        ports = np.where(np.arange(len(lens)) % 3 == 0, c.getsockname()[1],
                         b.getsockname()[1])
        assert tx.send_rows(rows, lens, len(lens), LOOPBACK, ports) == (len(lens), 0)
        # runs of one size per destination, the longest first, a shorter one may end a run
        assert tx.messages < 20
        for rx, s in ((rxb, b), (rxc, c)):
            got = _drain(rx, 600)
            sel = np.flatnonzero(ports == s.getsockname()[1])
            assert collections.Counter(g[:2] for g in got) == _expect(rows, lens, sel)
            assert {g[2] for g in got} == {a.getsockname()[1]}
            assert rx.messages < len(sel) / 4   # received as GRO buffers, not datagrams
    finally:
        for s in (a, b, c):
            s.close()


def test_one_destination_keeps_its_order_and_long_runs_split_at_the_segment_limit(gso_kernel):
    rng = np.random.default_rng(2)
    k = 3 * ub.MAX_SEGMENTS + 5
    rows, lens = _batch(rng, k, [272] * k)
    a, b = _sock(), _sock()
    try:
        tx, rx = ub.BatchTx(a, 4096, gso=True), ub.BatchRx(b, 100, 600, gro=True)
        assert tx.send_rows(rows, lens, k, LOOPBACK, b.getsockname()[1]) == (k, 0)
        assert tx.messages == -(-k // tx.max_segs)   # 4 (older kernels: 64 a send, 7)
        got = _drain(rx, 600)   # more datagrams than rows: handed out 100 at a time
        assert [g[1] for g in got] == [bytes(r[:272]) for r in rows]
        # bytes bound a run too: 600-byte datagrams, 109 to a 64 KiB send at most
        rows, lens = _batch(rng, 120, [600] * 120)
        tx.messages = 0
        assert tx.send_rows(rows, lens, 120, LOOPBACK, b.getsockname()[1]) == (120, 0)
        assert tx.messages == 2
        assert [g[1] for g in _drain(rx, 600)] == [bytes(r) for r in rows]
    finally:
        a.close()
        b.close()


def test_strided_and_narrow_per_packet_arrays_reach_their_destinations(gso_kernel):
    # the switch passes columns of its replica table (strided int64) and the caller's length
    # array may be int32: every layout is staged the same way, no compile at the call
    rng = np.random.default_rng(7)
    rows, lens = _batch(rng, 9, [272, 272, 100] * 3)
    a, b, c = _sock(), _sock(), _sock()
    try:
        tx = ub.BatchTx(a, 16, gso=True)
        rxb, rxc = ub.BatchRx(b, 16, 600, gro=True), ub.BatchRx(c, 16, 600, gro=True)
        table = np.zeros((9, 5), np.int64)
        table[:, 1] = LOOPBACK
        table[:, 3] = np.where(np.arange(9) % 2, b.getsockname()[1], c.getsockname()[1])
        index = np.arange(9, dtype=np.int32)[::-1]
        assert tx.send_rows(rows, lens.astype(np.int32)[::-1], 9, table[:, 1], table[:, 3],
                            index=index) == (9, 0)
        for rx, s in ((rxb, b), (rxc, c)):
            sel = [int(index[i]) for i in range(9) if table[i, 3] == s.getsockname()[1]]
            got = collections.Counter(g[:2] for g in _drain(rx, 600))
            assert got == _expect(rows, lens, sel)
        # a 0-d array is a scalar, as np.int64 is
        assert tx.send_rows(rows, np.array(100), 1, np.array(LOOPBACK), b.getsockname()[1],
                            index=np.array([2])) == (1, 0)
        assert _drain(rxb, 600) == [(100, bytes(rows[2, :100]), a.getsockname()[1])]
    finally:
        for s in (a, b, c):
            s.close()


def test_a_row_number_outside_the_rows_is_refused_before_anything_is_sent(gso_kernel):
    rows, lens = _batch(np.random.default_rng(8), 4, [272] * 4)
    a, b = _sock(), _sock()
    try:
        tx, rx = ub.BatchTx(a, 16, gso=True), ub.BatchRx(b, 16, 600, gro=True)
        for bad in (np.array([0, 4]), np.array([-1, 0])):
            with pytest.raises(IndexError, match="outside the rows"):
                tx.send_rows(rows, 272, 2, LOOPBACK, b.getsockname()[1], index=bad)
        with pytest.raises(ValueError, match="1 entries for 2 packets"):
            tx.send_rows(rows, 272, 2, LOOPBACK, b.getsockname()[1], index=np.array([0]))
        assert _drain(rx, 600) == []
    finally:
        a.close()
        b.close()


def test_rows_picked_by_index_and_datagrams_longer_than_a_row_keep_their_length(gso_kernel):
    rng = np.random.default_rng(3)
    rows, lens = _batch(rng, 8, [300] * 8)
    a, b = _sock(), _sock()
    try:
        tx, rx = ub.BatchTx(a, 16, gso=True), ub.BatchRx(b, 16, 272, gro=True)
        tx.send_rows(rows, 300, 3, LOOPBACK, b.getsockname()[1], index=np.array([5, 0, 7]))
        got = _drain(rx, 272)
        assert [g[0] for g in got] == [300] * 3   # cut to the row, the real length kept
        assert [g[1] for g in got] == [bytes(rows[i, :272]) for i in (5, 0, 7)]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("any_dest", [False, True])
def test_only_loopback_destinations_get_segmented_sends(any_dest):
    """A packet socket on a veth (raw-interface switch, BMv2) would see one oversized frame:
    the grouping (compiled, checked here without sending) segments for 127/8 only, unless
    NINA_UDP_SEGMENT_TO=any (any_dest) says the path cuts segmented sends."""
    tx = ub.BatchTx(_sock(), 64, gso=True)
    k = 40
    tx._addr[:k] = np.arange(k, dtype=np.uint64) * 64 + 4096
    tx._len[:k] = 272
    tx._port[:k] = 5000
    for ip, msgs in ((0x0A000001, 1 if any_dest else k), (LOOPBACK, 1), (0x7F000002, 1)):
        tx._ip[:k] = ip
        n = ub.plan_sends(k, tx._addr, tx._len, tx._ip, tx._port, True, True, any_dest,
                          tx.max_segs,
                          tx._hw, tx._iw, tx.name, tx.ctrl, np.uint64(0), np.uint64(0),
                          np.uint64(0), tx.npk, tx.first, tx.order)
        assert n == msgs and tx.npk[:n].sum() == k
        if n == 1:   # one message: k iovecs, a UDP_SEGMENT control message of 272
            assert tx.hdr["iovlen"][0] == k and tx.ctrl[0].tolist() == [18, 17 | 103 << 32, 272]
            name = bytes(tx.name[0, :8])
            assert name[2:4] == (5000).to_bytes(2, "big") and name[4:8] == ip.to_bytes(4, "big")
    tx.sock.close()


def test_a_kernel_refusing_a_segmented_send_gets_every_packet_as_single_datagrams(
        gso_kernel, capfd):
    """UDP_SEGMENT is refused (EINVAL) on a socket without UDP checksums: the batch goes out
    as plain datagrams, later batches too, with one line saying so."""
    rng = np.random.default_rng(4)
    rows, lens = _batch(rng, 50, [272] * 50)
    a, b = _sock(), _sock()
    a.setsockopt(socket.SOL_SOCKET, 11, 1)   # SO_NO_CHECK
    ub._said.discard("gso-send")
    try:
        tx, rx = ub.BatchTx(a, 64, gso=True), ub.BatchRx(b, 128, 272, gro=True)
        assert tx.send_rows(rows, lens, 50, LOOPBACK, b.getsockname()[1]) == (50, 0)
        assert not tx.gso and tx.messages == 50
        assert tx.send_rows(rows, lens, 50, LOOPBACK, b.getsockname()[1]) == (50, 0)
        assert [g[1] for g in _drain(rx, 272)] == [bytes(r[:272]) for r in rows] * 2
        err = capfd.readouterr().err
        assert err.count("segmented UDP send refused") == 1
    finally:
        a.close()
        b.close()


def test_more_segments_than_the_kernel_takes_adapts_the_limit_and_loses_nothing(gso_kernel):
    rng = np.random.default_rng(5)
    rows, lens = _batch(rng, 300, [100] * 300)
    a, b = _sock(), _sock()
    try:
        tx, rx = ub.BatchTx(a, 512, gso=True), ub.BatchRx(b, 512, 100, gro=True)
        tx.max_segs = 300   # beyond any kernel's UDP_MAX_SEGMENTS: refused with EINVAL
        assert tx.send_rows(rows, lens, 300, LOOPBACK, b.getsockname()[1]) == (300, 0)
        assert tx.gso and tx.max_segs == ub.OLD_MAX_SEGMENTS
        assert [g[1] for g in _drain(rx, 100)] == [bytes(r[:100]) for r in rows]
    finally:
        a.close()
        b.close()


class _NoUdpOptions(socket.socket):
    """A kernel without UDP_SEGMENT/UDP_GRO, as far as setsockopt tells."""

    def setsockopt(self, level, opt, *value):
        if level == ub.SOL_UDP:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        return super().setsockopt(level, opt, *value)


@pytest.mark.parametrize("why", ["refused", "NINA_UDP_IO=mmsg"])
def test_the_fallback_is_plain_recvmmsg_sendmmsg_and_carries_the_same_traffic(
        why, monkeypatch, capfd):
    rng = np.random.default_rng(6)
    lens = [272] * 30 + [528] * 30 + [17]
    rows, lens = _batch(rng, len(lens), lens)
    ub._said.clear()
    if why == "refused":
        a, b = _sock(_NoUdpOptions), _sock(_NoUdpOptions)
    else:
        monkeypatch.setenv(ub.ENV, "mmsg")
        a, b = _sock(), _sock()
    try:
        tx, rx = ub.BatchTx(a, 64), ub.BatchRx(b, 40, 600)
        assert not tx.gso and not rx.gro
        assert tx.send_rows(rows, lens, len(lens), LOOPBACK, b.getsockname()[1]) == \
            (len(lens), 0)
        assert tx.messages == len(lens)
        got = _drain(rx, 600)
        assert collections.Counter(g[:2] for g in got) == _expect(rows, lens, range(len(lens)))
        err = capfd.readouterr().err
        if why == "refused":   # one line each, not a traceback
            assert err.count("UDP_GRO refused") == 1 and err.count("UDP_SEGMENT refused") == 1
        else:
            assert err == ""
    finally:
        a.close()
        b.close()


def test_the_transport_hands_out_a_receive_larger_than_its_rows_over_calls(gso_kernel):
    from worker.transport import RX_BATCH, UdpTransport
    rng = np.random.default_rng(7)
    k = RX_BATCH + 300
    rows, lens = _batch(rng, k, [272] * k)
    a = _sock()
    try:
        with UdpTransport(a.getsockname()) as t:
            ub.BatchTx(a, 2048, gso=True).send_rows(rows, lens, k, LOOPBACK, t.address[1])
            got = []
            while len(got) < k:
                m = t.recv_rows(2.0)
                assert m, f"{k - len(got)} datagrams lost"
                got += [bytes(t.rx.rows[i, :272]) for i in range(m)]
            assert got == [bytes(r[:272]) for r in rows]
            assert t.counters.packets_in == k and t.counters.bytes_in == 272 * k
            # and back: a window in one segmented send
            t.send_rows(rows, 272, np.arange(32), 32)
            assert t._tx.messages == 1
    finally:
        a.close()


def test_a_bad_nina_udp_io_is_one_error_line_of_the_switch(tmp_path):
    p = subprocess.run([sys.executable, "-m", "nina.cli", "switch", "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "NINA_UDP_IO": "fast",
                            "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "nina switch: error: NINA_UDP_IO='fast': expected 'gso' (GRO/GSO batches, the default) "
        "or 'mmsg' (recvmmsg/sendmmsg only)"]


def test_the_switch_and_the_clients_move_an_allreduce_in_gro_gso_batches(gso_kernel):
    """End to end through the embedded switch's loopback I/O: windows go up as segmented
    sends, results come down one segmented send per worker and batch; the sum is right."""
    import threading

    from nina.config import JobSpec, WorkerAddr
    from nina.wire import Encoding
    from switch.handles import InProcessSwitch
    from worker.allreduce import AllReduceClient
    from worker.transport import UdpTransport
    sw = InProcessSwitch()
    ts = [UdpTransport(sw.data_addr) for _ in range(2)]
    try:
        assert sw.io.batching == "gro/gso"
        spec = JobSpec(job_id=3, n_workers=2, encoding=Encoding.INT32,
                       workers=tuple(WorkerAddr(w, *t.address) for w, t in enumerate(ts)))
        sw.install_job(spec)
        xs = [np.full(64 * 512, 1.0 + w, np.float32) for w in range(2)]
        out = [None, None]

        def run(w):
            out[w] = AllReduceClient(spec, w, ts[w], seed=w).allreduce(xs[w]).values

        th = [threading.Thread(target=run, args=(w,)) for w in range(2)]
        for t in th:
            t.start()
        for t in th:
            t.join(60)
        for w in range(2):
            np.testing.assert_allclose(out[w], 3.0, rtol=1e-6)
        io = sw.io
        assert io.rx_packets >= 2 * 512 and io.tx_packets >= 2 * 512
        assert io._rx.messages < io.rx_packets / 4 and io._tx.messages < io.tx_packets / 4
        for t in ts:
            assert t.rx.messages < t.counters.packets_in / 4
            assert t._tx.messages < t.counters.packets_out / 4
    finally:
        for t in ts:
            t.close()
        sw.stop()


def test_a_bad_segment_target_is_an_error_that_names_the_choices(monkeypatch):
    monkeypatch.setenv(ub.SEGMENT_ENV, "everywhere")
    with pytest.raises(ValueError, match="'loopback'.*'any'"):
        ub.segment_any()
    monkeypatch.setenv(ub.SEGMENT_ENV, "ANY")
    assert ub.segment_any()
    monkeypatch.delenv(ub.SEGMENT_ENV)
    assert not ub.segment_any()
