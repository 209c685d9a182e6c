"""Batched packet I/O (nina.mmsg) on real loopback sockets, and the pipeline's batch path:
a batch whose results do not fit the output buffer is finished in several sends, every trace
record is kept."""
from __future__ import annotations

import select
import socket

import numpy as np
import pytest

from nina.config import JobSpec, WorkerAddr
from nina.decisions import Decision
from nina.mmsg import MSG_DONTWAIT, MSG_TRUNC, MsgRing
from nina.wire import Encoding, Header, pack_packet
from switch.pipeline import Pipeline, _Rows
from switch.trace_sink import MemoryTrace


def _pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    return a, b


def _recv_all(ring: MsgRing, sock, want: int, flags: int = 0) -> int:
    """One recvmmsg once `want` datagrams are queued (loopback delivers them at once)."""
    for _ in range(100):
        if select.select([sock], [], [], 2.0)[0]:
            break
    return ring.recv(sock.fileno(), MSG_DONTWAIT | flags)


def test_one_call_moves_a_batch_with_lengths_sources_and_real_length_of_cut_datagrams():
    a, b = _pair()
    try:
        rows = np.arange(4 * 300, dtype=np.uint32).astype(np.uint8).reshape(4, 300)
        tx = MsgRing(4, 0)
        ip = int.from_bytes(socket.inet_aton("127.0.0.1"), "big")
        sent, failed = tx.send_rows(a.fileno(), rows, np.array([10, 300, 1, 299]), 4, ip,
                                    b.getsockname()[1])
        assert (sent, failed) == (4, 0)
        rx = MsgRing(8, 272)   # the 300-byte datagrams are cut to 272, their length is kept
        m = _recv_all(rx, b, 4, MSG_TRUNC)
        assert m == 4
        assert rx.lengths[:4].tolist() == [10, 300, 1, 299]
        assert (rx.buf[1, :272] == rows[1, :272]).all() and (rx.buf[0, :10] == rows[0, :10]).all()
        ips, ports = rx.sources(4)
        assert (ips == ip).all() and (ports == a.getsockname()[1]).all()
        # rows picked by index, in that order
        tx.send_rows(a.fileno(), rows, 300, 2, ip, b.getsockname()[1], index=np.array([3, 0]))
        assert _recv_all(rx, b, 2) == 2
        assert (rx.buf[0, :272] == rows[3, :272]).all() and (rx.buf[1, :272] == rows[0, :272]).all()
    finally:
        a.close()
        b.close()


def test_results_beyond_the_output_buffer_go_out_in_later_sends_and_every_packet_is_traced():
    trace = MemoryTrace()
    p = Pipeline(pool_slots=16, trace=trace)
    spec = JobSpec(job_id=1, n_workers=1, encoding=Encoding.NAT8, slot_count=8,
                   workers=(WorkerAddr(0, "10.0.0.1", 5000, port=0),))
    p.install_job(spec)
    p.out, p.out_len, p.out_rep = p.out[:3], p.out_len[:3], p.out_rep[:3]   # 1 update's parts
    rows = _Rows(6, 272)
    for s in range(6):   # 6 complete slots, 2 result parts each = 12 results
        pkt = pack_packet(Header(job=1, worker=0, slot=s, count=256, exponent=120,
                                 offset=256 * s), np.zeros(256, np.uint8))
        rows.rx[s] = np.frombuffer(pkt, np.uint8)
        rows.rx_len[s], rows.rx_ip[s], rows.rx_udp[s] = len(pkt), 0x0A000001, 5000
        rows.frame_len[s] = len(pkt) + 42
    sends = []

    def send(out, out_len, out_rep, k, img):
        sends.append([bytes(out[i, :out_len[i]]) for i in range(k)])

    p.process_batch(rows.rx, rows.rx_off, rows.rx_len, rows.rx_port, rows.rx_ip, rows.rx_udp,
                    rows.frame_len, 6, send)
    assert len(sends) == 6 and all(len(s) == 2 for s in sends)
    offsets = [int.from_bytes(pk[12:16], "big") for s in sends for pk in s]
    assert offsets == [256 * s + part * 128 for s in range(6) for part in (0, 1)]
    rec = trace.array()
    assert len(rec) == 6 and (rec["decision"] == int(Decision.COMPLETE)).all()
    assert rec["slot"].tolist() == list(range(6))
    assert int(p.counters_packets[Decision.COMPLETE]) == 6


def test_a_transport_repointed_at_another_switch_sends_its_batches_there():
    """A worker binds its transport before the welcome names the switch: the batched send must
    go to the address set last, not the one the transport was made with (on the Mininet rack
    the updates went to 127.0.0.1 and the switch never saw one)."""
    import socket

    from worker.transport import UdpTransport
    first, second = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    first.bind(("127.0.0.1", 0))
    second.bind(("127.0.0.2", 0))
    for s in (first, second):
        s.settimeout(2.0)
    try:
        with UdpTransport(first.getsockname()) as t:
            t.switch = second.getsockname()
            rows = np.arange(3 * 8, dtype=np.uint8).reshape(3, 8)
            t.send_rows(rows, 8, np.arange(3), 3)
            got = [second.recv(64) for _ in range(3)]
            assert got == [bytes(r) for r in rows]
            first.setblocking(False)
            with pytest.raises(BlockingIOError):
                first.recv(64)
    finally:
        first.close()
        second.close()
