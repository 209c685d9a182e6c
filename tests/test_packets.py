"""Ethernet/IPv4/UDP framing of the raw-interface back end, checked against scapy, and the
raw back end end to end on veth pairs into network namespaces (root only)."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import raw

from nina import p4spec
from nina.config import SWITCH_MAC, JobSpec, WorkerAddr, mac_to_int
from nina.decisions import Decision
from nina.wire import UDP_PORT, Encoding, Header, pack_packet
from switch.packets import (MALFORMED, NINA, OTHER, build_udp_frame, ones_complement_sum,
                            parse_frame, udp_checksum)

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
mac = st.integers(0, 2**48 - 1)


def naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


@given(st.binary(max_size=2000))
def test_ones_complement_sum_matches_the_definition(data):
    assert ones_complement_sum(data) == naive_sum(data)


@settings(max_examples=200)
@given(mac, mac, u32, u32, u16, u16, st.binary(max_size=1100))
def test_built_frames_carry_the_checksums_scapy_computes(dmac, smac, sip, dip, sport, dport,
                                                          payload):
    frame = build_udp_frame(dmac, smac, sip, dip, sport, dport, payload)
    pkt = Ether(frame)
    assert pkt.dst.replace(":", "") == f"{dmac:012x}" and pkt[IP].src == \
        ".".join(str(b) for b in sip.to_bytes(4, "big"))
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (sport, dport, 8 + len(payload))
    assert raw(pkt[UDP].payload) == payload
    got_ip, got_udp = pkt[IP].chksum, pkt[UDP].chksum
    del pkt[IP].chksum
    del pkt[UDP].chksum
    again = Ether(raw(pkt))
    assert got_ip == again[IP].chksum
    assert got_udp == (again[UDP].chksum or 0xFFFF) and got_udp != 0


@given(u32, u32, st.binary(min_size=8, max_size=300))
def test_udp_checksum_verifies_to_zero(sip, dip, seg):
    seg = seg[:6] + b"\0\0" + seg[8:]
    c = udp_checksum(sip, dip, seg)
    pseudo = struct.pack("!IIBBH", sip, dip, 0, 17, len(seg))
    assert ones_complement_sum(pseudo + seg[:6] + c.to_bytes(2, "big") + seg[8:]) == 0xFFFF


def test_parse_classifies_and_extracts():
    nina = pack_packet(Header(job=1, count=0))
    f = Ether(dst="02:00:00:00:00:fe", src="02:00:00:00:00:01") / \
        IP(src="10.0.0.1", dst="10.0.0.254") / UDP(sport=40000, dport=UDP_PORT) / nina
    fr = parse_frame(raw(f))
    assert fr.kind == NINA and (fr.src_ip, fr.dst_ip) == (0x0A000001, 0x0A0000FE)
    assert (fr.src_port, fr.dst_port, fr.src_mac) == (40000, UDP_PORT, 0x020000000001)
    assert raw(f)[fr.payload_offset:fr.payload_offset + fr.payload_len] == nina
    # IPv4 options move the UDP header
    f2 = Ether() / IP(src="10.0.0.1", dst="10.0.0.254", options=b"\x01\x01\x01\x00") / \
        UDP(sport=1, dport=UDP_PORT) / b"abc"
    fr2 = parse_frame(raw(f2))
    assert fr2.kind == NINA and raw(f2)[fr2.payload_offset:][:fr2.payload_len] == b"abc"
    # Ethernet padding of short frames is not payload
    short = raw(Ether() / IP() / UDP(dport=UDP_PORT) / b"x") + b"\0" * 20
    assert parse_frame(short).payload_len == 1
    assert parse_frame(raw(Ether() / IP() / UDP(dport=53) / b"q")).kind == OTHER
    assert parse_frame(raw(Ether() / ARP())).kind == OTHER
    assert parse_frame(b"\x01\x02").kind == OTHER
    frag = Ether() / IP(flags="MF") / UDP(dport=UDP_PORT) / b"zz"
    assert parse_frame(raw(frag)).kind == MALFORMED
    cut = raw(Ether() / IP() / UDP(dport=UDP_PORT) / (b"y" * 100))[:-30]
    assert parse_frame(cut).kind == MALFORMED


@settings(max_examples=300)
@given(st.binary(max_size=120), st.integers(0, 60))
def test_parse_never_raises(data, cut):
    base = raw(Ether() / IP() / UDP(dport=UDP_PORT) / data)
    for frame in (data, base, base[:cut], base[:14] + data):
        assert parse_frame(frame).kind in (NINA, MALFORMED, OTHER)


# ---------------------------------------------------------------- raw interfaces, end to end

NS_PREFIX = f"ninatest{os.getpid()}"
WORKER_SCRIPT = r"""
import socket, sys
port, dst, pkt = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
s.settimeout(5)
s.sendto(pkt, (dst, 48864))
data, addr = s.recvfrom(4096)
print(addr[0], addr[1], data.hex())
"""


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@pytest.fixture
def rack():
    """Two hosts in namespaces, each on a veth whose root-side end the switch owns."""
    if os.geteuid() != 0:
        pytest.skip("raw interfaces need root (veth pairs, namespaces, AF_PACKET)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) not on PATH")
    pid = os.getpid() % 100000
    hosts = []
    try:
        for i in (1, 2):
            ns, sw_if, h_if = f"{NS_PREFIX}h{i}", f"nt{pid}s{i}", f"nt{pid}h{i}"
            hmac = f"02:00:00:00:77:{i:02x}"
            _sh("ip", "netns", "add", ns)
            hosts.append((ns, sw_if))
            _sh("ip", "link", "add", sw_if, "type", "veth", "peer", "name", h_if)
            _sh("ip", "link", "set", h_if, "netns", ns)
            _sh("sysctl", "-q", "-w", f"net.ipv6.conf.{sw_if}.disable_ipv6=1")
            _sh("ip", "link", "set", sw_if, "up")
            x = ("ip", "netns", "exec", ns)
            _sh(*x, "ip", "link", "set", h_if, "address", hmac)
            _sh(*x, "ip", "addr", "add", f"10.77.0.{i}/24", "dev", h_if)
            _sh(*x, "ip", "link", "set", h_if, "up")
            _sh(*x, "ip", "link", "set", "lo", "up")
            _sh(*x, "ip", "neigh", "add", "10.77.0.254", "lladdr", SWITCH_MAC, "dev", h_if)
            j = 3 - i
            _sh(*x, "ip", "neigh", "add", f"10.77.0.{j}", "lladdr", f"02:00:00:00:77:{j:02x}",
                "dev", h_if)
        yield [h[0] for h in hosts], [h[1] for h in hosts]
    finally:
        for ns, sw_if in hosts:
            subprocess.run(["ip", "link", "del", sw_if], capture_output=True, timeout=20)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_raw_interfaces_aggregate_and_forward(rack):
    from switch.io_raw import RawIO
    from switch.pipeline import Pipeline
    from switch.server import SwitchServer

    namespaces, ifaces = rack
    spec = JobSpec(9, 2, Encoding.NAT8, slot_count=4, switch_ip="10.77.0.254", workers=tuple(
        WorkerAddr(w, f"10.77.0.{w + 1}", 41000 + w, port=w + 1, mac=f"02:00:00:00:77:{w + 1:02x}")
        for w in range(2)))
    pipeline = Pipeline(pool_slots=64)
    pipeline.install_job(spec)
    for w in spec.workers:
        pipeline.tables.insert(p4spec.L2_FORWARD.name, (mac_to_int(w.mac),), (w.port,))
    server = SwitchServer(pipeline, RawIO(ifaces)).start()
    try:
        codes = [np.array([0, 1, 2], np.uint8), np.array([0, 0x81, 0x7F], np.uint8)]
        procs = []
        for w in range(2):
            pkt = pack_packet(Header(job=9, worker=w, slot=1, count=3, exponent=100 + w), codes[w])
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", namespaces[w], sys.executable, "-c", WORKER_SCRIPT,
                 str(41000 + w), "10.77.0.254", pkt.hex()],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=30) for p in procs]
        S = spec.shift
        want = [2 << S, (1 << (S - 1)) - (1 << (S - 1)), 1 << (S - 2)]
        for w, (stdout, stderr) in enumerate(outs):
            assert procs[w].returncode == 0, stderr
            ip, port, hexdata = stdout.split()
            assert (ip, int(port)) == ("10.77.0.254", UDP_PORT)
            data = bytes.fromhex(hexdata)
            h = Header.unpack(data)
            assert (h.worker, h.job, h.slot, h.exponent, h.count) == (w, 9, 1, 101, 3)
            assert list(struct.unpack(">3i", data[16:28])) == want
        ping = subprocess.run(["ip", "netns", "exec", namespaces[0], "ping", "-c", "1", "-W",
                               "3", "10.77.0.2"], capture_output=True, text=True, timeout=20)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert pipeline.counters_packets[Decision.FORWARDED] >= 2   # echo request and reply
        assert pipeline.counters_packets[Decision.COMPLETE] == 1
    finally:
        server.stop()


# ---- GSO frames of results (--tx-gso): what the kernel is asked to cut --------------------

def _gso_frame(frames: list[bytes]) -> bytes:
    from switch.packets import put_vnet_frame
    rows = np.zeros((len(frames), max(map(len, frames))), np.uint8)
    for i, f in enumerate(frames):
        rows[i, :len(f)] = np.frombuffer(f, np.uint8)
    flen = np.array([len(f) for f in frames], np.int64)
    dst = np.zeros(8192, np.uint8)
    n = put_vnet_frame(dst, 0, rows, flen, np.arange(len(frames)), 0, len(frames), 8192)
    return dst[:n].tobytes()


def _cut(gso: bytes) -> list[bytes]:
    """Cut a GSO frame as the kernel does (UDP_L4): the header once per datagram with its
    own lengths; checksums recomputed here by scapy, independently of the code under test."""
    flags, gtype, hdr_len, gsize, cstart, coff = struct.unpack("<BBHHHH", gso[:10])
    frame = gso[10:]
    head, data = frame[:hdr_len], frame[hdr_len:]
    out = []
    for o in range(0, len(data), gsize):
        pkt = Ether(head + data[o:o + gsize])
        del pkt[IP].len, pkt[IP].chksum, pkt[UDP].len, pkt[UDP].chksum
        out.append(raw(Ether(raw(pkt))))
    return out


def _result_frame(dport: int, payload: bytes, dmac: int = 0x020000007801) -> bytes:
    return build_udp_frame(dmac, mac_to_int(SWITCH_MAC), 0x0A4E00FE, 0x0A4E0001, UDP_PORT,
                           dport, payload)


def test_a_gso_frame_asks_for_udp_segments_that_cut_back_into_the_frames():
    frames = [_result_frame(42000, bytes([i]) * 272) for i in range(5)]
    gso = _gso_frame(frames)
    flags, gtype, hdr_len, gsize, cstart, coff = struct.unpack("<BBHHHH", gso[:10])
    assert (flags, gtype, hdr_len, gsize, cstart, coff) == (1, 5, 42, 272, 34, 6)
    pkt = Ether(gso[10:])
    assert pkt[IP].len == 20 + 8 + 5 * 272 and pkt[UDP].len == 8 + 5 * 272
    ip = bytes(gso[10 + 14:10 + 34])
    assert ones_complement_sum(ip) == 0xFFFF, "the IPv4 header checksum of the whole frame"
    # CHECKSUM_PARTIAL: the UDP field holds the pseudo-header sum the kernel completes
    pseudo = struct.pack("!IIBBH", 0x0A4E00FE, 0x0A4E0001, 0, 17, 8 + 5 * 272)
    assert pkt[UDP].chksum == ones_complement_sum(pseudo)
    cut = _cut(gso)
    assert [c[:18] + c[20:24] + c[26:] for c in cut] == \
        [f[:18] + f[20:24] + f[26:] for f in frames]   # all but the IP id and its checksum


def test_one_frame_goes_whole_behind_an_empty_header():
    f = _result_frame(42000, b"\x07" * 100)
    gso = _gso_frame([f])
    assert gso == bytes(10) + f


def test_only_frames_of_one_flow_share_a_gso_frame():
    from switch.packets import same_udp_flow
    a = np.frombuffer(_result_frame(42000, b"\1" * 64), np.uint8)
    assert same_udp_flow(a, np.frombuffer(_result_frame(42000, b"\2" * 64), np.uint8))
    assert not same_udp_flow(a, np.frombuffer(_result_frame(42001, b"\1" * 64), np.uint8))
    assert not same_udp_flow(a, np.frombuffer(_result_frame(42000, b"\1" * 64, dmac=5),
                                              np.uint8))
    arp = np.frombuffer(raw(Ether() / ARP()).ljust(64, b"\0"), np.uint8)
    assert not same_udp_flow(arp, arp)


# ---- GSO frames received whole (--rx-gso): the switch's own cut ---------------------------

def _partial_sum(sip: str, dip: str, proto: int, l4_len: int) -> int:
    """The pseudo-header sum a sender leaves in a CHECKSUM_PARTIAL frame's L4 field."""
    pseudo = socket.inet_aton(sip) + socket.inet_aton(dip) + struct.pack("!BBH", 0, proto, l4_len)
    return ones_complement_sum(pseudo)


def _rows_of(frame: bytes, seg: int, rows: int = 8, m: int = 0, cap: int = 8):
    from switch.packets import cut_udp_gso
    buf = np.frombuffer(frame, np.uint8)
    out = np.zeros((rows, 2048), np.uint8)
    lens, csum = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
    k = cut_udp_gso(buf, buf.size, seg, out, lens, csum, m, cap)
    return k, out, lens, csum


def test_a_received_gso_frame_is_cut_into_the_datagrams_scapy_builds():
    """A UDP GSO frame as a sender's kernel hands it on (one header, IP and UDP lengths of the
    whole, the pseudo-header sum in the UDP field): the cut gives each datagram its own
    lengths, IP id and header checksum, and once the pending checksums are completed every
    row is byte for byte the datagram scapy builds, the shorter last one included."""
    from switch.packets import complete_checksums
    data = bytes(range(256)) * 3
    seg = 300                      # 768 bytes: datagrams of 300, 300 and 168
    whole = Ether(dst="02:00:00:00:00:fe", src="02:00:00:00:00:01") / \
        IP(src="10.78.0.1", dst="10.78.0.254", id=0xFFFE, flags="DF") / \
        UDP(sport=42000, dport=UDP_PORT) / data
    whole[UDP].chksum = _partial_sum("10.78.0.1", "10.78.0.254", 17, 8 + len(data))
    k, rows, lens, csum = _rows_of(raw(whole), seg)
    assert k == 3 and list(csum[:3] >> 16) == [34] * 3 and list(csum[:3] & 0xFFFF) == [40] * 3
    complete_checksums(rows, lens, csum, np.arange(k))
    assert list(csum[:3]) == [0, 0, 0]
    for s in range(k):
        want = Ether(dst="02:00:00:00:00:fe", src="02:00:00:00:00:01") / \
            IP(src="10.78.0.1", dst="10.78.0.254", id=(0xFFFE + s) & 0xFFFF, flags="DF") / \
            UDP(sport=42000, dport=UDP_PORT) / data[s * seg:(s + 1) * seg]
        assert rows[s, :lens[s]].tobytes() == raw(want), f"datagram {s}"


def test_a_gso_cut_waits_for_rows_and_refuses_what_it_cannot_cut():
    frame = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
                / bytes(1000))
    k, rows, _, _ = _rows_of(frame, 100, rows=16, m=10, cap=16)   # 10 datagrams, 6 rows left
    assert k == -1 and not rows.any()
    assert _rows_of(frame, 100, rows=16, m=6, cap=16)[0] == 10
    tcp = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / bytes(1000))
    assert _rows_of(tcp, 100)[0] == -2
    assert _rows_of(frame[:40], 100)[0] == -2           # no UDP payload after the header
    assert _rows_of(raw(Ether() / ARP()), 100)[0] == -2


def test_a_forwarded_frame_gets_the_checksum_its_sender_left_to_the_offload():
    """A TCP segment as a host with TX checksumming on sends it (field = pseudo-header sum,
    the vnet header's csum_start/csum_offset): completed, it carries scapy's checksum; a
    row with nothing pending is left alone."""
    from switch.packets import complete_checksums, pending_checksum
    seg = Ether() / IP(src="10.78.0.1", dst="10.78.0.2") / \
        TCP(sport=5001, dport=40000, seq=7, flags="PA") / (b"ring" * 300)
    want = raw(seg)
    partial = seg.copy()
    partial[TCP].chksum = _partial_sum("10.78.0.1", "10.78.0.2", 6, len(partial[TCP]))
    rows = np.zeros((2, 2048), np.uint8)
    got = raw(partial)
    rows[0, :len(got)] = np.frombuffer(got, np.uint8)
    rows[1, :len(want)] = np.frombuffer(want, np.uint8)
    lens = np.array([len(got), len(want)], np.int64)
    csum = np.array([pending_checksum(34, 34 + 16), 0], np.int64)
    assert got != want
    complete_checksums(rows, lens, csum, np.array([0, 1], np.int64))
    assert rows[0, :lens[0]].tobytes() == want and rows[1, :lens[1]].tobytes() == want


# ---- a batch sorted for the pipeline, and results grouped per egress port ----------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([0, 1, 3, 4])),
                max_size=40))
def test_a_batch_splits_into_its_nina_frames_and_the_rest_that_is_ours(frames):
    from switch.packets import K_NINA, FrameRows
    m = len(frames)
    fr = FrameRows(max(m, 1))
    fr.kind[:m] = [k for k, _ in frames]
    pkttype = np.array([t for _, t in frames] or [0], np.uint8)
    ours, n_nina, n_other = fr.split(pkttype, m, 4)   # 4: PACKET_OUTGOING
    mine = [i for i, (_, t) in enumerate(frames) if t != 4]
    assert ours == len(mine)
    assert fr.nina[:n_nina].tolist() == [i for i in mine if frames[i][0] == K_NINA]
    assert fr.other[:n_other].tolist() == [i for i in mine if frames[i][0] != K_NINA]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3)), min_size=1, max_size=8),
       st.data(), st.booleans())
def test_results_leave_grouped_per_port_each_worker_in_its_own_order(reps, data, by_flow):
    """Replica r: (port, worker); a worker's flow (IP, UDP port) lives on one port."""
    from switch.kernel import R_DIP, R_DPORT, R_PORT
    from switch.packets import group_results
    flows = {}
    for port, w in reps:
        flows.setdefault(w, port)
    replicas = np.zeros((len(reps), 8), np.int64)
    for r, (_, w) in enumerate(reps):
        replicas[r, R_PORT] = flows[w]
        replicas[r, R_DIP] = 0x0A000000 + 0xFFFF - w   # descending: order must come from keys
        replicas[r, R_DPORT] = 40000 + w
    out_rep = np.array(data.draw(st.lists(st.integers(0, len(reps) - 1), min_size=1,
                                          max_size=50)), np.int64)
    k = len(out_rep)
    order, runs = np.zeros(k, np.int64), np.zeros(2 * k, np.int64)
    n = group_results(out_rep, k, replicas, by_flow, order, runs)
    assert sorted(order.tolist()) == list(range(k))   # every result exactly once
    start = 0
    ports = []
    for j in range(n):
        port, end = int(runs[2 * j]), int(runs[2 * j + 1])
        ports.append(port)
        mine = order[start:end].tolist()
        assert mine and all(replicas[out_rep[i], R_PORT] == port for i in mine)
        if by_flow:   # by flow, then in result order within it
            key = [(int(replicas[out_rep[i], R_DIP]), int(replicas[out_rep[i], R_DPORT]), i)
                   for i in mine]
            assert key == sorted(key)
        else:
            assert mine == sorted(mine)
        start = end
    assert start == k and ports == sorted(set(ports))
