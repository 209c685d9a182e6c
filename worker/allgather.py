"""Host fallback for compressors the switch cannot sum: an all-gather of their byte encodings.

Top-k, random sparsification, ditherings, spherical codes... produce values the switch's integer
adders cannot combine, so each worker sends its encoded message (the compressor's real bytes)
to every other worker over TCP, decodes all n messages and sums them in worker-id order, which
makes the float sum bit-identical on every worker. The mesh: every worker listens on one TCP
port (announced at rendezvous) and opens one connection to each peer for its sends; it reads
the peers' messages from the connections they opened to it.
"""
from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

_HELLO = struct.Struct("!4sI")          # magic, sender worker id
_FRAME = struct.Struct("!4sII")         # magic, round, length
_MAGIC = b"NAG1"


class FallbackError(RuntimeError):
    pass


@dataclass
class GatherStats:
    bytes_out: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    seconds: float = 0.0


def pack_message(codec: str, shape: tuple[int, ...], data: bytes) -> bytes:
    """A compressed tensor as sent: codec spec, shape, payload (what a peer needs to decode)."""
    c = codec.encode()
    return struct.pack(f"!HB{len(shape)}I", len(c), len(shape), *shape) + c + data


def unpack_message(buf: bytes) -> tuple[str, tuple[int, ...], bytes]:
    if len(buf) < 3:
        raise FallbackError("all-gather message truncated")
    clen, ndim = struct.unpack_from("!HB", buf)
    pos = 3 + 4 * ndim
    shape = struct.unpack_from(f"!{ndim}I", buf, 3)
    return buf[pos:pos + clen].decode(), tuple(shape), buf[pos + clen:]


class AllGather:
    """Worker `wid` of `n`: listen at once, connect() to the peers, then allgather() per step."""

    def __init__(self, wid: int, n: int, ip: str = "127.0.0.1", timeout: float = 10.0):
        self.wid, self.n, self.timeout = wid, n, timeout
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((ip, 0))
        self.listener.listen(64)
        self.out: dict[int, socket.socket] = {}
        self.inc: dict[int, socket.socket] = {}
        self.round = 0
        self.total = GatherStats()
        self._bufs: dict[int, bytearray] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()

    def set_identity(self, wid: int, n: int) -> None:
        self.wid, self.n = wid, n

    def connect(self, peers: dict[int, tuple[str, int]]) -> None:
        """Open a connection to every other worker and accept theirs (bounded by timeout)."""
        deadline = time.monotonic() + self.timeout
        for w, addr in sorted(peers.items()):
            if w == self.wid:
                continue
            s = socket.create_connection(tuple(addr), timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(_HELLO.pack(_MAGIC, self.wid))
            self.out[w] = s
        while len(self.inc) < self.n - 1:
            self.listener.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                c, _ = self.listener.accept()
            except socket.timeout:
                missing = sorted(set(range(self.n)) - {self.wid} - set(self.inc))
                raise FallbackError(f"host all-gather: workers {missing} never connected "
                                    f"within {self.timeout:.0f} s") from None
            c.settimeout(self.timeout)
            magic, w = _HELLO.unpack(_recv_exact(c, _HELLO.size, "hello"))
            if magic != _MAGIC or not 0 <= w < self.n:
                c.close()
                continue
            self.inc[w] = c
            self._bufs[w] = bytearray()

    def allgather(self, blob: bytes) -> tuple[list[bytes], GatherStats]:
        """Every worker's blob, indexed by worker id (this worker's own included)."""
        t0 = time.monotonic()
        self.round += 1
        frame = _FRAME.pack(_MAGIC, self.round & 0xFFFFFFFF, len(blob)) + blob
        errors: list[str] = []

        def send_all():
            for w, s in self.out.items():
                try:
                    s.sendall(frame)
                except OSError as e:
                    errors.append(f"worker {w}: {e.strerror or e}")
        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        got: dict[int, bytes] = {self.wid: blob}
        for w in self.inc:
            self._take(w, got)   # a fast peer's frame may already be buffered
        sel = selectors.DefaultSelector()
        for w, s in self.inc.items():
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, w)
        deadline = t0 + self.timeout
        try:
            while len(got) < self.n:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(self.n)) - set(got))
                    raise FallbackError(f"host all-gather round {self.round}: no message from "
                                        f"workers {missing} within {self.timeout:.0f} s")
                for key, _ in sel.select(min(left, 0.5)):
                    w = key.data
                    chunk = key.fileobj.recv(1 << 20)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        raise FallbackError(f"host all-gather: worker {w} closed its "
                                            f"connection (process gone?)")
                    self._bufs[w] += chunk
                    self._take(w, got)
        finally:
            sel.close()
            for s in self.inc.values():
                s.setblocking(True)
        sender.join(self.timeout)
        if errors:
            raise FallbackError("host all-gather: sending failed to " + "; ".join(errors))
        st = GatherStats(bytes_out=len(frame) * len(self.out),
                         bytes_in=sum(len(got[w]) + _FRAME.size for w in got if w != self.wid),
                         messages_out=len(self.out), seconds=time.monotonic() - t0)
        for f in ("bytes_out", "bytes_in", "messages_out", "seconds"):
            setattr(self.total, f, getattr(self.total, f) + getattr(st, f))
        return [got[w] for w in range(self.n)], st

    def _take(self, w: int, got: dict[int, bytes]) -> None:
        """Move worker w's frame of this round out of its receive buffer once complete."""
        b = self._bufs[w]
        if w in got or len(b) < _FRAME.size:
            return
        magic, rnd, ln = _FRAME.unpack_from(b)
        if magic != _MAGIC or rnd != self.round & 0xFFFFFFFF:
            raise FallbackError(f"host all-gather: worker {w} is out of step "
                                f"(round {rnd}, expected {self.round})")
        if len(b) >= _FRAME.size + ln:
            got[w] = bytes(b[_FRAME.size:_FRAME.size + ln])
            del b[:_FRAME.size + ln]

    def close(self) -> None:
        for s in [*self.out.values(), *self.inc.values(), self.listener]:
            try:
                s.close()
            except OSError:
                pass


def _recv_exact(s: socket.socket, n: int, what: str) -> bytes:
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except socket.timeout:
            raise FallbackError(f"host all-gather: timed out reading {what}") from None
        if not chunk:
            raise FallbackError(f"host all-gather: connection closed while reading {what}")
        buf += chunk
    return buf


def sum_in_order(values: list[np.ndarray]) -> np.ndarray:
    """Sum decoded tensors in worker-id order (float32, same order on every worker)."""
    acc = np.zeros_like(values[0], np.float32)
    for v in values:
        acc += v
    return acc
