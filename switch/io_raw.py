"""Interface-mode I/O of the embedded switch: AF_PACKET raw sockets on named interfaces.

Ports are numbered 1..N in the order the interfaces are given. NINA frames (IPv4/UDP to
0xBEE0) go through the pipeline and every result copy is framed anew from the PacketOut
(the worker_addr rewrite: MACs, IPs, UDP ports) with correct checksums; any other frame is
counted FORWARDED and sent unchanged out of the port the l2_forward table names.
Needs root (CAP_NET_RAW).

Frames move in batches: one recvmmsg per ready port takes what is queued (nina.mmsg), the NINA
updates among them go through the compiled pipeline as one batch, and the result frames of a
batch leave each port in one sendmmsg.
"""
from __future__ import annotations

import os
import select
import socket
import sys

import numpy as np

from nina.mmsg import MSG_DONTWAIT, MSG_TRUNC, MsgRing
from nina.wire import UDP_PORT
from switch import kernel as K
from switch.packets import MALFORMED, NINA, build_udp_frame, parse_frame
from switch.pipeline import BATCH, UPDATE_LEN, _Rows

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4          # our own transmissions, looped back to packet sockets
FRAME_BUFFER = 2048          # a frame row; longer frames are cut (their length still counts)
_PKTTYPE_AT = 10             # sockaddr_ll.sll_pkttype


class RawIO:
    """Runs a pipeline behind raw sockets, one per switch port."""

    def __init__(self, ifaces: list[str]):
        if not ifaces:
            raise ValueError("interface mode needs at least one interface")
        if len(set(ifaces)) != len(ifaces):
            raise ValueError(f"interface listed twice in {','.join(ifaces)}")
        self.ifaces = list(ifaces)
        self.socks: dict[int, socket.socket] = {}
        try:
            for port, name in enumerate(ifaces, start=1):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                self.socks[port] = s
                try:
                    s.bind((name, 0))
                except OSError as e:
                    raise OSError(f"cannot open interface {name!r}: {e.strerror}") from None
                s.setblocking(False)
        except PermissionError:
            self.close()
            raise PermissionError("interface mode needs root (CAP_NET_RAW) for raw sockets") \
                from None
        except OSError:
            self.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self.rx_packets = 0
        self.tx_packets = 0
        self.tx_errors = 0
        self.internal_errors = 0
        self._stop = False

    def describe(self) -> str:
        return "interfaces " + ", ".join(f"{p}={n}" for p, n in
                                         zip(self.socks, self.ifaces))

    def run(self, pipeline) -> None:
        poller = select.poll()
        fd_port = {}
        for port, s in self.socks.items():
            poller.register(s.fileno(), select.POLLIN)
            fd_port[s.fileno()] = port
        poller.register(self._wake_r, select.POLLIN)
        ring = MsgRing(BATCH, FRAME_BUFFER)
        rows = _Rows(BATCH, UPDATE_LEN)
        while not self._stop:
            for fd, _ in poller.poll():
                port = fd_port.get(fd)
                if port is None:
                    continue   # the wake pipe: the loop condition ends it
                while not self._stop:
                    m = ring.recv(fd, MSG_DONTWAIT | MSG_TRUNC)
                    if not m:
                        break
                    try:
                        self._handle(pipeline, port, ring, m, rows)
                    except Exception as e:  # a pipeline bug must not take the switch down
                        self._internal_error(e)

    def _handle(self, pipeline, port: int, ring: MsgRing, m: int, rows: _Rows) -> None:
        pkttype = ring.name.view(np.uint8).reshape(ring.n, -1)[:m, _PKTTYPE_AT]
        k = 0
        for i in range(m):
            if pkttype[i] == PACKET_OUTGOING:
                continue
            self.rx_packets += 1
            n = int(ring.lengths[i])
            view = memoryview(ring.buf[i])[:min(n, FRAME_BUFFER)]
            f = parse_frame(view)
            if f.kind == NINA:
                off, plen = f.payload_offset, f.payload_len
                c = min(plen, UPDATE_LEN)
                rows.rx[k, :c] = ring.buf[i, off:off + c]
                rows.rx_len[k], rows.rx_port[k], rows.frame_len[k] = plen, port, n
                rows.rx_ip[k], rows.rx_udp[k] = f.src_ip, f.src_port
                k += 1
            elif f.kind == MALFORMED:
                pipeline.drop_malformed(port, n)
            else:
                egress = pipeline.forward(port, f.dst_mac, n)
                if egress is not None:
                    self._send(egress, bytes(view))
        if k:
            pipeline.process_batch(rows.rx, rows.rx_off, rows.rx_len, rows.rx_port, rows.rx_ip,
                                   rows.rx_udp, rows.frame_len, k, self._send_results)

    def _send_results(self, out, out_len, out_rep, k, img) -> None:
        for i in range(k):
            r = img.replicas[out_rep[i]]
            self._send(int(r[K.R_PORT]), build_udp_frame(
                int(r[K.R_DMAC]), int(r[K.R_SMAC]), int(r[K.R_SIP]), int(r[K.R_DIP]),
                UDP_PORT, int(r[K.R_DPORT]), out[i, :out_len[i]].tobytes()))

    def _send(self, port: int, frame: bytes) -> None:
        s = self.socks.get(port)
        if s is None:
            self.tx_errors += 1   # no such port on this switch
            return
        try:
            s.send(frame)
            self.tx_packets += 1
        except OSError:
            self.tx_errors += 1

    def _internal_error(self, e: Exception) -> None:
        self.internal_errors += 1
        if self.internal_errors <= 3:
            print(f"nina switch: internal error on a frame (dropped): "
                  f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = None
