"""A worker's UDP endpoint towards the switch: batched sends, draining receives, byte counts.

Results arrive at the address the worker registered with the controller, so the socket is
bound once and kept for the whole job (the switch admits updates only from that source).

The all-reduce client's fast path is `send_rows` (a window of update packets, rows of a numpy
array, in one call: on loopback one segmented UDP_SEGMENT send, else one sendmmsg) and
`recv_rows` (whatever is queued, in one recvmmsg of UDP_GRO buffers, cut into the rows of
`rx`); nina.udp_batch does both and falls back to plain recvmmsg/sendmmsg where the kernel
refuses the options. `send`/`recv` move lists of bytes for everything else.
"""
from __future__ import annotations

import errno
import ipaddress
import select
import socket
from dataclasses import dataclass

import numpy as np

from nina.mmsg import MSG_DONTWAIT
from nina.udp_batch import BatchRx, BatchTx, io_mode
from nina.wire import HEADER_LEN

_BUF = 4 << 20          # socket buffers: a full window of every worker's results fits
_MAX_DGRAM = 2048       # larger than any NINA packet (16 + 512 bytes at most)
RX_BATCH = 1024         # datagrams per recv_rows at most (a receive holds more: kept)
RX_BUFFERS = 64         # GRO buffers (a segmented send each, or a datagram) per recvmmsg


@dataclass
class Counters:
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0


class UdpTransport:
    """One bound UDP socket; `switch` is the (ip, port) every update goes to."""

    def __init__(self, switch: tuple[str, int], bind_ip: str = "127.0.0.1", bind_port: int = 0):
        batched = io_mode() == "gso"
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
        # rx.rows[i] / rx.lengths[i]: received datagram i (what recv_rows returned)
        self.rx = BatchRx(self.sock, RX_BATCH, _MAX_DGRAM, msgs=RX_BUFFERS, gro=batched)
        self._tx = BatchTx(self.sock, RX_BATCH, gso=batched)
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
        """Send rows[index[0..m-1]][:length] to the switch in one call (segmented sends on
        loopback, else one sendmmsg; more calls if m is large); a datagram the kernel refuses
        for a transient reason is lost, as on a link."""
        if not m:
            return
        sent, _ = self._tx.send_rows(rows, length, m, self._switch_ip, self.switch[1], index)
        self.counters.packets_out += sent
        self.counters.bytes_out += sent * length

    def recv_rows(self, timeout: float) -> int:
        """Wait up to `timeout` s for a first datagram, then take what is queued (up to
        RX_BATCH; the rest of a receive comes with the next call, without waiting) into
        self.rx: rows rx.rows[i], lengths rx.lengths[i]. Returns how many."""
        if self.rx.pending:
            m = self.rx.more()
        elif not self._poll.poll(max(0.0, timeout) * 1000.0):
            return 0
        else:
            m = self.rx.recv(MSG_DONTWAIT)
        if m:
            self.counters.packets_in += m
            self.counters.bytes_in += self.rx.nbytes
        return m

    def recv(self, timeout: float, max_packets: int = 4096) -> list[bytes]:
        """Wait up to `timeout` s for a first packet, then take whatever else is queued (at
        least up to max_packets), as bytes; runts shorter than a NINA header are skipped."""
        out: list[bytes] = []
        m = self.recv_rows(timeout)
        while m:
            rx = self.rx
            out += [rx.rows[i, :rx.lengths[i]].tobytes() for i in range(m)
                    if rx.lengths[i] >= HEADER_LEN]
            if len(out) >= max_packets:
                break
            m = self.recv_rows(0.0)
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
