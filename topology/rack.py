"""The rack's shape: N worker hosts and a coordinator host on one ToR switch (the NINA switch).

Addresses are fixed so a trace, a pcap or a controller entry can be read without a lookup table:
worker host h<i> (i = 1..N) is 10.0.0.<i> with MAC 02:00:00:00:00:<i>, the coordinator host hc
is 10.0.0.100, and the switch answers as nina.config.SWITCH_MAC / SWITCH_RACK_IP. Link i joins
h<i> to switch port i (interface s1-eth<i>) through a link node l<i>: a namespace with a bridge
between l<i>-eth0 (facing h<i>-eth0) and l<i>-eth1 (facing s1-eth<i>), where topology/impair.py
delays, drops and duplicates the link's frames (neither end's network stack sees the impairment
as its own: see impair.py). The coordinator is on port N + 1, wired directly (job control stays
unimpaired). A BMv2 switch
with tracing on also has a monitor port N + 2 (s1-mon), a veth whose other end (nina-mon0) the
trace collector reads.
"""
from __future__ import annotations

from dataclasses import dataclass

from nina.config import SWITCH_MAC, SWITCH_RACK_IP
from nina.wire import MAX_WORKERS

SWITCH_NAME = "s1"
COORD_NAME = "hc"
COORD_IP = "10.0.0.100"
COORD_MAC = "02:00:00:00:00:64"
PREFIX_LEN = 24
WORKER_UDP_PORT = 0xBEE1       # each worker host's NINA socket (one per host, per job base)
COORD_PORT = 5555              # the job coordinator's zmq port on hc
MONITOR_SWITCH_INTF = "s1-mon"     # the BMv2 monitor port's end (trace clones leave here)
MONITOR_CAPTURE_INTF = "nina-mon0"  # its peer in the root namespace: topology/trace_capture.py


@dataclass(frozen=True)
class HostPlan:
    name: str
    ip: str
    mac: str
    port: int                  # the switch port the host's link lands on

    @property
    def switch_intf(self) -> str:
        return f"{SWITCH_NAME}-eth{self.port}"

    @property
    def host_intf(self) -> str:
        return f"{self.name}-eth0"

    # A worker link's middle node (the coordinator has none): l<port>, bridging its eth0
    # (toward the host) and eth1 (toward the switch).
    @property
    def link_node(self) -> str:
        return f"l{self.port}"

    @property
    def link_host_intf(self) -> str:
        return f"{self.link_node}-eth0"

    @property
    def link_switch_intf(self) -> str:
        return f"{self.link_node}-eth1"


def worker_plan(i: int) -> HostPlan:
    """Worker host i (1-based)."""
    return HostPlan(f"h{i}", f"10.0.0.{i}", f"02:00:00:00:00:{i:02x}", i)


def rack_plan(n_workers: int) -> list[HostPlan]:
    """Every host of an n-worker rack, workers first, then the coordinator."""
    if not 1 <= n_workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be in 1..{MAX_WORKERS} (one bit each in the "
                         f"switch bitmap), got {n_workers}")
    hosts = [worker_plan(i) for i in range(1, n_workers + 1)]
    hosts.append(HostPlan(COORD_NAME, COORD_IP, COORD_MAC, n_workers + 1))
    return hosts


def switch_intfs(n_workers: int) -> list[str]:
    """The switch's interfaces in port order (port p = position p, 1-based)."""
    return [h.switch_intf for h in rack_plan(n_workers)]


def monitor_port(n_workers: int) -> int:
    """The BMv2 monitor port: one above the coordinator's, the switch's highest."""
    return n_workers + 2


def make_topo(n_workers: int):
    """A Mininet Topo for the plan. Links are plain veth pairs; each worker's goes through its
    link node (no address, a bridge set up by topology/impair.py after build, which also
    applies bandwidth, delay, loss, duplication and reordering: it copes with kernels that lack
    netem, which TCLink cannot)."""
    from mininet.topo import Topo   # imported late: local mode must work without Mininet

    class RackTopo(Topo):
        def build(self):
            s1 = self.addSwitch(SWITCH_NAME)
            for h in rack_plan(n_workers):
                self.addHost(h.name, ip=f"{h.ip}/{PREFIX_LEN}", mac=h.mac)
                if h.name == COORD_NAME:
                    self.addLink(h.name, s1, port1=0, port2=h.port)
                    continue
                self.addHost(h.link_node, ip=None)
                self.addLink(h.name, h.link_node, port1=0, port2=0)
                self.addLink(h.link_node, s1, port1=1, port2=h.port)

    return RackTopo()


__all__ = ["HostPlan", "rack_plan", "worker_plan", "switch_intfs", "make_topo", "SWITCH_NAME",
           "COORD_NAME", "COORD_IP", "COORD_MAC", "SWITCH_MAC", "SWITCH_RACK_IP",
           "WORKER_UDP_PORT", "COORD_PORT", "MONITOR_SWITCH_INTF", "MONITOR_CAPTURE_INTF",
           "monitor_port"]
