"""Link delay, jitter and reordering without netem: a netfilter-queue process in a link node.

Some kernels (this project's CI VM among them) are built without sch_netem. The rack then runs
each worker link through a link node (topology/rack.py): a namespace whose bridge hands the
link's IPv4 frames to iptables FORWARD (br_netfilter), where two NFQUEUE rules queue them by the
bridge port they came in on: queue 0 the uplink (from the host), queue 1 the downlink (from the
switch). This process holds each frame for the delay and then accepts it.

Why in a node of its own and not in the worker's namespace: a frame held in the sender's own
OUTPUT hook still belongs to its socket, so TCP Small Queues counted the whole delay as data
queued in the host and throttled a bulk flow to a tenth of the link; and a frame held in the
receiver's PREROUTING already carries its receive timestamp, so ping's RTT missed that
direction's delay. Between the two veths nobody owns the frame but the link.

Why it keeps up with the link: each direction is a FIFO (a frame is released at its arrival
plus delay, +- jitter, but never before the frame ahead of it: a wire does not reorder, --reorder
does that explicitly), so every frame that is due is answered by one batch verdict ("accept all
ids up to N"); the per-frame work is reading its metadata, one recv. With --reorder P a frame is
accepted at once with probability P and overtakes the held ones (netem's reorder semantics).

The nfnetlink_queue protocol is spoken directly over a netlink socket (no C library needed).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import errno
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
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
PACKET_MSG = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
# Frames a direction may hold; beyond it the kernel drops (counted in
# /proc/net/netfilter/nfnetlink_queue). impair.LinkShape.validate refuses a bandwidth-delay
# product that could come near it.
QUEUE_MAXLEN = 65536
RCVBUF = 32 << 20                  # netlink messages waiting for us: ~1 KiB of skb each
READS_PER_PASS = 2048              # then release what is due before reading on
UPLINK_QUEUE, DOWNLINK_QUEUE = 0, 1
READY = "linkdelay: ready"         # impair.py waits for this line before queueing frames
PR_SET_TIMERSLACK = 29
RT_PRIORITY = 10                   # below the kernel's own threaded IRQs (50)


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _msg(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags,
                       seq, 0) + body


def verdict_msg(queue: int, packet_id: int, batch: bool) -> bytes:
    """Accept one packet id, or (batch) every packet of the queue up to and including it."""
    return _msg(NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT, queue,
                _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))


def parse_packet(data: bytes | memoryview, n: int) -> tuple[int, int] | None:
    """(queue, packet id) of one queued-packet message, None for anything else. The kernel
    puts NFQA_PACKET_HDR first; the attributes are walked in case it ever does not."""
    if n < 28:
        return None
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind != PACKET_MSG:
        return None
    queue = struct.unpack_from("!H", data, 18)[0]
    a, end = 20, min(length, n)
    while a + 8 <= end:
        alen, akind = struct.unpack_from("=HH", data, a)
        if alen < 4:
            return None
        if akind & 0x3FFF == NFQA_PACKET_HDR:
            return queue, struct.unpack_from("!I", data, a + 4)[0]
        a += (alen + 3) & ~3
    return None


class NfQueues:
    """Netfilter queues bound on one netlink socket: packet ids in, verdicts out."""

    def __init__(self, queues: list[int]):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:   # root may exceed rmem_max; a plain SO_RCVBUF is the fallback
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)     # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind((0, 0))
        seq = 0
        for q in queues:
            for attrs in (_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)),
                          _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
                          _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))):
                seq += 1
                self._config(q, attrs, seq)
        self.sock.setblocking(False)
        self.buf = bytearray(4096)
        self.lost_messages = 0          # ENOBUFS: the kernel could not tell us of some packets

    def _config(self, queue: int, attrs: bytes, seq: int) -> None:
        self.sock.send(_msg(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        data = self.sock.recv(65536)
        _, kind, _, _, _ = struct.unpack_from("=IHHII", data)
        if kind == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, 16)[0]
            if err:
                raise OSError(-err, f"nfqueue {queue} config: {os.strerror(-err)}")

    def read(self, out: list[tuple[int, int]], limit: int = READS_PER_PASS) -> None:
        """Append (queue, id) of the queued packets the kernel has told us about, up to
        `limit` (one message per recv: nfnetlink_queue sends each packet on its own)."""
        recv = self.sock.recv_into
        buf = self.buf
        for _ in range(limit):
            try:
                n = recv(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.lost_messages += 1     # those ids are released by the next batch
                continue
            p = parse_packet(buf, n)
            if p is not None:
                out.append(p)

    def send(self, msgs: list[bytes]) -> None:
        for i in range(0, len(msgs), 256):
            self.sock.send(b"".join(msgs[i:i + 256]))


class Direction:
    """One direction's FIFO of held packets and what happened to them."""

    def __init__(self, queue: int, name: str):
        self.queue = queue
        self.name = name
        self.held: collections.deque[tuple[float, int]] = collections.deque()
        self.last_release = 0.0
        self.packets = 0
        self.overtook = 0
        self.max_held = 0
        self.late_max = 0.0             # worst lateness of a release (s)
        self.late_over_ms = 0           # releases more than 1 ms late

    def stats(self) -> str:
        return (f"{self.name}: {self.packets} packets, {self.overtook} overtaking, "
                f"max held {self.max_held}, releases >1 ms late {self.late_over_ms}, "
                f"worst lateness {self.late_max * 1e3:.2f} ms")


def _tight_timers(rt_priority: int) -> str:
    """Wake on time: 1 ns timer slack instead of 50 us, and a real-time priority so that a
    release is not late by however long the CPU's queue of ordinary processes is (on a loaded
    2-core machine that added milliseconds per direction; netem runs in the kernel's timer
    interrupt for the same reason). Returns a note if the priority could not be had."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if rt_priority <= 0:
        return ""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
    except (OSError, AttributeError) as e:
        return f" (no real-time priority: {e}; releases may be late under CPU load)"
    return f" (SCHED_FIFO {rt_priority})"


def run(delay_ms: float, jitter_ms: float, reorder: float, seed: int | None,
        rt_priority: int = 0, on_ready=None) -> None:
    rng = random.Random(seed)
    dirs = {UPLINK_QUEUE: Direction(UPLINK_QUEUE, "uplink"),
            DOWNLINK_QUEUE: Direction(DOWNLINK_QUEUE, "downlink")}
    q = NfQueues(list(dirs))
    note = _tight_timers(rt_priority)
    delay, jitter = delay_ms / 1000.0, jitter_ms / 1000.0
    want_stats = [False]
    wake_r, wake_w = os.pipe()          # SIGUSR1 (print stats) must end a select at once
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGUSR1, lambda *_: want_stats.__setitem__(0, True))
    print(f"{READY}: queues {sorted(dirs)} delay {delay_ms} ms jitter {jitter_ms} ms "
          f"reorder {reorder:.4f}{note}", flush=True)
    if on_ready:
        on_ready()
    fd = q.sock.fileno()
    arrived: list[tuple[int, int]] = []
    try:
        while True:
            now = time.monotonic()
            msgs = []
            wake = None
            for d in dirs.values():
                held = d.held
                last = None
                while held and held[0][0] <= now:
                    t, last = held.popleft()
                    late = now - t
                    if late > d.late_max:
                        d.late_max = late
                    if late > 1e-3:
                        d.late_over_ms += 1
                if last is not None:
                    msgs.append(verdict_msg(d.queue, last, batch=True))
                if held and (wake is None or held[0][0] < wake):
                    wake = held[0][0]
            if msgs:
                q.send(msgs)
            if want_stats[0]:
                want_stats[0] = False
                print("linkdelay stats: " + "; ".join(d.stats() for d in dirs.values())
                      + f"; lost netlink messages {q.lost_messages}", flush=True)
            timeout = None if wake is None else max(0.0, wake - time.monotonic())
            ready = select.select([fd, wake_r], [], [], timeout)[0]
            if wake_r in ready:
                os.read(wake_r, 512)
            if fd not in ready:
                continue
            arrived.clear()
            q.read(arrived)
            now = time.monotonic()
            skip = []
            for queue, pid in arrived:
                d = dirs.get(queue)
                if d is None:
                    continue
                d.packets += 1
                if reorder and rng.random() < reorder:
                    d.overtook += 1
                    skip.append(verdict_msg(queue, pid, batch=False))
                    continue
                t = now + delay + (rng.uniform(-jitter, jitter) if jitter else 0.0)
                if t < d.last_release:
                    t = d.last_release          # FIFO: never before the frame ahead
                d.last_release = t
                d.held.append((t, pid))
                if len(d.held) > d.max_held:
                    d.max_held = len(d.held)
            if skip:
                q.send(skip)
    finally:
        print("linkdelay stats: " + "; ".join(d.stats() for d in dirs.values())
              + f"; lost netlink messages {q.lost_messages}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per packet")
    p.add_argument("--jitter-ms", type=float, default=0.0,
                   help="uniform +- jitter on the delay (order kept: no frame overtakes)")
    p.add_argument("--reorder", type=float, default=0.0,
                   help="fraction 0..1 of packets sent without delay (overtaking)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rt-priority", type=int, default=RT_PRIORITY,
                   help=f"SCHED_FIFO priority (default {RT_PRIORITY}; 0: ordinary scheduling)")
    p.add_argument("--parent", type=int, default=None,
                   help="exit when this process (the rack) is gone")
    a = p.parse_args(argv)
    from nina.procs import die_with_parent
    die_with_parent(a.parent)    # the rack process gone (even killed): the delay goes too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(a.delay_ms, a.jitter_ms, a.reorder, a.seed, a.rt_priority)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"linkdelay: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
