"""A worker's UDP endpoint towards the switch: batched sends, draining receives, byte counts.

Results arrive at the address the worker registered with the controller, so the socket is
bound once and kept for the whole job (the switch admits updates only from that source).

The all-reduce client's fast path is `send_rows` (a window of update packets, rows of a numpy
array, in one sendmmsg) and `recv_rows` (whatever is queued, in one recvmmsg, into the rows of
`rx`); `send`/`recv` move lists of bytes for everything else.
"""
from __future__ import annotations

import errno
import ipaddress
import select
import socket
from dataclasses import dataclass

import numpy as np

from nina.mmsg import MSG_DONTWAIT, MsgRing
from nina.wire import HEADER_LEN

_BUF = 4 << 20          # socket buffers: a full window of every worker's results fits
_MAX_DGRAM = 2048       # larger than any NINA packet (16 + 512 bytes at most)
RX_BATCH = 1024         # datagrams per recvmmsg


@dataclass
class Counters:
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0


class UdpTransport:
    """One bound UDP socket; `switch` is the (ip, port) every update goes to."""

    def __init__(self, switch: tuple[str, int], bind_ip: str = "127.0.0.1", bind_port: int = 0):
        self.switch = (switch[0], int(switch[1]))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, _BUF)
            except OSError:
                pass  # the kernel caps it; smaller buffers only mean more retransmissions
        try:
            self.sock.bind((bind_ip, bind_port))
        except OSError as e:
            raise OSError(f"cannot bind UDP {bind_ip}:{bind_port}: {e.strerror}") from None
        self.counters = Counters()
        self.rx = MsgRing(RX_BATCH, _MAX_DGRAM)
        self._tx = MsgRing(RX_BATCH, 0)
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN)

    @property
    def switch(self) -> tuple[str, int]:
        return self._switch

    @switch.setter
    def switch(self, addr: tuple[str, int]) -> None:
        """Where updates go; a worker learns it at the welcome, after binding (so the batched
        send path's numeric address is kept with it)."""
        self._switch = (addr[0], int(addr[1]))
        self._switch_ip = int(ipaddress.IPv4Address(socket.gethostbyname(self._switch[0])))

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def send(self, packets: list[bytes]) -> None:
        sendto, dst = self.sock.sendto, self.switch
        for p in packets:
            try:
                sendto(p, dst)
            except OSError as e:
                # ICMP errors from an earlier packet surface here on some kernels; a lost
                # update is handled by retransmission, so only report persistent failures.
                if e.errno not in (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN):
                    raise OSError(f"sending to switch {dst[0]}:{dst[1]}: {e.strerror}") from None
                continue
            self.counters.packets_out += 1
            self.counters.bytes_out += len(p)

    def send_rows(self, rows: np.ndarray, length: int, index: np.ndarray, m: int) -> None:
        """Send rows[index[0..m-1]][:length] to the switch in one sendmmsg (more if m is
        large); a datagram the kernel refuses for a transient reason is lost, as on a link."""
        if not m:
            return
        sent, _ = self._tx.send_rows(self.sock.fileno(), rows, length, m, self._switch_ip,
                                     self.switch[1], index)
        self.counters.packets_out += sent
        self.counters.bytes_out += sent * length

    def recv_rows(self, timeout: float) -> int:
        """Wait up to `timeout` s for a first datagram, then take what is queued (up to
        RX_BATCH) into self.rx: rows rx.buf[i], lengths rx.lengths[i]. Returns how many."""
        if not self._poll.poll(max(0.0, timeout) * 1000.0):
            return 0
        m = self.rx.recv(self.sock.fileno(), MSG_DONTWAIT)
        if m:
            self.counters.packets_in += m
            self.counters.bytes_in += int(self.rx.lengths[:m].sum())
        return m

    def recv(self, timeout: float, max_packets: int = 4096) -> list[bytes]:
        """Wait up to `timeout` s for a first packet, then take whatever else is queued."""
        out: list[bytes] = []
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return out
        recv = self.sock.recv
        while len(out) < max_packets:
            try:
                buf = recv(_MAX_DGRAM, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from an earlier send: nobody at the switch
            if len(buf) < HEADER_LEN:
                continue
            out.append(buf)
        self.counters.packets_in += len(out)
        self.counters.bytes_in += sum(len(b) for b in out)
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
