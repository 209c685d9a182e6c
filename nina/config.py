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


def mac_to_int(mac: str) -> int:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return int("".join(p.zfill(2) for p in parts), 16)


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
