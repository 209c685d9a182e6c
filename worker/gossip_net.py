"""Neighbour messaging for gossip: one UDP socket per worker, real datagrams, exact byte counts.

exchange(round, {neighbour: bytes}) sends this worker's message to each neighbour (cut into
nina.gossip_wire datagrams) and returns every neighbour's message of the same round. UDP may
lose or delay a datagram, so a receiver that misses chunks asks for them again with a NACK
every `resend` s (a NACK that reaches the sender within resend/2 of its send most likely
crossed the data and is not answered), and a sender keeps its last two rounds' datagrams to
answer (a neighbour can be at most one round behind: it cannot start round r+1 before it has
this worker's round r).
A neighbour that stays silent for `timeout` s ends the step with GossipError naming it: a
missing message is never averaged as zeros.

A background thread reads the socket, so NACKs are answered while the worker computes or
waits at a barrier. Every datagram sent or received is counted (UDP payload bytes; add
gossip_wire.IP_UDP_OVERHEAD per datagram for the IPv4/UDP headers) per neighbour.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from nina import gossip_wire as gw

_BUF = 4 << 20


class GossipError(RuntimeError):
    """A neighbour's message did not arrive (lost for good, or the neighbour is gone)."""

    def __init__(self, message: str, round_: int = -1, peer: int = -1):
        super().__init__(message)
        self.round, self.peer = round_, peer


@dataclass
class EdgeCounters:
    bytes_out: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    datagrams_in: int = 0
    resent: int = 0          # datagrams sent again after a NACK (included in the above)
    nacks_out: int = 0
    recovery_bytes: int = 0  # bytes of NACKs and resent datagrams (included in bytes_out)


@dataclass
class _Inbox:
    chunks: dict[int, bytes] = field(default_factory=dict)
    count: int | None = None
    length: int | None = None

    def complete(self) -> bool:
        return self.count is not None and len(self.chunks) == self.count

    def missing(self) -> list[int]:
        if self.count is None:
            return []
        return [c for c in range(self.count) if c not in self.chunks]


class GossipNet:
    """Worker `wid`'s gossip socket. connect() names the neighbours, exchange() runs a round."""

    def __init__(self, wid: int = 0, bind_ip: str = "127.0.0.1", port: int = 0,
                 timeout: float = 10.0, resend: float = 0.2):
        self.wid, self.timeout, self.resend = wid, timeout, resend
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, _BUF)
            except OSError:
                pass
        try:
            self.sock.bind((bind_ip, port))
        except OSError as e:
            raise OSError(f"gossip: cannot bind UDP {bind_ip}:{port}: {e.strerror}") from None
        self.sock.settimeout(0.2)
        self.peers: dict[int, tuple[str, int]] = {}
        self.edges: dict[int, EdgeCounters] = {}
        self.drop = None     # tests: drop(dst, round, chunk) -> True loses that datagram once
        self._cv = threading.Condition()
        self._inbox: dict[tuple[int, int], _Inbox] = {}
        self._sent: dict[tuple[int, int], list[bytes]] = {}
        self._sent_at: dict[tuple[int, int], float] = {}
        self._done: dict[int, int] = {}    # neighbour -> last round taken from it
        self._round = -1
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="gossip-net")
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def connect(self, wid: int, peers: dict[int, tuple[str, int]]) -> None:
        """This worker's id and its neighbours' gossip addresses (only these are accepted)."""
        with self._cv:
            self.wid = wid
            self.peers = {int(w): (a[0], int(a[1])) for w, a in peers.items() if int(w) != wid}
            self.edges = {w: EdgeCounters() for w in self.peers}

    def totals(self) -> EdgeCounters:
        t = EdgeCounters()
        for e in self.edges.values():
            for f in ("bytes_out", "bytes_in", "datagrams_out", "datagrams_in", "resent",
                      "nacks_out", "recovery_bytes"):
                setattr(t, f, getattr(t, f) + getattr(e, f))
        return t

    # ---- sending ----

    def _send(self, dst: int, dgram: bytes, resent: bool = False) -> None:
        e = self.edges[dst]
        e.bytes_out += len(dgram)
        e.datagrams_out += 1
        e.resent += resent
        e.recovery_bytes += len(dgram) if resent else 0
        try:
            self.sock.sendto(dgram, self.peers[dst])
        except OSError:
            pass   # e.g. ICMP unreachable from an earlier send: the NACK/timeout path decides

    def exchange(self, rnd: int, messages: dict[int, bytes]) -> dict[int, bytes]:
        """Send messages[j] to every neighbour j and return each neighbour's round-`rnd` one."""
        if set(messages) != set(self.peers):
            raise ValueError(f"gossip round {rnd}: messages for {sorted(messages)}, "
                             f"neighbours are {sorted(self.peers)}")
        with self._cv:
            self._round = rnd
            for key in [k for k in self._sent if k[1] < rnd - 1]:
                del self._sent[key]
                del self._sent_at[key]
            for dst in sorted(messages):
                self._sent[(dst, rnd)] = gw.data_datagrams(self.wid, rnd, messages[dst])
                self._sent_at[(dst, rnd)] = time.monotonic()
                for c, d in enumerate(self._sent[(dst, rnd)]):
                    if self.drop is not None and self.drop(dst, rnd, c):
                        continue
                    self._send(dst, d)
        return self._collect(rnd)

    def _collect(self, rnd: int) -> dict[int, bytes]:
        start = time.monotonic()
        last_progress = {w: start for w in self.peers}
        have = {w: -1 for w in self.peers}
        nack_at = {w: start + self.resend for w in self.peers}
        with self._cv:
            while True:
                now = time.monotonic()
                waiting = [w for w in self.peers
                           if not self._inbox.setdefault((w, rnd), _Inbox()).complete()]
                if not waiting:
                    break
                for w in waiting:
                    box = self._inbox[(w, rnd)]
                    if len(box.chunks) > have[w]:
                        have[w], last_progress[w] = len(box.chunks), now
                    if now - last_progress[w] > self.timeout:
                        ip, port = self.peers[w]
                        what = (f"{len(box.chunks)} of {box.count} datagrams"
                                if box.count else "nothing")
                        raise GossipError(
                            f"gossip round {rnd}: worker {w} ({ip}:{port}) sent {what} within "
                            f"{self.timeout:.0f} s (process gone or link down?)", rnd, w)
                    if now >= nack_at[w]:
                        nack_at[w] = now + self.resend
                        self.edges[w].nacks_out += 1
                        d = gw.nack_datagram(self.wid, rnd, box.missing())
                        self.edges[w].bytes_out += len(d)
                        self.edges[w].recovery_bytes += len(d)
                        self.edges[w].datagrams_out += 1
                        try:
                            self.sock.sendto(d, self.peers[w])
                        except OSError:
                            pass
                self._cv.wait(min(self.resend, 0.05))
            out = {}
            for w in self.peers:
                box = self._inbox.pop((w, rnd))
                out[w] = b"".join(box.chunks[c] for c in range(box.count))
                self._done[w] = rnd
            return out

    # ---- the receiving thread ----

    def _serve(self) -> None:
        while not self._closed:
            try:
                buf, src = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                if self._closed:
                    return
                continue
            p = gw.parse(buf)
            if p is None:
                continue
            kind, sender, rnd, chunk, chunks, length, payload = p
            with self._cv:
                if sender not in self.peers:
                    continue
                e = self.edges[sender]
                e.bytes_in += len(buf)
                e.datagrams_in += 1
                if kind == gw.NACK:
                    sent = self._sent.get((sender, rnd))
                    if sent is None:
                        continue        # not sent yet: the data follows by itself
                    if time.monotonic() - self._sent_at[(sender, rnd)] < self.resend / 2:
                        continue        # crossed our data, still queued at the receiver;
                        # if it was lost, the receiver's next NACK comes after `resend`
                    wanted = gw.nack_indices(payload, chunks) or range(len(sent))
                    for c in wanted:
                        if c < len(sent):
                            self._send(sender, sent[c], resent=True)
                    continue
                if rnd <= self._done.get(sender, -1) or chunk >= chunks:
                    continue            # a late copy of a round already taken
                box = self._inbox.setdefault((sender, rnd), _Inbox())
                box.count, box.length = chunks, length
                box.chunks.setdefault(chunk, payload)
                if box.complete():
                    self._cv.notify_all()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(1.0)
