"""Data planes the conformance vectors run against, behind one small adapter interface.

A plane realises the vectors' logical endpoints (IPv4, UDP port) however it can, installs the
vector's jobs, sends each step's packet and reports the packets that come out, the decisions
counter and register cells. Planes: EmbeddedUdpPlane (the real embedded switch serving a real
UDP socket on loopback, workers as real sockets) and Bmv2Plane (simple_switch_grpc running
p4/build/nina.json on veth ports, workers as injected/captured Ethernet frames).
"""
from __future__ import annotations

import atexit
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from nina.config import JobSpec, int_to_mac, mac_to_int
from nina.wire import FLAG_CM, UDP_PORT

Endpoint = tuple[str, int]
STEP_TIMEOUT = 5.0     # s to wait for a step's expected packets (only reached on failure)
QUIET = 0.02           # s of silence after the expected packets before a step counts as done


@dataclass(frozen=True)
class Received:
    port: int            # egress port
    dst: Endpoint        # logical destination endpoint
    data: bytes          # the NINA packet (UDP payload)


class Plane:
    """What the conformance runner needs from a data plane."""
    name = "abstract"

    def start(self, jobs: Sequence[JobSpec], endpoints: Sequence[Endpoint]) -> None:
        """Fresh switch (or fresh job state) with these jobs; endpoints the vector uses."""
        raise NotImplementedError

    def exchange(self, port: int, src: Endpoint, data: bytes, expect: int) -> list[Received]:
        """Send data at ingress `port` from `src`; return every packet that comes out for it
        (waits for `expect` packets, then for a short quiet period to catch extra ones)."""
        raise NotImplementedError

    def reinstall(self, spec: JobSpec) -> list[int]:
        """Remove job spec.job_id and install spec again; the first round of each slot."""
        raise NotImplementedError

    def counters(self) -> list[int]:
        """Packets per nina.decisions.Decision of the decisions counter."""
        raise NotImplementedError

    def read_register(self, name: str, index: int) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class EmbeddedUdpPlane(Plane):
    """The embedded switch in local mode: a real server loop on a real UDP socket (in a
    thread of this process so registers and counters can be read), one real UDP socket per
    logical endpoint on 127.0.0.1. Logical addresses are mapped to these sockets both in the
    installed JobSpecs and in what the runner sees."""
    name = "embedded-udp"

    def start(self, jobs, endpoints) -> None:
        from switch.io_udp import UdpIO
        from switch.pipeline import Pipeline
        from switch.server import SwitchServer

        self.pipeline = Pipeline()
        self.server = SwitchServer(self.pipeline, UdpIO("127.0.0.1", 0)).start()
        self.switch_addr = self.server.io.address
        self.socks: dict[Endpoint, socket.socket] = {}
        self.real: dict[Endpoint, int] = {}
        for ep in endpoints:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks[ep] = s
            self.real[ep] = s.getsockname()[1]
        self.by_fd = {s.fileno(): ep for ep, s in self.socks.items()}
        for spec in jobs:
            self.pipeline.install_job(self._local(spec))
        self.sent = 0

    def _local(self, spec: JobSpec) -> JobSpec:
        workers = tuple(replace(w, ip="127.0.0.1", udp_port=self.real[(w.ip, w.udp_port)])
                        for w in spec.workers)
        return replace(spec, workers=workers, switch_ip="127.0.0.1")

    def reinstall(self, spec) -> list[int]:
        self.pipeline.remove_job(spec.job_id)
        return self.pipeline.install_job(self._local(spec))

    def exchange(self, port, src, data, expect) -> list[Received]:
        if port != 0:
            raise ValueError("local mode has only ingress port 0")
        self.socks[src].sendto(data, self.switch_addr)
        self.sent += 1
        deadline = time.monotonic() + STEP_TIMEOUT
        while self.server.handled < self.sent:    # the switch has sent all it will send
            if time.monotonic() > deadline:
                raise TimeoutError("the embedded switch did not handle the packet")
            time.sleep(0.0002)
        got: list[Received] = []
        fds = list(self.by_fd)
        while True:
            wait = max(0.0, deadline - time.monotonic()) if len(got) < expect else QUIET
            ready, _, _ = select.select(fds, [], [], wait)
            if not ready:
                return got
            for fd in ready:
                ep = self.by_fd[fd]
                while True:
                    try:
                        payload, addr = self.socks[ep].recvfrom(65536)
                    except BlockingIOError:
                        break
                    if addr != self.switch_addr:
                        raise AssertionError(f"{ep} got a datagram from {addr}, "
                                             f"not from the switch {self.switch_addr}")
                    got.append(Received(0, ep, payload))

    def counters(self) -> list[int]:
        return [int(x) for x in self.pipeline.counters_packets]

    def read_register(self, name, index) -> int:
        return self.pipeline.read_register(name, index)

    def stop(self) -> None:
        self.server.stop()
        for s in self.socks.values():
            s.close()


# ---------------------------------------------------------------- BMv2

REPO = Path(__file__).resolve().parents[2]
BMV2_JSON = REPO / "p4" / "build" / "nina.json"
BMV2_P4INFO = REPO / "p4" / "build" / "nina.p4info.txtpb"
BMV2_MISSING = "simple_switch_grpc not on PATH (build p4lang/behavioral-model; see README)"
BMV2_QUIET = 0.05      # s of silence after the expected frames (BMv2 is slower than Python)
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4    # sll_pkttype of frames this host sent (our own injections)
FRAME_HEAD = struct.Struct("!6s6sH")          # Ethernet II
IPV4_HEAD = struct.Struct("!BBHHHBBH4s4s")    # without options
UDP_HEAD = struct.Struct("!HHHH")
HOST_MAC_BASE = 0x020000aa0000                # MACs for endpoints that are no job's worker


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.grpc_addr = f"127.0.0.1:{_free_tcp_port()}"
        self.thrift_port = _free_tcp_port()
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


_SHARED: Bmv2Switch | None = None


def _shared_switch() -> Bmv2Switch:
    """One BMv2 for the whole test session (starting one and pushing the 260-register program
    costs seconds); vectors get fresh job state from the controller instead."""
    global _SHARED
    if _SHARED is not None and _SHARED.proc is not None and _SHARED.proc.poll() is not None:
        _SHARED.close()
        _SHARED = None
    if _SHARED is None:
        _SHARED = Bmv2Switch(1, os.environ.get("NINA_BMV2_LOG"))
        atexit.register(_SHARED.close)
    return _SHARED


class Bmv2Plane(Plane):
    """BMv2 simple_switch_grpc running the compiled p4/nina.p4, driven by the project's
    Controller (P4Runtime through p4runtime-shell; registers over thrift). Every endpoint of a
    vector is a host behind switch port 0 (the vectors' PORT): its packets are injected as
    Ethernet/IPv4/UDP frames on the host side of port 0's veth, and every frame leaving
    the switch there is captured, checked (addresses, IPv4 checksum, lengths) and mapped back
    to its logical destination endpoint."""
    name = "bmv2"

    @staticmethod
    def unavailable() -> str | None:
        return bmv2_unavailable()

    def start(self, jobs, endpoints) -> None:
        from switch.controller import Controller

        self.switch = sw = _shared_switch()
        self.ctl = Controller(sw.grpc_addr, str(BMV2_P4INFO), str(BMV2_JSON),
                              thrift_port=sw.thrift_port, connect_timeout=30)
        try:
            for old in self.ctl.show_jobs():
                self.ctl.remove_job(old.job_id)
            # a fresh switch for every vector: no round history from earlier vectors
            # (nina.install_rounds would otherwise start their slots past round 0)
            from nina import p4spec
            from switch.controller import SLOT_STATE_REGISTERS
            self.ctl.registers().zero(SLOT_STATE_REGISTERS, 0, p4spec.REGISTER_SIZE)
            self.macs: dict[Endpoint, int] = {}
            self.switch_of: dict[Endpoint, tuple[int, str]] = {}
            for spec in jobs:
                self.ctl.install_job(spec)
                for w in spec.workers:
                    ep = (w.ip, w.udp_port)
                    self.macs[ep] = mac_to_int(w.mac)
                    self.switch_of[ep] = (mac_to_int(spec.switch_mac), spec.switch_ip)
            self.switch_mac, self.switch_ip = next(iter(self.switch_of.values()))
            for i, ep in enumerate(endpoints):
                self.macs.setdefault(ep, HOST_MAC_BASE + i)
            self.by_addr = {ep: ep for ep in endpoints}
            self._drain()
            self.total = sum(self.counters())
        except BaseException:
            self.stop()
            raise

    def _drain(self) -> None:
        while self.switch.receive(0):
            pass

    def exchange(self, port, src, data, expect) -> list[Received]:
        smac, sip = self.switch_of.get(src, (self.switch_mac, self.switch_ip))
        self.switch.send(port, udp_frame(smac, self.macs[src], src[0], sip, src[1], UDP_PORT,
                                         data))
        deadline = time.monotonic() + STEP_TIMEOUT
        self.total += 1
        while sum(self.counters()) < self.total:   # ingress has counted the packet
            if time.monotonic() > deadline:
                self.switch.check_alive()
                raise TimeoutError("BMv2 did not count the packet")
            time.sleep(0.001)
        got: list[Received] = []
        while True:
            wait = max(0.0, deadline - time.monotonic()) if len(got) < expect else BMV2_QUIET
            frames = self.switch.receive(wait)
            if not frames:
                if len(got) < expect:
                    self.switch.check_alive()   # say so when BMv2 died on the packet
                return got
            for k, frame in frames:
                f = parse_udp_frame(frame)
                dst = (f.dst_ip, f.dport)
                assert dst in self.by_addr, f"a frame to {dst}, no endpoint of the vector"
                assert f.dst_mac == self.macs[dst], \
                    f"frame to {dst} has MAC {int_to_mac(f.dst_mac)}"
                smac, sip = self.switch_of.get(dst, (self.switch_mac, self.switch_ip))
                assert (f.src_mac, f.src_ip, f.sport) == (smac, sip, UDP_PORT), \
                    f"frame to {dst} comes from {int_to_mac(f.src_mac)} {f.src_ip}:{f.sport}"
                got.append(Received(k, dst, f.payload))

    def reinstall(self, spec) -> list[int]:
        self.ctl.remove_job(spec.job_id)
        return self.ctl.install_job(spec)

    def counters(self) -> list[int]:
        from nina.decisions import Decision
        c = self.ctl.read_counters()
        return [c[d.name][0] for d in Decision]

    def read_register(self, name, index) -> int:
        return self.ctl.registers().read([(name, index)])[0]

    def stop(self) -> None:
        ctl = getattr(self, "ctl", None)
        if ctl is not None:
            ctl.close()   # p4runtime-shell allows one client per process
            self.ctl = None


PLANES = {EmbeddedUdpPlane.name: EmbeddedUdpPlane, Bmv2Plane.name: Bmv2Plane}
