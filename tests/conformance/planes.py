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
import socket
import time
from dataclasses import dataclass, replace
from typing import Sequence

from nina.config import JobSpec, int_to_mac, mac_to_int
from nina.wire import FLAG_CM, UDP_PORT
from switch.bmv2_harness import (BMV2_JSON, BMV2_P4INFO, Bmv2Switch, bmv2_unavailable,
                                  parse_udp_frame, udp_frame)

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

BMV2_QUIET = 0.05      # s of silence after the expected frames (BMv2 is slower than Python)
HOST_MAC_BASE = 0x020000aa0000                # MACs for endpoints that are no job's worker


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
