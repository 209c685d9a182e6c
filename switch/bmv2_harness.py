"""BMv2 on veth pairs, driven frame by frame from this process: the harness the conformance
suite (tests/conformance) and bench/switch.py run the compiled P4 program in.

It needs `simple_switch_grpc` (built --with-pi --with-thrift) on PATH and root (veths); p4c is
not run: the committed p4c outputs (p4/build) are what it loads.
"""
from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nina.p4build import BMV2_JSON_PATH, P4INFO_PATH
from nina.procs import REPO as _REPO, free_port

REPO = Path(_REPO)


BMV2_JSON = Path(BMV2_JSON_PATH)


BMV2_P4INFO = Path(P4INFO_PATH)


BMV2_MISSING = "simple_switch_grpc not on PATH (build p4lang/behavioral-model; see README)"


ETH_P_ALL = 0x0003


ETH_P_IP = 0x0800


PACKET_OUTGOING = 4    # sll_pkttype of frames this host sent (our own injections)


FRAME_HEAD = struct.Struct("!6s6sH")          # Ethernet II


IPV4_HEAD = struct.Struct("!BBHHHBBH4s4s")    # without options


UDP_HEAD = struct.Struct("!HHHH")


def _ipv4_checksum(head: bytes) -> int:
    total = sum(struct.unpack(f"!{len(head) // 2}H", head))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(dst_mac: int, src_mac: int, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes) -> bytes:
    """Ethernet / IPv4 (no options, DF) / UDP (checksum 0) around payload."""
    udp_len = UDP_HEAD.size + len(payload)
    ip = bytearray(IPV4_HEAD.pack(0x45, 0, IPV4_HEAD.size + udp_len, 0, 0x4000, 64, 17, 0,
                                  socket.inet_aton(src_ip), socket.inet_aton(dst_ip)))
    struct.pack_into("!H", ip, 10, _ipv4_checksum(bytes(ip)))
    return (FRAME_HEAD.pack(dst_mac.to_bytes(6, "big"), src_mac.to_bytes(6, "big"), ETH_P_IP)
            + bytes(ip) + UDP_HEAD.pack(sport, dport, udp_len, 0) + payload)


@dataclass(frozen=True)
class UdpFrame:
    dst_mac: int
    src_mac: int
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    payload: bytes


def parse_udp_frame(frame: bytes) -> UdpFrame:
    """The addresses and UDP payload of an Ethernet/IPv4/UDP frame; AssertionError naming
    what is wrong with anything else (a bad IPv4 checksum or length included)."""
    assert len(frame) >= FRAME_HEAD.size + IPV4_HEAD.size + UDP_HEAD.size, \
        f"short frame of {len(frame)} bytes"
    dmac, smac, etype = FRAME_HEAD.unpack_from(frame)
    assert etype == ETH_P_IP, f"EtherType {etype:#06x}, not IPv4"
    ip = frame[14:34]
    vihl, _, total, _, _, _, proto, _, sip, dip = IPV4_HEAD.unpack(ip)
    assert vihl == 0x45, f"IPv4 version/ihl {vihl:#04x}"
    assert _ipv4_checksum(ip) == 0, "bad IPv4 header checksum"
    assert proto == 17, f"IP protocol {proto}, not UDP"
    assert 14 + total <= len(frame), f"IPv4 total length {total} past the frame"
    sport, dport, ulen, _ = UDP_HEAD.unpack_from(frame, 34)
    assert ulen == total - 20, f"UDP length {ulen} vs IPv4 total length {total}"
    return UdpFrame(int.from_bytes(dmac, "big"), int.from_bytes(smac, "big"),
                    socket.inet_ntoa(sip), socket.inet_ntoa(dip), sport, dport,
                    frame[42:34 + ulen])


def bmv2_unavailable() -> str | None:
    """Why BMv2 cannot run here, or None. Only what the BMv2 plane runs counts: the switch
    binary, root, iproute2 and the committed p4c outputs (p4c itself is not run)."""
    if shutil.which("simple_switch_grpc") is None:
        return BMV2_MISSING
    if os.geteuid() != 0:
        return "the BMv2 plane needs root (it creates veth interfaces)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    for f in (BMV2_JSON, BMV2_P4INFO):
        if not f.exists():
            return f"{f.relative_to(REPO)} is missing: run `make p4`"
    return None


class Bmv2Switch:
    """simple_switch_grpc with no program, its ports on veth pairs ninab<id>s<k> (switch side)
    <-> ninab<id>h<k> (host side, where this process injects and captures frames through
    AF_PACKET sockets), P4Runtime and thrift on free loopback ports. IPv6 is off on both
    ends and no address is assigned, so the kernel sends nothing on them."""

    def __init__(self, ports: int = 1, log_file: str | None = None,
                 binary: str = "simple_switch_grpc", tag_suffix: str = ""):
        self.tag = f"ninab{os.getpid() % 100000}{tag_suffix}"   # <= 15 chars with s<k>
        self.ports = ports
        self.grpc_addr = f"127.0.0.1:{free_port()}"
        self.thrift_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.socks: list[socket.socket] = []
        self._links: list[str] = []
        try:
            for k in range(ports):
                self._veth(f"{self.tag}s{k}", f"{self.tag}h{k}")
            cmd = [binary, "--no-p4", "--device-id", "0",
                   "--thrift-port", str(self.thrift_port),
                   "--notifications-addr", f"ipc:///tmp/{self.tag}-notifications.ipc"]
            for k in range(ports):
                cmd += ["-i", f"{k}@{self.tag}s{k}"]
            if log_file:
                cmd += ["--log-file", log_file, "--log-flush", "-L", "debug"]
            cmd += ["--", "--grpc-server-addr", self.grpc_addr]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for k in range(ports):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((f"{self.tag}h{k}", 0))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
                s.setblocking(False)
                self.socks.append(s)
        except BaseException:
            self.close()
            raise

    def _veth(self, a: str, b: str) -> None:
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b],
                       check=True, capture_output=True, timeout=10)
        self._links.append(a)
        for ifname in (a, b):
            with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
                f.write("1")
            subprocess.run(["ip", "link", "set", ifname, "up"], check=True,
                           capture_output=True, timeout=10)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"simple_switch_grpc exited with {self.proc.returncode}: "
                               f"{err[-1] if err else 'no message'}")

    def send(self, port: int, frame: bytes) -> None:
        self.socks[port].send(frame)

    def receive(self, timeout: float) -> list[tuple[int, bytes]]:
        """Frames the switch sent within `timeout` s of waiting (port, frame); our own
        injections (seen as outgoing on the host side) are skipped."""
        by_fd = {s.fileno(): (k, s) for k, s in enumerate(self.socks)}
        ready, _, _ = select.select(list(by_fd), [], [], timeout)
        out = []
        for fd in ready:
            k, s = by_fd[fd]
            while True:
                try:
                    frame, addr = s.recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[2] != PACKET_OUTGOING:
                    out.append((k, frame))
        return out

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc.stderr.close()
            self.proc = None
        for a in self._links:   # deleting one end removes the pair
            subprocess.run(["ip", "link", "del", a], capture_output=True, timeout=10)
        self._links = []
