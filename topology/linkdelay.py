"""Link delay and reordering without netem: a netfilter-queue process inside a host namespace.

Some kernels (this project's CI VM among them) are built without sch_netem, so `tc ... netem
delay` is not available. The rack then queues the host's IPv4 packets, both directions, to
NFQUEUE (iptables rules installed by topology/impair.py) and this process holds each packet for
the link delay before accepting it. With `--reorder P`, a packet is let through at once with
probability P (netem's reorder semantics: it overtakes the delayed ones).

The nfnetlink_queue protocol is spoken directly over a netlink socket (no C library needed):
bind a queue, ask for metadata only, answer each packet id with a verdict.
"""
from __future__ import annotations

import argparse
import errno
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
QUEUE_MAXLEN = 8192


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _msg(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags,
                       seq, 0) + body


class NfQueue:
    """One bound netfilter queue: packet ids in, verdicts out."""

    def __init__(self, queue: int):
        self.queue = queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)), 1)
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)), 2)
        self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)), 3)

    def _config(self, attrs: bytes, seq: int) -> None:
        self.sock.send(_msg(NFQNL_MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        data = self.sock.recv(65536)
        _, kind, _, _, _ = struct.unpack_from("=IHHII", data)
        if kind == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, 16)[0]
            if err:
                raise OSError(-err, f"nfqueue {self.queue} config: {os.strerror(-err)}")

    def packet_ids(self, max_reads: int = 256) -> list[int]:
        """Packet ids of everything the kernel has queued for us (at least one read)."""
        ids: list[int] = []
        flags = 0
        for _ in range(max_reads):
            try:
                data = self.sock.recv(1 << 16, flags)
            except BlockingIOError:
                break
            except OSError as e:       # ENOBUFS: the kernel dropped messages for us (lost)
                if e.errno != errno.ENOBUFS:
                    raise
                break
            self._parse(data, ids)
            flags = socket.MSG_DONTWAIT
        return ids

    @staticmethod
    def _parse(data: bytes, ids: list[int]) -> None:
        off = 0
        while off + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20                       # nlmsghdr + nfgenmsg
                while a + 4 <= off + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if akind & 0x3FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from("!I", data, a + 4)[0])
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3

    def verdict(self, packet_ids: list[int], verdict: int = NF_ACCEPT) -> None:
        """One datagram carrying a verdict message per packet id."""
        for i in range(0, len(packet_ids), 512):
            self.sock.send(b"".join(
                _msg(NFQNL_MSG_VERDICT, self.queue,
                     _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, pid)))
                for pid in packet_ids[i:i + 512]))


def run(queue: int, delay_ms: float, jitter_ms: float, reorder: float, seed: int | None) -> None:
    rng = random.Random(seed)
    q = NfQueue(queue)
    held: list[tuple[float, int, int]] = []      # (release time, arrival order, packet id)
    order = 0
    print(f"linkdelay: queue {queue} delay {delay_ms} ms jitter {jitter_ms} ms "
          f"reorder {reorder:.3f}", flush=True)
    while True:
        now = time.monotonic()
        due = []
        while held and held[0][0] <= now:
            due.append(heapq.heappop(held)[2])
        if due:
            q.verdict(due)
        timeout = max(0.0, held[0][0] - now) if held else None
        ready, _, _ = select.select([q.sock], [], [], timeout)
        if not ready:
            continue
        now = time.monotonic()
        skip = []
        for pid in q.packet_ids():
            if reorder and rng.random() < reorder:
                skip.append(pid)                   # overtakes the held packets
                continue
            d = delay_ms + (rng.uniform(-jitter_ms, jitter_ms) if jitter_ms else 0.0)
            heapq.heappush(held, (now + max(0.0, d) / 1000.0, order, pid))
            order += 1
        if skip:
            q.verdict(skip)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", type=int, default=0, help="netfilter queue number (default 0)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per packet")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +- jitter on the delay")
    p.add_argument("--reorder", type=float, default=0.0,
                   help="fraction 0..1 of packets sent without delay (overtaking)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--parent", type=int, default=None,
                   help="exit when this process (the rack) is gone")
    a = p.parse_args(argv)
    from nina.procs import die_with_parent
    die_with_parent(a.parent)    # the rack process gone (even killed): the delay goes too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(a.queue, a.delay_ms, a.jitter_ms, a.reorder, a.seed)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"linkdelay: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
