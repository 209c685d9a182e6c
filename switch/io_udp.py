"""Local-mode I/O of the embedded switch: one UDP socket on loopback, batched.

Every datagram's source (IP, UDP port) is the worker's source and its ingress port is 0 (there
is one "port": the socket). Results go out of the same socket, so they come from the switch's
address (UDP port 0xBEE0 by default) as in the rack.

The loop moves packets in batches (nina.mmsg: one recvmmsg takes whatever is queued, up to
BATCH datagrams, straight into numpy rows the compiled pipeline reads; one sendmmsg per batch
of results). It blocks in recvmmsg for the first datagram without a timeout (a timeout would
add a poll() per batch); stop() wakes it with an empty datagram after raising the stop flag.
"""
from __future__ import annotations

import socket
import sys

import numpy as np

from nina.mmsg import MSG_TRUNC, MSG_WAITFORONE, MsgRing
from nina.wire import UDP_PORT

DEFAULT_HOST = "127.0.0.1"
SOCKET_BUFFER = 4 << 20   # bytes; absorbs bursts of window * workers packets
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

    def describe(self) -> str:
        return f"udp {self.address[0]}:{self.address[1]}"

    def run(self, pipeline) -> None:
        """Serve until stop(); returns after the in-flight batch is done."""
        from switch.kernel import R_DIP, R_DPORT, UPDATE_LEN
        from switch.pipeline import BATCH, ETH_IP_UDP_LEN

        fd = self.sock.fileno()
        rx = MsgRing(BATCH, UPDATE_LEN)      # longer datagrams are cut; their length counts
        tx = MsgRing(BATCH, 0)
        zeros = np.zeros(BATCH, np.int64)

        def send(out, out_len, out_rep, k, img):
            reps = img.replicas[out_rep[:k]]
            sent, failed = tx.send_rows(fd, out, out_len, k, reps[:, R_DIP], reps[:, R_DPORT])
            self.tx_packets += sent
            self.tx_errors += failed

        while not self._stop:
            try:
                m = rx.recv(fd, MSG_WAITFORONE | MSG_TRUNC)
            except OSError:
                if self._stop:
                    break
                raise
            if self._stop:
                break
            if not m:
                continue
            lens = rx.lengths[:m].astype(np.int64)
            ips, ports = rx.sources(m)
            try:
                pipeline.process_batch(rx.buf, zeros, lens, zeros, ips, ports,
                                       lens + ETH_IP_UDP_LEN, m, send)
            except Exception as e:   # a pipeline bug must not take the switch down
                self._internal_error(e)
            self.rx_packets += m

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
