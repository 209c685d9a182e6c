"""Local-mode I/O of the embedded switch: one UDP socket on loopback, batched.

Every datagram's source (IP, UDP port) is the worker's source and its ingress port is 0 (there
is one "port": the socket). Results go out of the same socket, so they come from the switch's
address (UDP port 0xBEE0 by default) as in the rack.

The loop moves packets in batches (nina.udp_batch): one recvmmsg takes whatever is queued
(with UDP_GRO a worker's whole window arrives as one buffer), cut into the numpy rows the
compiled pipeline reads; the results of a batch leave grouped per worker, one segmented
(UDP_SEGMENT) send each, all in one sendmmsg. Where the kernel refuses GRO/GSO (or
NINA_UDP_IO=mmsg) the same loop runs on plain recvmmsg/sendmmsg. It blocks in recvmmsg for
the first datagram without a timeout (a timeout would add a poll() per batch); stop() wakes
it with an empty datagram after raising the stop flag.
"""
from __future__ import annotations

import socket
import sys

import numpy as np

from nina.wire import UDP_PORT

DEFAULT_HOST = "127.0.0.1"
SOCKET_BUFFER = 4 << 20   # bytes; absorbs bursts of window * workers packets
RX_ROWS = 1024            # datagrams cut from one receive per pipeline call at most
LOCAL_INGRESS_PORT = 0
_SO_RCVBUFFORCE, _SO_SNDBUFFORCE = 33, 32   # Linux; not exported by the socket module


def set_buffers(sock: socket.socket, nbytes: int) -> None:
    """Socket buffers of nbytes: past net.core.[rw]mem_max when allowed (root), else capped."""
    for force, opt in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, nbytes)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, nbytes)
            except OSError:
                pass


class UdpIO:
    """Runs a pipeline-like object (process_batch, trace) behind a UDP socket."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = UDP_PORT,
                 buffer_bytes: int = SOCKET_BUFFER):
        # imported here: `nina switch --help` (which reads SOCKET_BUFFER) loads no compiler
        from nina.udp_batch import BatchRx, BatchTx, io_mode
        from switch.kernel import UPDATE_LEN
        from switch.pipeline import OUT_ROWS

        batched = io_mode() == "gso"   # a bad NINA_UDP_IO is refused before the socket exists
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        set_buffers(self.sock, buffer_bytes)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise OSError(f"cannot bind UDP {host}:{port}: {e.strerror}") from None
        self.address: tuple[str, int] = self.sock.getsockname()
        self.rx_packets = 0      # datagrams fully handled (processed and their outputs sent)
        self.tx_packets = 0
        self.tx_errors = 0
        self.internal_errors = 0
        self._stop = False
        # rows hold UPDATE_LEN bytes: a longer datagram is cut, its length still counts
        self._rx = BatchRx(self.sock, RX_ROWS, UPDATE_LEN, gro=batched)
        self._tx = BatchTx(self.sock, OUT_ROWS, gso=batched)
        rx, tx = self._rx.gro, self._tx.gso
        self.batching = "gro/gso" if rx and tx else "gro/sendmmsg" if rx else \
            "recvmmsg/gso" if tx else "recvmmsg/sendmmsg"   # what the kernel accepted

    def describe(self) -> str:
        return f"udp {self.address[0]}:{self.address[1]}"

    def run(self, pipeline) -> None:
        """Serve until stop(); returns after the in-flight batch is done."""
        from nina.mmsg import MSG_WAITFORONE
        from switch.kernel import R_DIP, R_DPORT
        from switch.pipeline import ETH_IP_UDP_LEN

        rx, tx = self._rx, self._tx
        zeros = np.zeros(RX_ROWS, np.int64)
        frame_len = np.zeros(RX_ROWS, np.int64)

        def send(out, out_len, out_rep, k, img):
            reps = img.replicas[out_rep[:k]]
            sent, failed = tx.send_rows(out, out_len, k, reps[:, R_DIP], reps[:, R_DPORT])
            self.tx_packets += sent
            self.tx_errors += failed

        while not self._stop:
            try:
                m = rx.recv(MSG_WAITFORONE)
            except OSError:
                if self._stop:
                    break
                raise
            if self._stop:
                break
            while m:
                np.add(rx.lengths[:m], ETH_IP_UDP_LEN, out=frame_len[:m])
                try:
                    pipeline.process_batch(rx.rows, zeros, rx.lengths, zeros, rx.ips,
                                           rx.ports, frame_len, m, send)
                except Exception as e:   # a pipeline bug must not take the switch down
                    self._internal_error(e)
                self.rx_packets += m
                m = rx.more()

    def _internal_error(self, e: Exception) -> None:
        self.internal_errors += 1
        if self.internal_errors <= 3:
            print(f"nina switch: internal error on a packet (dropped): "
                  f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        """Make run() return (callable from another thread or a signal handler)."""
        self._stop = True
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                host = self.address[0]
                s.sendto(b"", ("127.0.0.1" if host == "0.0.0.0" else host, self.address[1]))
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
