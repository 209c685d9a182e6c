"""Collect the P4 program's trace clones from BMv2's monitor port into a NINA trace file.

The P4 program clones every processed packet to the monitor port as one Ethernet frame of type
nina.decisions.TRACE_ETHERTYPE carrying a 32-byte big-endian record. This process reads those
frames from the peer of that port (an AF_PACKET socket bound to that ethertype only, so the
kernel filters) and appends the records to a trace file in switch/trace_file.py's format, so
`nina trace` reads a BMv2 run as it reads an embedded one. The index is refreshed about once a
second (a trace can be read while the rack runs) and written in full at a clean stop (SIGTERM or
SIGINT: the socket is drained first).

    python -m topology.trace_capture --iface nina-mon0 --out RUN/switch.trace
"""
from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

from nina.decisions import TRACE_DTYPE, TRACE_ETHERTYPE
from switch.trace_file import TraceWriter

ETH_HEADER = 14
RECORD = TRACE_DTYPE.itemsize
FRAME_MAX = 2048
RCVBUF = 32 << 20          # bursts of a few thousand records/s must never overflow it
INDEX_EVERY_S = 1.0
PACKET_OUTGOING = 4        # sll_pkttype of frames this host sent itself
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33


def open_socket(iface: str) -> socket.socket:
    """A raw socket receiving only TRACE_ETHERTYPE frames that arrive on `iface`."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(TRACE_ETHERTYPE))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)    # root: past rmem_max
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    s.bind((iface, TRACE_ETHERTYPE))
    s.setblocking(False)
    return s


def kernel_drops(s: socket.socket) -> int:
    """Frames the kernel dropped for this socket since the last call (buffer full)."""
    try:
        _packets, drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return drops
    except OSError:
        return 0


class Capture:
    """Frames from the socket -> records in the trace file."""

    def __init__(self, sock: socket.socket, writer: TraceWriter):
        self.sock = sock
        self.writer = writer
        self.malformed = 0      # frames too short to hold a record
        self.drops = 0          # frames the kernel dropped (socket buffer full)
        self._buf = bytearray(FRAME_MAX)

    def drain(self) -> int:
        """Read every frame queued now; append their records; return how many."""
        records = []
        view = memoryview(self._buf)
        while True:
            try:
                n, addr = self.sock.recvfrom_into(self._buf)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if addr[2] == PACKET_OUTGOING:
                continue
            if n < ETH_HEADER + RECORD:
                self.malformed += 1
                continue
            # BMv2 truncates the clone to header + record; anything past it is padding
            records.append(bytes(view[ETH_HEADER:ETH_HEADER + RECORD]))
        if records:
            self.writer.write_wire(b"".join(records))
        self.drops += kernel_drops(self.sock)
        return len(records)

    def run(self, stopping) -> None:
        """Until stopping() is true: wait for frames, append them, refresh the index."""
        next_index = time.monotonic() + INDEX_EVERY_S
        while not stopping():
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.2)
            except InterruptedError:
                continue
            if ready:
                self.drain()
            if time.monotonic() >= next_index:
                self.writer.flush()
                next_index = time.monotonic() + INDEX_EVERY_S
        self.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m topology.trace_capture",
        description="Append the trace records that BMv2 clones to its monitor port (frames of "
                    f"ethertype {TRACE_ETHERTYPE:#06x}) to a NINA trace file; stop with SIGTERM "
                    "or Ctrl-C (the index is written then).")
    p.add_argument("--iface", required=True, help="the interface the monitor port's frames "
                                                  "arrive on (peer of the BMv2 port)")
    p.add_argument("--out", required=True, help="trace file to write (e.g. RUN/switch.trace)")
    p.add_argument("--parent", type=int, default=0,
                   help="exit when this PID (the rack) is no longer our parent")
    args = p.parse_args(argv)
    from nina.procs import die_with_parent
    die_with_parent(args.parent or None)
    if not os.path.exists(f"/sys/class/net/{args.iface}"):
        print(f"trace_capture: no interface {args.iface}", file=sys.stderr)
        return 2
    try:
        sock = open_socket(args.iface)
    except PermissionError:
        print("trace_capture: a raw socket needs root (CAP_NET_RAW)", file=sys.stderr)
        return 2
    stop = []

    def on_signal(signum, _frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The writer is opened (and its empty index written) only once the socket is bound: the
    # rack waits for the index file before it lets the switch send anything.
    with TraceWriter(args.out) as writer:
        writer.flush()
        print(f"trace_capture: {args.iface} -> {args.out}", flush=True)
        cap = Capture(sock, writer)
        cap.run(lambda: bool(stop))
    sock.close()
    print(f"trace_capture: {writer.count} records"
          + (f", {cap.malformed} short frames ignored" if cap.malformed else "")
          + (f", {cap.drops} frames LOST (socket buffer full)" if cap.drops else ""), flush=True)
    return 1 if cap.drops else 0


if __name__ == "__main__":
    sys.exit(main())
