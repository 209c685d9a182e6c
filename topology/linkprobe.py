"""Measures a rack's links from inside its hosts: RTT, one-way delay, loss, duplication,
reordering and TCP/UDP throughput, each as a JSON line on stdout.

    python -m topology.linkprobe echo --port P --seconds T
    python -m topology.linkprobe rtt --dst IP --port P --count N --interval S
    python -m topology.linkprobe sink --port P --seconds T [--warmup S]
    python -m topology.linkprobe blast --dst IP --port P --mbit R --seconds T [--size B]
    python -m topology.linkprobe tcp-sink --port P --seconds T [--warmup S]
    python -m topology.linkprobe tcp-send --dst IP --port P --seconds T

Every datagram carries a sequence number and the sender's CLOCK_MONOTONIC time: the rack's
namespaces share the machine's clock, so the receiver computes each packet's one-way delay
exactly, and from the sequence numbers what was lost, duplicated and reordered. Receivers print
"ready" once bound, then their report when done. bench/links.py and tests/test_links_rack.py
drive it; anyone can run it in a rack host to check a link by hand.
"""
from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

HDR = struct.Struct("!QQ")          # sequence number, send time (ns, CLOCK_MONOTONIC)
IP_UDP = 28                         # IPv4 + UDP header bytes
UDP_PAYLOAD = 1472                  # a full 1514-byte Ethernet frame
TCP_CHUNK = 1 << 18


BIN = 0.5                           # seconds per throughput sample


class Bins:
    """Bytes per BIN-second interval after a warmup, for a throughput and its spread."""

    def __init__(self, warmup: float):
        self.warmup = warmup
        self.first: float | None = None
        self.bins: list[int] = []

    def add(self, now: float, n: int) -> None:
        if self.first is None:
            self.first = now
        k = int((now - self.first - self.warmup) // BIN)
        if k < 0:
            return
        while len(self.bins) <= k:
            self.bins.append(0)
        self.bins[k] += n

    def mbit(self) -> list[float]:
        """Complete intervals only (the last one is cut short by the end of the stream)."""
        return [b * 8 / BIN / 1e6 for b in self.bins[:-1]]


def _now_ns() -> int:
    return time.monotonic_ns()


def _ready() -> None:
    print("ready", flush=True)


def _udp(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", port))
    return s


def cmd_echo(a) -> dict:
    s = _udp(a.port)
    _ready()
    end = time.monotonic() + a.seconds
    n = 0
    while (left := end - time.monotonic()) > 0:
        if select.select([s], [], [], left)[0]:
            data, addr = s.recvfrom(65536)
            s.sendto(data, addr)
            n += 1
    return {"echoed": n}


def cmd_rtt(a) -> dict:
    """Probes at a fixed interval; an answer's RTT is measured against its own send time."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((a.dst, a.port))
    pad = b"\0" * max(0, a.size - HDR.size)
    rtts: list[float] = []
    seen = set()
    t0 = time.monotonic()
    sent = 0
    deadline = None
    while True:
        now = time.monotonic()
        if sent < a.count and now >= t0 + sent * a.interval:
            s.send(HDR.pack(sent, _now_ns()) + pad)
            sent += 1
            if sent == a.count:
                deadline = time.monotonic() + a.wait
            continue
        if deadline is not None and now >= deadline:
            break
        nxt = deadline if sent == a.count else t0 + sent * a.interval
        if select.select([s], [], [], max(0.0, nxt - now))[0]:
            data = s.recv(65536)
            seq, t = HDR.unpack_from(data)
            if seq not in seen:
                seen.add(seq)
                rtts.append((_now_ns() - t) / 1e6)
    return {"sent": sent, "rtt_ms": rtts}


def cmd_sink(a) -> dict:
    """Counts what arrives until --seconds pass or --idle seconds go by without a packet."""
    s = _udp(a.port)
    _ready()
    seen: set[int] = set()
    one_way: list[float] = []
    received = dups = late = 0
    top = -1
    first = last = None
    bins = Bins(a.warmup)
    end = time.monotonic() + a.seconds
    buf = bytearray(65536)
    while True:
        now = time.monotonic()
        left = end - now if last is None else min(end - now, last + a.idle - now)
        if left <= 0 or not select.select([s], [], [], left)[0]:
            break
        n = s.recv_into(buf)
        t = _now_ns()
        now = time.monotonic()
        if n < HDR.size:
            continue
        seq, sent = HDR.unpack_from(buf)
        received += 1
        if first is None:
            first = now
        last = now
        bins.add(now, n + IP_UDP)
        if seq in seen:
            dups += 1
            continue
        seen.add(seq)
        one_way.append((t - sent) / 1e6)
        if seq < top:
            late += 1
        top = max(top, seq)
    return {"received": received, "unique": len(seen), "duplicates": dups,
            "late": late, "max_seq": top, "one_way_ms": one_way, "ip_mbit": bins.mbit()}


def cmd_blast(a) -> dict:
    """Paced datagrams at --mbit of IP packets (the frame adds 14 bytes), for --seconds or
    --count packets."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.connect((a.dst, a.port))
    pad = b"\0" * max(0, a.size - HDR.size)
    pps = a.mbit * 1e6 / 8 / (a.size + IP_UDP)
    t0 = time.monotonic()
    sent = errors = 0
    limit = a.count or int(pps * a.seconds)
    while sent < limit:
        due = min(limit, int((time.monotonic() - t0) * pps) + 1)
        if a.steady:
            due = min(due, sent + 1)
        while sent < due:
            try:
                s.send(HDR.pack(sent, _now_ns()) + pad)
            except OSError:         # ENOBUFS: the host's own queue (HTB) is full
                errors += 1
            sent += 1
        nxt = t0 + sent / pps
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif a.steady:              # woke late (a loaded CPU): go on from now, no burst
            t0 = time.monotonic() - sent / pps
    return {"sent": sent, "send_errors": errors, "seconds": time.monotonic() - t0}


def cmd_tcp_sink(a) -> dict:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(1)
    _ready()
    if not select.select([srv], [], [], a.seconds)[0]:
        return {"error": "no connection"}
    conn, _ = srv.accept()
    buf = bytearray(TCP_CHUNK)
    total = 0
    bins = Bins(a.warmup)
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        total += n
        bins.add(time.monotonic(), n)
    conn.close()
    return {"bytes": total, "goodput_mbit": bins.mbit()}


def cmd_tcp_send(a) -> dict:
    s = socket.create_connection((a.dst, a.port), timeout=10)
    s.settimeout(None)
    chunk = b"\0" * TCP_CHUNK
    end = time.monotonic() + a.seconds
    sent = 0
    while time.monotonic() < end:
        s.sendall(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)                    # the receiver closes once it has read everything
    s.close()
    return {"bytes": sent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("echo", cmd_echo), ("rtt", cmd_rtt), ("sink", cmd_sink),
                     ("blast", cmd_blast), ("tcp-sink", cmd_tcp_sink),
                     ("tcp-send", cmd_tcp_send)):
        c = sub.add_parser(name)
        c.set_defaults(fn=fn)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--seconds", type=float, default=5.0)
        if name in ("rtt", "blast", "tcp-send"):
            c.add_argument("--dst", required=True)
        if name in ("rtt", "blast"):
            c.add_argument("--size", type=int, default=64 if name == "rtt" else UDP_PAYLOAD,
                           help="UDP payload bytes")
            c.add_argument("--count", type=int, default=0 if name == "blast" else 200)
        if name == "rtt":
            c.add_argument("--interval", type=float, default=0.01)
            c.add_argument("--wait", type=float, default=1.0,
                           help="seconds to wait for answers after the last probe")
        if name == "blast":
            c.add_argument("--mbit", type=float, required=True)
            c.add_argument("--steady", action="store_true",
                           help="never send faster than the rate to catch up after a late "
                                "wake-up (probes whose spacing matters)")
        if name in ("sink", "tcp-sink"):
            c.add_argument("--warmup", type=float, default=0.0,
                           help="seconds after the first byte left out of the throughput "
                                "samples (one per 0.5 s)")
        if name == "sink":
            c.add_argument("--idle", type=float, default=1.0,
                           help="stop this long after the last packet")
    a = p.parse_args(argv)
    print(json.dumps(a.fn(a)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
