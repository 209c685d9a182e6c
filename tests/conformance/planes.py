"""Data planes the conformance vectors run against, behind one small adapter interface.

A plane realises the vectors' logical endpoints (IPv4, UDP port) however it can, installs the
vector's jobs, sends each step's packet and reports the packets that come out, the decisions
counter and register cells. Planes: EmbeddedUdpPlane (the real embedded switch serving a real
UDP socket on loopback, workers as real sockets) and Bmv2Plane (simple_switch_grpc + the
compiled P4 program; a stub that skips until it is written).
"""
from __future__ import annotations

import select
import shutil
import socket
import time
from dataclasses import dataclass, replace
from typing import Sequence

from nina.config import JobSpec

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
            workers = tuple(replace(w, ip="127.0.0.1", udp_port=self.real[(w.ip, w.udp_port)])
                            for w in spec.workers)
            self.pipeline.install_job(replace(spec, workers=workers, switch_ip="127.0.0.1"))
        self.sent = 0

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


BMV2_MISSING = "simple_switch_grpc and p4c not on PATH"


class Bmv2Plane(Plane):
    """BMv2 simple_switch_grpc running the compiled p4/nina.p4 (to be written: inject the
    vectors' packets as frames on veth ports, read counters/registers over P4Runtime)."""
    name = "bmv2"

    @staticmethod
    def unavailable() -> str | None:
        """Why this plane cannot run here, or None."""
        if shutil.which("simple_switch_grpc") is None or shutil.which("p4c") is None:
            return BMV2_MISSING
        return "the BMv2 conformance plane is not implemented yet (tests/conformance/planes.py)"

    def start(self, jobs, endpoints) -> None:
        raise NotImplementedError(self.unavailable())


PLANES = {EmbeddedUdpPlane.name: EmbeddedUdpPlane, Bmv2Plane.name: Bmv2Plane}
