"""The raw-interface switch on PACKET_MMAP rings (switch.packet_rings), end to end on veth
pairs whose host ends live in network namespaces this test creates (root only): every update
gets through and every result comes back with both checksums right, more frames than a ring
block or a pipeline batch; forwarded frames leave the right port unchanged; and when the
kernel refuses a ring the switch says so in one line and serves on recvmmsg/sendmmsg."""
from __future__ import annotations

import functools
import os
import select
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from nina import p4spec
from nina.config import SWITCH_MAC, JobSpec, WorkerAddr, mac_to_int
from nina.decisions import Decision
from nina.mmsg import MSG_DONTWAIT, MsgRing
from nina.wire import UDP_PORT, Encoding, Header, pack_packet, round_flags
from switch.packets import parse_frame, udp_checksum

N_SLOTS = 1500          # each slot completes once: 3000 updates in, 6000 result parts out
SWITCH_IP = "10.78.0.254"


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@pytest.fixture
def lab():
    """Two veth pairs: switch ends nr<pid>s1/s2 in this namespace, host ends in namespace
    nr<pid>; yields (switch ifaces, namespace, host ifaces)."""
    if os.geteuid() != 0:
        pytest.skip("the ring test needs root (veth pairs, a namespace, AF_PACKET)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) not on PATH")
    tag = f"nr{os.getpid() % 100000}"
    ns = tag
    sw, hosts = [f"{tag}s{i}" for i in (1, 2)], [f"{tag}h{i}" for i in (1, 2)]
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
        _sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
            "net.ipv6.conf.default.disable_ipv6=1")
        for s, h in zip(sw, hosts):
            _sh("ip", "link", "add", s, "type", "veth", "peer", "name", h)
            _sh("sysctl", "-q", "-w", f"net.ipv6.conf.{s}.disable_ipv6=1")
            _sh("ip", "link", "set", h, "netns", ns)
            _sh("ip", "link", "set", s, "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", h, "up")
        yield sw, ns, hosts
    finally:
        for s in sw:
            subprocess.run(["ip", "link", "del", s], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _host_socket(ns: str, iface: str) -> socket.socket:
    """An AF_PACKET socket on a host end (created inside its namespace)."""
    from switch.io_udp import set_buffers
    from topology.netns import in_netns_path
    with in_netns_path(f"/run/netns/{ns}"):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        set_buffers(s, 64 << 20)
        s.bind((iface, 0))
    s.setblocking(False)
    return s


def _switch(sw_ifaces, n_slots, io="ring", tx_segments=1, rx_gso=False):
    from switch.io_raw import RawIO
    from switch.pipeline import Pipeline
    from switch.server import SwitchServer
    spec = JobSpec(5, 2, Encoding.NAT8, slot_count=n_slots, switch_ip=SWITCH_IP,
                   workers=tuple(WorkerAddr(w, f"10.78.0.{w + 1}", 42000 + w, port=w + 1,
                                            mac=f"02:00:00:00:78:{w + 1:02x}")
                                 for w in range(2)))
    pipeline = Pipeline(pool_slots=4096)
    firsts = pipeline.install_job(spec)
    for w in spec.workers:
        pipeline.tables.insert(p4spec.L2_FORWARD.name, (mac_to_int(w.mac),), (w.port,))
    return SwitchServer(pipeline, RawIO(sw_ifaces, io, tx_segments=tx_segments,
                                        rx_gso=rx_gso)).start(), spec, firsts


def _receive(socks, want: int, timeout: float = 20.0) -> list[list[bytes]]:
    """Frames arriving at each host socket until `want` came to each (or the timeout)."""
    ring = MsgRing(1024, 2048)
    got = [[] for _ in socks]
    deadline = time.monotonic() + timeout
    while any(len(g) < want for g in got) and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.5)
        for s in ready:
            i = socks.index(s)
            while True:
                m = ring.recv(s.fileno(), MSG_DONTWAIT)
                if not m:
                    break
                got[i] += [ring.buf[j, :ring.lengths[j]].tobytes() for j in range(m)]
    return got


def _results(frames: list[bytes]) -> list[bytes]:
    """The UDP payloads of NINA results among frames, both checksums verified."""
    out = []
    for f in frames:
        if len(f) < 42 or f[12:14] != b"\x08\x00" or f[23] != 17 or \
                int.from_bytes(f[34:36], "big") != UDP_PORT:
            continue
        p = parse_frame(f, nina_port=int.from_bytes(f[36:38], "big"))
        ip = f[14:34]
        total = sum(int.from_bytes(ip[i:i + 2], "big") for i in range(0, 20, 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        assert total == 0xFFFF, "bad IPv4 header checksum"
        seg = bytearray(f[34:])
        want = int.from_bytes(seg[6:8], "big")
        seg[6:8] = b"\0\0"
        assert udp_checksum(p.src_ip, p.dst_ip, bytes(seg)) == want, "bad UDP checksum"
        out.append(bytes(f[42:]))
    return out


def _send_updates(socks, spec, firsts, first_worker: int = 0) -> None:
    """Every slot's update from each worker's host end (socks[i]: worker first_worker + i),
    a window of 256 per send."""
    codes = [np.full(256, 3, np.uint8), np.full(256, 0x80 | 1, np.uint8)]
    smac = mac_to_int(SWITCH_MAC)
    from switch.packets import build_udp_frame
    for w, s in enumerate(socks, start=first_worker):
        ip = int.from_bytes(socket.inet_aton(f"10.78.0.{w + 1}"), "big")
        dip = int.from_bytes(socket.inet_aton(SWITCH_IP), "big")
        frames = [build_udp_frame(smac, mac_to_int(spec.workers[w].mac), ip, dip,
                                  42000 + w, UDP_PORT,
                                  pack_packet(Header(job=5, worker=w, slot=slot, count=256,
                                                     exponent=100, offset=256 * slot,
                                                     flags=round_flags(firsts[slot])),
                                              codes[w]))
                  for slot in range(N_SLOTS)]
        rows = np.frombuffer(b"".join(frames), np.uint8).reshape(N_SLOTS, -1)
        tx = MsgRing(256, 0)
        sent = 0
        while sent < N_SLOTS:   # a burst of a whole window per worker, as a client sends
            k = min(256, N_SLOTS - sent)
            ok, failed = tx.send_rows(s.fileno(), rows[sent:sent + k], rows.shape[1], k)
            assert failed == 0
            sent += ok


def _check_results(res: list[bytes], w: int, S: int) -> None:
    """Worker w's results: all 2 per slot, each the sum the two workers' codes make."""
    assert len(res) == 2 * N_SLOTS, f"worker {w}: {len(res)} results"
    offsets = set()
    for data in res:
        h = Header.unpack(data)
        assert (h.job, h.worker) == (5, w)
        vals = np.frombuffer(data[16:], ">i4")
        assert (vals == (1 << (S - 3)) - (1 << (S - 1))).all()
        offsets.add(h.offset)
    assert offsets == {256 * s + 128 * part for s in range(N_SLOTS) for part in (0, 1)}


@pytest.mark.parametrize("io", ["ring-v3", "ring-v2", "mmsg"])
def test_every_update_through_the_switch_and_every_result_back(lab, io):
    sw_ifaces, ns, hosts = lab
    socks = [_host_socket(ns, h) for h in hosts]
    server, spec, firsts = _switch(sw_ifaces, N_SLOTS, io)
    try:
        assert server.io.io == io
        _send_updates(socks, spec, firsts)
        got = _receive(socks, 2 * N_SLOTS)
        pipeline = server.pipeline
        assert int(pipeline.counters_packets[Decision.COMPLETE]) == N_SLOTS
        for w in range(2):
            _check_results(_results(got[w]), w, spec.shift)
        assert server.io.tx_errors == 0 and server.io.rx_drops == 0
        assert server.io.rx_packets == 2 * N_SLOTS   # our own transmissions are not counted
    finally:
        server.stop()
        for s in socks:
            s.close()


@pytest.mark.parametrize("tx_segments", [1, 15], ids=["plain", "gso-ring"])
def test_forwarded_frames_leave_the_named_port_unchanged_in_a_batch(lab, tx_segments):
    """On a GSO transmit ring (--tx-gso) too: a forwarded frame goes behind an empty
    virtio_net_hdr, never grouped, and leaves byte for byte."""
    sw_ifaces, ns, hosts = lab
    socks = [_host_socket(ns, h) for h in hosts]
    server, spec, _ = _switch(sw_ifaces, 4, tx_segments=tx_segments)
    try:
        dmac = spec.workers[1].mac
        frames = [bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex("020000007801")
                  + b"\x88\xb6" + i.to_bytes(4, "big") + bytes(46 + i % 900)
                  for i in range(600)]   # a made-up EtherType: not IPv4, so forwarded
        for f in frames:
            socks[0].send(f)
        got = _receive(socks[1:], len(frames), timeout=10.0)[0]
        assert [g for g in got if g[12:14] == b"\x88\xb6"] == frames
        assert int(server.pipeline.counters_packets[Decision.FORWARDED]) == len(frames)
    finally:
        server.stop()
        for s in socks:
            s.close()


def test_a_refused_ring_falls_back_to_mmsg_in_one_line(lab, monkeypatch, capfd):
    """A block size that is no multiple of the page size: the kernel itself refuses."""
    from switch import io_raw
    from switch.packet_rings import RxRing
    sw_ifaces, _, _ = lab
    monkeypatch.setattr(io_raw, "RxRing", functools.partial(RxRing, block_size=65536 + 16))
    io = io_raw.RawIO(sw_ifaces)
    try:
        assert io.io == "mmsg" and all(pt.kind == "mmsg" for pt in io.ports.values())
        assert "recvmmsg/sendmmsg" in io.describe()
    finally:
        io.close()
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PACKET_MMAP ring refused" in err[0] and sw_ifaces[0] in err[0]


def test_gso_results_reach_a_gro_socket_whole_and_others_cut(lab):
    """--tx-gso: worker 0's switch port passes GSO frames (as the rack's bandwidth-only links
    do), so its UDP_GRO socket takes many results per receive buffer; worker 1's port has
    offloads off, so the kernel cuts there and its host end sees ordinary frames, each with
    both checksums right. Either way every result arrives, once."""
    from nina.udp_batch import BatchRx
    from topology.mininet_rack import GSO_PASS, OFFLOADS_OFF
    from topology.netns import in_netns_path
    sw_ifaces, ns, hosts = lab
    _sh("ethtool", "-K", sw_ifaces[0], *GSO_PASS)
    _sh("ethtool", "-K", sw_ifaces[1], *OFFLOADS_OFF)
    ex = ("ip", "netns", "exec", ns)
    _sh(*ex, "ip", "link", "set", hosts[0], "address", "02:00:00:00:78:01")
    _sh(*ex, "ip", "addr", "add", "10.78.0.1/24", "dev", hosts[0])
    socks = [_host_socket(ns, h) for h in hosts]
    with in_netns_path(f"/run/netns/{ns}"):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        udp.bind(("10.78.0.1", 42000))
    rx = BatchRx(udp, 4096, 2048, msgs=64, gro=True)
    assert rx.gro, "the kernel refused UDP_GRO"
    server, spec, firsts = _switch(sw_ifaces, N_SLOTS, "ring-v2", tx_segments=15)
    try:
        _send_updates(socks, spec, firsts)
        res0, deadline = [], time.monotonic() + 20.0
        while len(res0) < 2 * N_SLOTS and time.monotonic() < deadline:
            if select.select([udp], [], [], 0.5)[0]:
                m = rx.recv(MSG_DONTWAIT)
                while m:
                    res0 += [rx.rows[i, :rx.lengths[i]].tobytes() for i in range(m)]
                    m = rx.more()
        got1 = _receive(socks[1:], 2 * N_SLOTS)[0]
        _check_results(res0, 0, spec.shift)
        assert rx.messages * 4 <= len(res0), \
            f"{len(res0)} results in {rx.messages} receive buffers: no GSO frames got through"
        assert all(len(f) <= 1514 for f in got1)
        _check_results(_results(got1), 1, spec.shift)
        assert server.io.tx_errors == 0 and server.io.tx_packets == 4 * N_SLOTS
    finally:
        server.stop()
        udp.close()
        for s in socks:
            s.close()


def _gso_host(ns: str, iface: str, ip: str, mac: str) -> socket.socket:
    """Host end `iface` as a sender whose segmented UDP sends stay whole on the wire (its
    offloads as the rack's clean links have them), with `ip` and a UDP socket on it."""
    from topology.mininet_rack import GSO_PASS
    from topology.netns import in_netns_path
    ex = ("ip", "netns", "exec", ns)
    _sh(*ex, "ethtool", "-K", iface, *GSO_PASS)
    _sh(*ex, "ip", "link", "set", iface, "address", mac)
    _sh(*ex, "ip", "addr", "add", f"{ip}/24", "dev", iface)
    with in_netns_path(f"/run/netns/{ns}"):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        udp.bind((ip, 42000))
    return udp


def _segmented_send(udp: socket.socket, dest, payloads: list[bytes]) -> None:
    """One send per 64 payloads of one size, cut by the kernel (UDP_SEGMENT)."""
    from nina.udp_batch import SOL_UDP, UDP_SEGMENT
    udp.setsockopt(SOL_UDP, UDP_SEGMENT, len(payloads[0]))
    for i in range(0, len(payloads), 64):
        udp.sendto(b"".join(payloads[i:i + 64]), dest)


def test_segmented_updates_arrive_whole_and_are_cut_into_updates(lab):
    """--rx-gso: worker 0 sends its updates 64 to a segmented send through a host end that
    passes GSO, so the switch's ring gets frames of 64 updates, cuts them, and aggregates
    them with worker 1's ordinary frames: every slot completes, every result comes back, and
    the switch counted the GSO frames it cut (the kernel did hand them over whole)."""
    sw_ifaces, ns, hosts = lab
    udp = _gso_host(ns, hosts[0], "10.78.0.1", "02:00:00:00:78:01")
    _sh("ip", "netns", "exec", ns, "ip", "neigh", "replace", SWITCH_IP, "lladdr", SWITCH_MAC,
        "dev", hosts[0], "nud", "permanent")
    socks = [_host_socket(ns, h) for h in hosts]
    server, spec, firsts = _switch(sw_ifaces, N_SLOTS, "ring-v2", rx_gso=True)
    pipeline = server.pipeline
    try:
        assert "taking GSO frames whole" in server.io.describe()
        codes = np.full(256, 3, np.uint8)
        _segmented_send(udp, (SWITCH_IP, UDP_PORT), [
            pack_packet(Header(job=5, worker=0, slot=s, count=256, exponent=100,
                               offset=256 * s, flags=round_flags(firsts[s])), codes)
            for s in range(N_SLOTS)])
        _send_updates(socks[1:], spec, firsts, first_worker=1)
        got = _receive(socks, 2 * N_SLOTS)
    
        assert int(pipeline.counters_packets[Decision.COMPLETE]) == N_SLOTS
        for w in range(2):
            _check_results(_results(got[w]), w, spec.shift)
        assert server.io.rx_packets == 2 * N_SLOTS and server.io.rx_drops == 0
        cut, bad = server.io.rx_gso_frames
        assert bad == 0 and 0 < cut <= N_SLOTS // 16, (cut, bad)
    finally:
        server.stop()
        udp.close()
        for s in socks:
            s.close()


def test_forwarded_traffic_gets_the_checksums_its_sender_left_to_the_offload(lab):
    """--rx-gso: frames from a host with TX checksumming on carry only the pseudo-header sum
    (the offload would finish it); the switch forwards them to a host in another namespace
    with their checksums completed, or that host's stack would drop them. Plain datagrams
    and a segmented send's, all arrive."""
    from topology.netns import in_netns_path
    sw_ifaces, ns, hosts = lab
    ns2 = f"{ns}b"
    _sh("ip", "netns", "add", ns2)
    try:
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", hosts[1], "netns", ns2)
        _sh("ip", "netns", "exec", ns2, "ip", "link", "set", hosts[1], "up")
        udp0 = _gso_host(ns, hosts[0], "10.78.0.1", "02:00:00:00:78:01")
        udp1 = _gso_host(ns2, hosts[1], "10.78.0.2", "02:00:00:00:78:02")
        for n, h, ip, mac in ((ns, hosts[0], "10.78.0.2", "02:00:00:00:78:02"),
                              (ns2, hosts[1], "10.78.0.1", "02:00:00:00:78:01")):
            _sh("ip", "netns", "exec", n, "ip", "neigh", "replace", ip, "lladdr", mac, "dev", h,
                "nud", "permanent")
        from switch.io_raw import RawIO
        from switch.pipeline import Pipeline
        from switch.server import SwitchServer
        pipeline = Pipeline(pool_slots=64)
        for port, m in ((1, "02:00:00:00:78:01"), (2, "02:00:00:00:78:02")):
            pipeline.tables.insert(p4spec.L2_FORWARD.name, (mac_to_int(m),), (port,))
        server = SwitchServer(pipeline, RawIO(sw_ifaces, "ring-v2", rx_gso=True)).start()
        try:
            plain = [b"p%03d" % i + bytes(200 + i) for i in range(50)]
            for p in plain:
                udp0.sendto(p, ("10.78.0.2", 42000))
            segmented = [b"s%03d" % i + bytes(500) for i in range(128)]
            _segmented_send(udp0, ("10.78.0.2", 42000), segmented)
            got, deadline = [], time.monotonic() + 10
            udp1.settimeout(0.5)
            while len(got) < len(plain) + len(segmented) and time.monotonic() < deadline:
                try:
                    got.append(udp1.recv(4096))
                except TimeoutError:
                    pass
            assert sorted(got) == sorted(plain + segmented)
            assert server.io.rx_gso_frames[0] >= 2
        finally:
            server.stop()
            udp0.close()
            udp1.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns2], capture_output=True, timeout=20)
