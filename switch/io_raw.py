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
from switch.packets import FRAME_HEAD, K_MALFORMED, K_NINA, FrameRows, frame_results
from switch.kernel import OUT_ROW
from switch.pipeline import BATCH, OUT_ROWS

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
        self._frows = FrameRows(BATCH)
        self._frames = np.zeros((OUT_ROWS, FRAME_HEAD + OUT_ROW), np.uint8)
        self._flen = np.zeros(OUT_ROWS, np.int64)
        self._tx = MsgRing(BATCH, 0)
        self._port_of = np.zeros(BATCH, np.int64)
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
                        self._handle(pipeline, port, ring, m)
                    except Exception as e:  # a pipeline bug must not take the switch down
                        self._internal_error(e)

    def _handle(self, pipeline, port: int, ring: MsgRing, m: int) -> None:
        """One batch of frames from `port`: the NINA updates through the pipeline in one call
        (the frames' own rows, the payload at its offset), the rest one by one (rare)."""
        pkttype = ring.name.view(np.uint8).reshape(ring.n, -1)[:m, _PKTTYPE_AT]
        lens = ring.lengths[:m].astype(np.int64)
        fr = self._frows
        fr.classify(ring.buf, lens, m)
        mine = pkttype != PACKET_OUTGOING
        nina = mine & (fr.kind[:m] == K_NINA)
        self.rx_packets += int(mine.sum())
        for i in np.flatnonzero(mine & ~nina).tolist():   # malformed NINA or other traffic
            n = int(lens[i])
            if fr.kind[i] == K_MALFORMED:
                pipeline.drop_malformed(port, n)
            else:
                egress = pipeline.forward(port, int(fr.dst_mac[i]), n)
                if egress is not None:
                    self._send(egress, ring.buf[i, :min(n, FRAME_BUFFER)].tobytes())
        idx = np.flatnonzero(nina)
        if not len(idx):
            return
        self._port_of[:] = port
        if len(idx) == m:   # the usual batch: every frame an update, processed in place
            pipeline.process_batch(ring.buf, fr.off, fr.plen, self._port_of, fr.src_ip,
                                   fr.src_port, lens, m, self._send_results)
        else:
            pipeline.process_batch(ring.buf[idx], fr.off[idx], fr.plen[idx], self._port_of,
                                   fr.src_ip[idx], fr.src_port[idx], lens[idx], len(idx),
                                   self._send_results)

    def _send_results(self, out, out_len, out_rep, k, img) -> None:
        """Frame a batch of results (compiled) and send each port's share in one sendmmsg."""
        frame_results(out, out_len, out_rep, k, img.replicas, self._frames, self._flen,
                      UDP_PORT)
        ports = img.replicas[out_rep[:k], 0]
        for p in np.unique(ports).tolist():
            sel = np.flatnonzero(ports == p)
            s = self.socks.get(p)
            if s is None:
                self.tx_errors += len(sel)   # no such port on this switch
                continue
            sent, failed = self._tx.send_rows(s.fileno(), self._frames, self._flen[sel],
                                              len(sel), index=sel)
            self.tx_packets += sent
            self.tx_errors += failed

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
