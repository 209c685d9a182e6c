"""Interface-mode I/O of the embedded switch: AF_PACKET sockets on named interfaces.

Ports are numbered 1..N in the order the interfaces are given. NINA frames (IPv4/UDP to
0xBEE0) go through the pipeline and every result copy is framed anew from the PacketOut
(the worker_addr rewrite: MACs, IPs, UDP ports) with correct checksums; any other frame is
counted FORWARDED and sent unchanged out of the port the l2_forward table names.
Needs root (CAP_NET_RAW).

Frames move in batches. By default every port has PACKET_MMAP rings (switch.packet_rings): a
receive ring (TPACKET_V2; V3 on request) the kernel fills without a syscall per frame, copied
into the pipeline's frame rows by a compiled loop, and a transmit ring that one send() per
batch and port flushes. If the kernel refuses a ring every port falls back to a plain socket
moved with recvmmsg/sendmmsg (nina.mmsg), one log line saying so (io="mmsg" asks for that
from the start). Either way the NINA
updates of a batch go through the compiled pipeline as one call, the results are framed by a
compiled loop (switch.packets.frame_results) and each port's share leaves in one call, and
forwarded frames are grouped per egress port the same way. On rings one batch takes from
every ready port (a slot's updates come from every worker's port: a batch per port would
complete fewer slots per send), and with tx_segments > 1 (`--tx-gso`) a port's results to
one worker leave as GSO frames of up to that many datagrams (switch.packet_rings.TxRing).
With rx_gso (`--rx-gso`, TPACKET_V2 rings) the receive rings take UDP GSO frames whole (a
workers' segmented send crosses the link in one piece when every device passes GSO) and cut
them into a row per datagram; frames whose checksum the sender left to an offload (every frame
from a host whose interface has TX checksumming on) get it completed if they are forwarded.
"""
from __future__ import annotations

import os
import select
import socket
import sys

import numpy as np

from nina.mmsg import MSG_DONTWAIT, MSG_TRUNC, MsgRing
from nina.wire import UDP_PORT
from switch.packets import (FRAME_HEAD, K_MALFORMED, FrameRows, complete_checksums,
                            frame_results, group_results)
from switch.kernel import OUT_ROW
from switch.packet_rings import (RX_SMALL_LIMIT, RingUnavailable, RxRing, TxRing,
                                 ignore_outgoing, length_filter)
from switch.raw_io_options import DEFAULT_RX_MIB, IO_KINDS, MAX_TX_SEGMENTS, ring_version
from switch.pipeline import BATCH, OUT_ROWS

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4          # our own transmissions, looped back to packet sockets
FRAME_BUFFER = 2048          # a frame row; longer frames are cut (their length still counts)
_PKTTYPE_AT = 10             # sockaddr_ll.sll_pkttype
MMSG_BUFFER_PER_RING_MIB = 4 << 20   # plain sockets' buffer per MiB of --ring-mib: about as
                                     # many queued frames (~1.5 KiB of buffer each) as a ring


class _RingPort:
    """A port on PACKET_MMAP rings: receive socket + ring, transmit socket + TX ring; with
    rx_gso a second receive socket + ring of GSO-sized slots for the frames too long for the
    first one's (switch.packet_rings.RX_SMALL_LIMIT), each socket filtered by length."""

    def __init__(self, name: str, rx_mib: int, version: int, tx_segments: int = 1,
                 rx_gso: bool = False):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # bound below
        self.big_sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) if rx_gso \
            else None
        self.rx = self.big = self.tx = None
        self.kind = f"ring-v{version}"
        try:
            self.rx = RxRing(self.sock, rx_mib, version=version, gso=rx_gso)
            if rx_gso:
                self.big = RxRing(self.big_sock, rx_mib, version=version, gso=True, big=True)
                length_filter(self.sock, RX_SMALL_LIMIT, longer=False)
                length_filter(self.big_sock, RX_SMALL_LIMIT, longer=True)
            self.tx = TxRing(name, segments=tx_segments)
            self.own_filtered = ignore_outgoing(self.sock)
            self.sock.bind((name, ETH_P_ALL))
            if rx_gso:
                self.own_filtered &= ignore_outgoing(self.big_sock)
                self.big_sock.bind((name, ETH_P_ALL))
        except BaseException:
            self.close()
            raise
        self.sock.setblocking(False)

    @property
    def rx_socks(self) -> list[socket.socket]:
        return [self.sock] + ([self.big_sock] if self.big_sock is not None else [])

    def recv(self, rows, lens, pkttype, csum) -> int:
        """Frames into rows 0.. (as many as rows has, at most); csum: see RxRing.take."""
        m = self.rx.take(rows, lens, pkttype, len(rows), csum)
        if self.big is not None and m < len(rows):
            m += self.big.take(rows[m:], lens[m:], pkttype[m:], len(rows) - m, csum[m:])
        return m

    @property
    def rings(self) -> list[RxRing]:
        return [r for r in (self.rx, self.big) if r is not None]

    def send(self, frames, flen, index, group: bool = False) -> tuple[int, int]:
        k = len(index)
        sent = self.tx.send(frames, flen, index, k, group)
        return sent, k - sent

    def drops(self) -> int:
        return sum(r.drops() for r in self.rings)

    def close(self) -> None:
        for part in (self.rx, self.big, self.tx):
            if part is not None:
                part.close()
        self.sock.close()
        if self.big_sock is not None:
            self.big_sock.close()


class _MsgPort:
    """A port on one plain AF_PACKET socket moved with recvmmsg/sendmmsg."""
    kind = "mmsg"

    @property
    def rx_socks(self) -> list[socket.socket]:
        return [self.sock]

    def __init__(self, name: str, ring_mib: int):
        from switch.io_udp import set_buffers
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            set_buffers(self.sock, ring_mib * MMSG_BUFFER_PER_RING_MIB)
            self.sock.bind((name, ETH_P_ALL))
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.ring = MsgRing(BATCH, FRAME_BUFFER)
        self.tx = MsgRing(BATCH, 0)

    def recv(self, rows, lens, pkttype, csum) -> int:
        """Into the socket's own rows (rows is not used: the kernel copies there directly;
        a plain socket's frames come with their checksums complete: csum is not touched)."""
        r = self.ring
        m = r.recv(self.sock.fileno(), MSG_DONTWAIT | MSG_TRUNC)
        if m:
            lens[:m] = r.lengths[:m]
            pkttype[:m] = r.name.view(np.uint8).reshape(r.n, -1)[:m, _PKTTYPE_AT]
        return m

    def send(self, frames, flen, index, group: bool = False) -> tuple[int, int]:
        return self.tx.send_rows(self.sock.fileno(), frames, flen[index], len(index),
                                 index=index)

    def drops(self) -> int:
        return 0

    def close(self) -> None:
        self.sock.close()


class RawIO:
    """Runs a pipeline behind AF_PACKET sockets, one port per interface."""

    def __init__(self, ifaces: list[str], io: str = "ring", ring_mib: int = DEFAULT_RX_MIB,
                 tx_segments: int = 1, rx_gso: bool = False):
        if not ifaces:
            raise ValueError("interface mode needs at least one interface")
        if len(set(ifaces)) != len(ifaces):
            raise ValueError(f"interface listed twice in {','.join(ifaces)}")
        if io not in IO_KINDS:
            raise ValueError(f"raw I/O must be one of {', '.join(IO_KINDS)}, got {io!r}")
        if not 1 <= tx_segments <= MAX_TX_SEGMENTS:
            raise ValueError(f"results per GSO frame must be 1..{MAX_TX_SEGMENTS}, got "
                             f"{tx_segments}")
        if rx_gso and ring_version(io) != 2:
            raise ValueError("GSO frames taken whole (rx_gso) need TPACKET_V2 receive rings "
                             "(io ring-v2)")
        self.ifaces = list(ifaces)
        self.tx_segments = tx_segments
        self.rx_gso = rx_gso
        self.ports: dict[int, _RingPort | _MsgPort] = {}
        self.fallback_reason: str | None = None
        try:
            self._open(io, ring_mib)
        except PermissionError:
            self.close()
            raise PermissionError("interface mode needs root (CAP_NET_RAW) for raw sockets") \
                from None
        except OSError:
            self.close()
            raise
        self.io = next(iter(self.ports.values())).kind
        self._wake_r, self._wake_w = os.pipe()
        self.rx_packets = 0
        self.tx_packets = 0
        self.tx_errors = 0
        self.internal_errors = 0
        self._stop = False

    def _open(self, io: str, ring_mib: int) -> None:
        for port, name in enumerate(self.ifaces, start=1):
            try:
                if ring_version(io) and self.fallback_reason is None:
                    try:
                        self.ports[port] = _RingPort(name, ring_mib, ring_version(io),
                                                     self.tx_segments, self.rx_gso)
                        continue
                    except RingUnavailable as e:
                        if self.rx_gso:   # a plain socket would cut GSO frames at 2 KiB
                            raise OSError(f"a receive ring that takes GSO frames whole was "
                                          f"refused ({e.strerror})") from None
                        self._fall_back(name, e.strerror, ring_mib)
                self.ports[port] = _MsgPort(name, ring_mib)
            except PermissionError:
                raise
            except OSError as e:
                raise OSError(f"cannot open interface {name!r}: {e.strerror or e}") from None

    def _fall_back(self, name: str, why: str, ring_mib: int) -> None:
        """Every port to recvmmsg/sendmmsg (one kind of I/O per switch), said once."""
        self.fallback_reason = f"{name}: {why}"
        print(f"nina switch: PACKET_MMAP ring refused ({self.fallback_reason}); using "
              f"recvmmsg/sendmmsg on every port", file=sys.stderr, flush=True)
        for port in list(self.ports):
            self.ports.pop(port).close()
        for port, earlier in enumerate(self.ifaces, start=1):   # the ports before this one
            if earlier == name:
                break
            self.ports[port] = _MsgPort(earlier, ring_mib)

    @property
    def socks(self) -> dict[int, socket.socket]:
        """The receive socket of each port."""
        return {p: pt.sock for p, pt in self.ports.items()}

    def describe(self) -> str:
        how = f"PACKET_MMAP rings, TPACKET_{self.io[-2:].upper()} receive" \
            if self.io.startswith("ring") else "recvmmsg/sendmmsg"
        if self.io.startswith("ring") and self.rx_gso:
            how += " taking GSO frames whole"
        return "interfaces " + ", ".join(f"{p}={n}" for p, n in
                                         zip(self.ports, self.ifaces)) + f" ({how})"

    @property
    def rx_drops(self) -> int:
        """Frames the kernel dropped for want of room in a receive ring (kept after close)."""
        if self.ports:
            self._drops = sum(pt.drops() for pt in self.ports.values())
        return getattr(self, "_drops", 0)

    @property
    def rx_gso_frames(self) -> tuple[int, int]:
        """(GSO frames received whole and cut, GSO frames dropped as uncuttable); kept after
        close."""
        rings = [r for pt in self.ports.values() if isinstance(pt, _RingPort) for r in pt.rings]
        if rings:
            self._gso = (sum(r.gso_frames for r in rings), sum(r.bad_gso_frames for r in rings))
        return getattr(self, "_gso", (0, 0))

    def run(self, pipeline) -> None:
        poller = select.poll()
        fd_port = {}
        for port, pt in self.ports.items():
            for sock in pt.rx_socks:
                poller.register(sock.fileno(), select.POLLIN)
                fd_port[sock.fileno()] = port
        poller.register(self._wake_r, select.POLLIN)
        self._rows = np.zeros((BATCH, FRAME_BUFFER), np.uint8)   # ring ports copy here
        self._lens = np.zeros(BATCH, np.int64)
        self._pkttype = np.zeros(BATCH, np.uint8)
        self._csum = np.zeros(BATCH, np.int64)   # pending checksums (rx_gso rings)
        self._frows = FrameRows(BATCH)
        self._frames = np.zeros((OUT_ROWS, FRAME_HEAD + OUT_ROW), np.uint8)
        self._flen = np.zeros(OUT_ROWS, np.int64)
        self._order = np.zeros(OUT_ROWS, np.int64)        # group_results' send order
        self._runs = np.zeros(2 * OUT_ROWS, np.int64)     # and its (port, end) runs
        self._port_of = np.zeros(BATCH, np.int64)
        rings = self.io.startswith("ring")
        while not self._stop:
            ready = list(dict.fromkeys(fd_port[fd] for fd, _ in poller.poll() if fd in fd_port))
            if rings:
                self._drain_together(pipeline, ready)
                continue
            for port in ready:
                pt = self.ports[port]
                while not self._stop:
                    m = pt.recv(self._rows, self._lens, self._pkttype, self._csum)
                    if not m:
                        break
                    self._port_of[:m] = port
                    self._handle_safely(pipeline, pt.ring.buf, m)

    def _drain_together(self, pipeline, ready: list[int]) -> None:
        """Ring ports: one batch from every ready port's ring, as one pipeline call, until
        all are empty. The results of a batch then leave per egress port in one send (one
        GSO frame per worker and flow with --tx-gso): updates of one slot arrive from every
        worker's port, and handled port by port each batch would complete fewer slots."""
        while ready and not self._stop:
            m, still = 0, []
            for i, port in enumerate(ready):
                if m == BATCH:   # the batch is full: the ports not read yet come next time
                    still += ready[i:]
                    break
                got = self.ports[port].recv(self._rows[m:], self._lens[m:], self._pkttype[m:],
                                            self._csum[m:])
                if got:
                    self._port_of[m:m + got] = port
                    m += got
                    still.append(port)
            if not m:
                return
            self._handle_safely(pipeline, self._rows, m)
            ready = still

    def _handle_safely(self, pipeline, buf: np.ndarray, m: int) -> None:
        try:
            self._handle(pipeline, buf, m)
        except Exception as e:  # a pipeline bug must not take the switch down
            self._internal_error(e)

    def _handle(self, pipeline, buf: np.ndarray, m: int) -> None:
        """One batch of frames (rows of buf; row i came in on port _port_of[i]): the NINA
        updates through the pipeline in one call (the frames' own rows, the payload at its
        offset), the rest forwarded, grouped per egress port."""
        lens = self._lens[:m]
        fr = self._frows
        fr.classify(buf, lens, m)
        mine, n_nina, n_other = fr.split(self._pkttype, m, PACKET_OUTGOING)
        self.rx_packets += mine
        if n_other:   # malformed NINA or other traffic
            self._forward(pipeline, buf, lens, fr.other[:n_other])
        if not n_nina:
            return
        if n_nina == m:   # the usual batch: every frame an update, processed in place
            pipeline.process_batch(buf, fr.off, fr.plen, self._port_of, fr.src_ip,
                                   fr.src_port, lens, m, self._send_results)
        else:
            idx = fr.nina[:n_nina]
            pipeline.process_batch(buf[idx], fr.off[idx], fr.plen[idx], self._port_of[idx],
                                   fr.src_ip[idx], fr.src_port[idx], lens[idx], n_nina,
                                   self._send_results)

    def _forward(self, pipeline, buf: np.ndarray, lens: np.ndarray, which: np.ndarray) -> None:
        fr = self._frows
        egress: dict[int, list[int]] = {}
        for i in which.tolist():
            port = int(self._port_of[i])
            n = int(lens[i])
            if fr.kind[i] == K_MALFORMED:
                pipeline.drop_malformed(port, n)
                continue
            e = pipeline.forward(port, int(fr.dst_mac[i]), n)
            if e is not None:
                egress.setdefault(e, []).append(i)
        if egress:
            flen = np.minimum(lens, FRAME_BUFFER)
            for e, rows in egress.items():
                rows = np.array(rows, np.int64)
                if self.rx_gso:   # what the sender's offload left undone, as it leaves
                    complete_checksums(buf, lens, self._csum, rows)
                self._send_rows(e, buf, flen, rows)

    def _send_results(self, out, out_len, out_rep, k, img) -> None:
        """Frame a batch of results (compiled) and send each port's share in one call."""
        frame_results(out, out_len, out_rep, k, img.replicas, self._frames, self._flen,
                      UDP_PORT)
        # results leave slot by slot, worker after worker; with GSO frames (a run of one
        # worker's results each) every worker's results go together, their own order kept
        order, runs = self._order, self._runs
        start = 0
        for j in range(group_results(out_rep, k, img.replicas, self.tx_segments > 1, order,
                                     runs)):
            end = int(runs[2 * j + 1])
            self._send_rows(int(runs[2 * j]), self._frames, self._flen, order[start:end], True)
            start = end

    def _send_rows(self, port: int, frames: np.ndarray, flen: np.ndarray,
                   index: np.ndarray, results: bool = False) -> None:
        """frames[index] out of `port`; results (frames this switch built, one UDP flow per
        worker) may leave as GSO frames of up to tx_segments datagrams."""
        pt = self.ports.get(port)
        if pt is None:
            self.tx_errors += len(index)   # no such port on this switch
            return
        sent, failed = pt.send(frames, flen, index, results)
        self.tx_packets += sent
        self.tx_errors += failed

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
        self._drops = self.rx_drops   # read the counters while the sockets exist
        self.rx_gso_frames
        for pt in self.ports.values():
            pt.close()
        self.ports = {}
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = None
