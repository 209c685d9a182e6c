"""Local-mode I/O of the embedded switch: one UDP socket on loopback.

Every datagram's source (IP, UDP port) is the worker's source and its ingress port is 0 (there
is one "port": the socket). Results go out of the same socket, so they come from the switch's
address (UDP port 0xBEE0 by default) as in the rack.

The loop receives straight into the pipeline's rx_buffer (no per-packet allocation) and blocks
in recvfrom_into without a timeout (a socket timeout would add a poll() per packet); stop()
wakes it with an empty datagram after raising the stop flag.
"""
from __future__ import annotations

import ipaddress
import socket
import sys

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
    """Runs a pipeline-like object (rx_buffer, process_rx) behind a UDP socket."""

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
        """Serve until stop(); returns after the in-flight packet is done."""
        recv, send = self.sock.recvfrom_into, self.sock.sendto
        buf = pipeline.rx_buffer
        proc = pipeline.process_rx
        ip_ints: dict[str, int] = {}
        ip_strs: dict[int, str] = {}
        while not self._stop:
            try:
                n, (ip, port) = recv(buf)
            except ConnectionRefusedError:   # an ICMP error for an earlier send: not ours to
                continue                     # handle, a UDP switch keeps going
            except OSError:
                if self._stop:
                    break
                raise
            if self._stop:
                break
            src = ip_ints.get(ip)
            if src is None:
                if len(ip_ints) > 65536:
                    ip_ints.clear()
                src = ip_ints[ip] = int(ipaddress.IPv4Address(ip))
            try:
                outs = proc(n, LOCAL_INGRESS_PORT, src, port)
            except Exception as e:   # a pipeline bug must not take the switch down
                self._internal_error(e)
                continue
            for o in outs:
                dst = ip_strs.get(o.dst_ip)
                if dst is None:
                    if len(ip_strs) > 65536:
                        ip_strs.clear()
                    dst = ip_strs[o.dst_ip] = str(ipaddress.IPv4Address(o.dst_ip))
                try:
                    send(o.payload, (dst, o.dst_udp_port))
                    self.tx_packets += 1
                except OSError:
                    self.tx_errors += 1
            self.rx_packets += 1

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
