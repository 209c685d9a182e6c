"""Batched datagram I/O: Linux recvmmsg/sendmmsg over rows of a preallocated numpy buffer.

Python's socket module moves one datagram per call; at the packet rates of an emulated rack
the syscall per packet, not the work, is the cost. Here one call moves up to a whole batch:
row i of a 2-D uint8 array is message i's buffer, its length and address live in numpy arrays
beside it, and the kernel's mmsghdr/iovec/sockaddr arrays are numpy structured arrays filled
vectorised, so no Python runs per packet. Used by the switch (switch/io_udp.py, io_raw.py)
and the worker's transport alike, hence here beside the wire format.

Addresses are IPv4 (sockaddr_in) or, for AF_PACKET sockets, left unread (sockaddr_ll rows are
returned raw in `name`). The layouts below are those of Linux on 64-bit machines; `_check`
verifies them against ctypes at import.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket

import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int

MSG_DONTWAIT = int(socket.MSG_DONTWAIT)   # ints: an IntFlag's | costs a microsecond a call
MSG_TRUNC = int(socket.MSG_TRUNC)     # recv: msg_len is the datagram's real length
MSG_WAITFORONE = 0x10000              # recvmmsg: block for the first message only

IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
MMSGHDR = np.dtype({"names": ["name", "namelen", "iov", "iovlen", "control", "controllen",
                              "flags", "len"],
                    "formats": ["<u8", "<u4", "<u8", "<u8", "<u8", "<u8", "<i4", "<u4"],
                    "offsets": [0, 8, 16, 24, 32, 40, 48, 56], "itemsize": 64})
NAME_BYTES = 32   # room for a sockaddr_in (16) or sockaddr_ll (20)
SOCKADDR_IN = np.dtype({"names": ["family", "port", "addr"], "formats": ["<u2", ">u2", ">u4"],
                        "offsets": [0, 2, 4], "itemsize": NAME_BYTES})
_RETRY = (errno.EINTR,)
_SKIP = (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN, errno.EHOSTUNREACH,
         errno.ENETUNREACH, errno.EMSGSIZE)


def _check() -> None:
    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class Msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class Mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]

    assert ctypes.sizeof(Iovec) == IOVEC.itemsize
    assert ctypes.sizeof(Mmsghdr) == MMSGHDR.itemsize
    assert Mmsghdr.len.offset == MMSGHDR.fields["len"][1]
    assert Msghdr.flags.offset == MMSGHDR.fields["flags"][1]


_check()


class MsgRing:
    """`n` message slots of `width` bytes each: a receive batch, or a send batch whose rows
    may also point into another buffer (send_rows)."""

    def __init__(self, n: int, width: int):
        self.n, self.width = n, width
        self.buf = np.zeros((n, width), np.uint8)
        self.name = np.zeros(n, SOCKADDR_IN)
        self.iov = np.zeros(n, IOVEC)
        self.hdr = np.zeros(n, MMSGHDR)
        self.hdr["name"] = self.name.ctypes.data + np.arange(n, dtype=np.uint64) * NAME_BYTES
        self.hdr["iov"] = self.iov.ctypes.data + np.arange(n, dtype=np.uint64) * IOVEC.itemsize
        self.hdr["iovlen"] = 1
        self._own_rows = self.buf.ctypes.data + np.arange(n, dtype=np.uint64) * width
        self.lengths = self.hdr["len"]   # view: bytes of each received message
        # field views made once: a structured field lookup per call costs about a microsecond
        self._iov_base, self._iov_len = self.iov["base"], self.iov["len"]
        self.namelen = self.hdr["namelen"]
        self._hdr0 = self.hdr.ctypes.data   # taken once: .ctypes costs a microsecond a call

    # ---- receive ----------------------------------------------------------------------------

    def recv(self, fd: int, flags: int = MSG_WAITFORONE, count: int | None = None) -> int:
        """Receive up to `count` (all) datagrams into rows 0..; returns how many (0: none
        ready with MSG_DONTWAIT, or interrupted). lengths[i] is datagram i's real length when
        flags has MSG_TRUNC (the row holds its first `width` bytes). ECONNREFUSED (an ICMP
        error for an earlier send) is skipped."""
        m = self.n if count is None else min(count, self.n)
        self._iov_base[:m] = self._own_rows[:m]
        self._iov_len[:m] = self.width
        self.namelen[:m] = NAME_BYTES
        while True:
            got = _recvmmsg(fd, self._hdr0, m, flags, None)
            if got >= 0:
                return got
            e = ctypes.get_errno()
            if e in (errno.EAGAIN, errno.EINTR):
                return 0
            if e == errno.ECONNREFUSED:
                continue
            raise OSError(e, os.strerror(e))

    def sources(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(IPv4 address, UDP port) of received datagrams 0..m-1 as int64 arrays."""
        nm = self.name[:m]
        return nm["addr"].astype(np.int64), nm["port"].astype(np.int64)

    # ---- send -------------------------------------------------------------------------------

    def send_rows(self, fd: int, rows: np.ndarray, lengths, m: int, ip=None, port=None,
                  index: np.ndarray | None = None) -> tuple[int, int]:
        """Send rows[0..m-1][:lengths[i]] (rows: a C-contiguous 2-D uint8 array; with `index`,
        rows[index[0..m-1]] instead), each to
        (ip[i], port[i]) (scalars or arrays; None: the socket's connected peer or, for
        AF_PACKET, the bound interface). Returns (sent, failed): a datagram the kernel refuses
        with a transient error (no buffer, ICMP refusal) is counted failed and skipped, as a
        lost packet; retransmission covers it."""
        sent = failed = 0
        stride = rows.strides[0]
        base = rows.ctypes.data
        while sent + failed < m:
            lo = sent + failed
            k = min(m - lo, self.n)
            sel = np.arange(lo, lo + k, dtype=np.uint64) if index is None else \
                index[lo:lo + k].astype(np.uint64)
            self.iov["base"][:k] = base + sel * np.uint64(stride)
            self.iov["len"][:k] = lengths[lo:lo + k] if np.ndim(lengths) else lengths
            if ip is None:
                self.hdr["namelen"][:k] = 0
            else:
                nm = self.name[:k]
                nm["family"] = socket.AF_INET
                nm["addr"] = ip[lo:lo + k] if np.ndim(ip) else ip
                nm["port"] = port[lo:lo + k] if np.ndim(port) else port
                self.hdr["namelen"][:k] = 16
            got = _sendmmsg(fd, self.hdr.ctypes.data, k, 0)
            if got > 0:
                sent += got
                continue
            e = ctypes.get_errno()
            if got == 0 or e in _RETRY:
                continue
            if e in _SKIP:
                failed += 1
                continue
            raise OSError(e, os.strerror(e))
        return sent, failed
