"""Configuration shared by the controller, the coordinator, the topology and the tests."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from nina import p4spec
from nina.wire import (FLAG_CM, MAX_WORKERS, RID_PART_SHIFT, UDP_PORT, Encoding, headroom_shift,
                       result_parts)

DEFAULT_GRPC_ADDR = "127.0.0.1:9559"   # P4Runtime (embedded switch and simple_switch_grpc)
DEFAULT_THRIFT_PORT = 9090             # BMv2 runtime (register reads)
DEFAULT_SWITCH_IP = "127.0.0.1"        # local mode: the switch's UDP socket
SWITCH_MAC = "02:00:00:00:00:fe"       # the rack's switch: source of results
SWITCH_RACK_IP = "10.0.0.254"
DEFAULT_WINDOW = 32                    # slots in flight per worker
# what a rack's --window defaults to (topology.mininet_rack sets the Mininet rack's)
WINDOW_HELP = (f"slots in flight per worker (default: the rack's; {2 * DEFAULT_WINDOW} on the "
               f"Mininet rack's embedded switch, {DEFAULT_WINDOW} on the local rack, 8 on BMv2)")


def mac_to_int(mac: str) -> int:
    parts = mac.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"bad MAC address {mac!r}")
    try:
        return int("".join(p.zfill(2) for p in parts), 16)
    except ValueError:
        raise ValueError(f"bad MAC address {mac!r}") from None


def int_to_mac(v: int) -> str:
    return ":".join(f"{(v >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def ip_to_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


@dataclass(frozen=True)
class WorkerAddr:
    """Where worker `wid` of a job lives: the switch port it is behind, MAC, IP, UDP port."""
    wid: int
    ip: str
    udp_port: int
    port: int = 0                  # switch ingress/egress port (0 for the loopback switch)
    mac: str = "00:00:00:00:00:00"


@dataclass(frozen=True)
class JobSpec:
    """A job as the controller installs it (job table, admission, multicast, egress rewrite)."""
    job_id: int
    n_workers: int
    encoding: Encoding = Encoding.NAT8
    cm: bool = False
    slot_base: int = 0
    slot_count: int = 2 * DEFAULT_WINDOW
    loss: float = 0.0              # switch-side drop probability of updates (loss simulator)
    workers: tuple[WorkerAddr, ...] = field(default_factory=tuple)
    switch_mac: str = SWITCH_MAC
    switch_ip: str = DEFAULT_SWITCH_IP
    switch_udp_port: int = UDP_PORT

    @property
    def shift(self) -> int:
        return headroom_shift(self.n_workers)

    @property
    def mcast_grp(self) -> int:
        return self.job_id + 1     # group 0 means "no multicast" in v1model

    def replicas(self) -> list[tuple[int, int]]:
        """The job's multicast group: (egress port, replica id = part << 8 | worker id), one
        replica per worker and result part (nina.wire.result_parts)."""
        parts = result_parts(self.encoding, FLAG_CM if self.cm else 0)
        return [(w.port, p << RID_PART_SHIFT | w.wid) for w in self.workers for p in range(parts)]

    @property
    def loss_q16(self) -> int:
        return min(65535, round(self.loss * 65536))

    def table_entries(self) -> list[tuple[p4spec.Table, tuple[int, ...], tuple[int, ...]]]:
        """The job's table entries (table, key, action params), in install order: per worker its
        egress address and its admission, then the job entry last (the one that makes the job
        live). Both the controller and the embedded pipeline install exactly these."""
        smac, sip = mac_to_int(self.switch_mac), ip_to_int(self.switch_ip)
        out: list[tuple[p4spec.Table, tuple[int, ...], tuple[int, ...]]] = []
        for w in self.workers:
            out.append((p4spec.WORKER_ADDR, (self.job_id, w.wid),
                        (mac_to_int(w.mac), ip_to_int(w.ip), w.udp_port, smac, sip)))
            out.append((p4spec.WORKER_TABLE,
                        (self.job_id, w.wid, w.port, ip_to_int(w.ip), w.udp_port), ()))
        out.append((p4spec.JOB_TABLE, (self.job_id,),
                    (self.n_workers, self.slot_base, self.slot_count, self.shift,
                     int(self.encoding), int(bool(self.cm)), self.mcast_grp, self.loss_q16)))
        return out

    def to_dict(self) -> dict:
        """JSON-style fields (encoding as its number), the form job messages and jobs files use."""
        from dataclasses import asdict
        d = asdict(self)
        d["encoding"] = int(self.encoding)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JobSpec":
        """The inverse of to_dict; the encoding may also be given by name ("NAT8", "int32")."""
        d = dict(d)
        enc = d.get("encoding", Encoding.NAT8)
        d["encoding"] = Encoding[enc.upper()] if isinstance(enc, str) else Encoding(enc)
        d["workers"] = tuple(WorkerAddr(**w) for w in d.get("workers", ()))
        return cls(**d)

    def validate(self) -> None:
        if not 0 <= self.job_id < 65535:
            raise ValueError(f"job id {self.job_id} out of range 0..65534")
        if not 1 <= self.n_workers <= MAX_WORKERS:
            raise ValueError(f"n_workers {self.n_workers} out of range 1..{MAX_WORKERS}")
        if self.slot_count < 1 or self.slot_base < 0 or \
                self.slot_base + self.slot_count > p4spec.POOL_SLOTS:
            raise ValueError(f"slots [{self.slot_base}, {self.slot_base + self.slot_count}) "
                             f"outside the switch pool of {p4spec.POOL_SLOTS}")
        if self.cm and self.encoding != Encoding.NAT8:
            raise ValueError("master compression (cm) needs the NAT8 encoding")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss {self.loss} must be in [0, 1)")
        ids = sorted(w.wid for w in self.workers)
        if ids and ids != list(range(self.n_workers)):
            raise ValueError(f"worker ids {ids} must be exactly 0..{self.n_workers - 1}")
        # Addresses are checked here, before a controller writes anything: a bad one found
        # half-way through an install would leave entries behind.
        _check_mac("switch MAC", self.switch_mac)
        _check_ip("switch IP", self.switch_ip)
        for w in self.workers:
            _check_mac(f"worker {w.wid} MAC", w.mac)
            _check_ip(f"worker {w.wid} IP", w.ip)
            if not 0 <= w.udp_port < 1 << 16:
                raise ValueError(f"worker {w.wid} UDP port {w.udp_port} out of range 0..65535")
            if not 0 <= w.port < 1 << 9:
                raise ValueError(f"worker {w.wid} switch port {w.port} does not fit 9 bits")
        seen: dict[tuple[int, str, int], int] = {}
        for w in self.workers:
            where = (w.port, w.ip, w.udp_port)
            if where in seen:
                raise ValueError(f"workers {seen[where]} and {w.wid} share the address "
                                 f"{w.ip}:{w.udp_port} (port {w.port})")
            seen[where] = w.wid


def _check_mac(what: str, mac: str) -> None:
    try:
        mac_to_int(mac)
    except (ValueError, AttributeError):
        raise ValueError(f"{what} {mac!r} is not a MAC address xx:xx:xx:xx:xx:xx") from None


def _check_ip(what: str, ip: str) -> None:
    try:
        ip_to_int(ip)
    except (ValueError, TypeError):
        raise ValueError(f"{what} {ip!r} is not an IPv4 address") from None


def slots_overlap(spec: "JobSpec", installed) -> str | None:
    """Why `spec` cannot be installed next to the `installed` JobSpecs (same job id, or a
    slot range overlapping another job's: its packets would join that job's rounds), or None.
    The one check every install path (controller, embedded pipeline, jobs file) makes."""
    lo, hi = spec.slot_base, spec.slot_base + spec.slot_count
    for other in installed:
        if other.job_id == spec.job_id:
            return f"job {spec.job_id} is already installed (remove it first)"
        olo, ohi = other.slot_base, other.slot_base + other.slot_count
        if lo < ohi and olo < hi:
            return (f"job {spec.job_id}: slots [{lo}, {hi}) overlap job {other.job_id}'s "
                    f"[{olo}, {ohi})")
    return None
