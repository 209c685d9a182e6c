"""UDP in big batches on loopback: GSO sends (UDP_SEGMENT) and GRO receives (UDP_GRO).

recvmmsg/sendmmsg (nina.mmsg) save the syscall per packet but not the kernel's work per
packet (an skb, a trip through the loopback device, a socket queue entry), and at the rates
of an emulated rack that work is the floor. Linux can move many datagrams as one: a sendmsg
with a UDP_SEGMENT control message hands the kernel one buffer that it cuts into segments of
the given size (the last may be shorter), and a socket with UDP_GRO on receives such a send
whole, with the segment size in a control message. On loopback the segmented send is never
cut on the way, so a window of packets costs one skb end to end.

Two classes serve the switch's loopback I/O (switch/io_udp.py) and the worker's transport
(worker/transport.py) alike:
- BatchTx.send_rows: the packets of a batch grouped per destination (runs of one size, the
  last may be shorter; at most MAX_SEGMENTS and MAX_PAYLOAD bytes a send), each group one
  sendmsg with UDP_SEGMENT, all of them in one sendmmsg. The grouping is compiled (nina.jit),
  and the iovecs point into the caller's rows, so nothing is copied and no Python runs per
  packet. Only loopback destinations (127/8) get segmented sends: a packet socket on a
  veth (the raw-interface switch, BMv2, tcpdump) would see one oversized frame. Unless
  NINA_UDP_SEGMENT_TO=any: the Mininet rack says so to its hosts when whatever reads frames
  on the path takes segmented sends whole (its bandwidth-only links: the embedded switch's
  `--rx-gso` rings cut them into datagrams), so one window is one skb through the host's
  stack, its shaper, the link node's bridge and the switch's receive ring.
- BatchRx.recv: one recvmmsg of whole GRO buffers (64 KiB each), split back into one row per
  datagram (compiled), with each datagram's length and source, in chunks of `rows`.

Where the kernel refuses the options (setsockopt fails, or a segmented send is refused) the
same classes fall back to plain recvmmsg/sendmmsg, with one line on stderr. NINA_UDP_IO=mmsg
asks for that fallback from the start (benchmarks compare the two; a user can rule the
batching out when chasing a problem).
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys

import numpy as np

from nina.jit import njit, njit_typed
from nina.mmsg import _RETRY, _SKIP, IOVEC, MMSGHDR, MSG_TRUNC, NAME_BYTES, MsgRing, _sendmmsg

SOL_UDP = 17
UDP_SEGMENT = 103             # linux/udp.h: segment size of a send (u16 cmsg or sockopt)
UDP_GRO = 104                 # linux/udp.h: receive segmented sends whole (int cmsg: size)
MAX_SEGMENTS = 128            # UDP_MAX_SEGMENTS of recent kernels; older ones: 64 (adapted)
OLD_MAX_SEGMENTS = 64
MAX_PAYLOAD = 0xFFFF - 20 - 8  # bytes of one UDP/IPv4 datagram, hence of one segmented send
GRO_BUFFER = 1 << 16          # a receive buffer holds any datagram or GRO buffer whole
ENV = "NINA_UDP_IO"
MODES = ("gso", "mmsg")
SEGMENT_ENV = "NINA_UDP_SEGMENT_TO"   # where segmented sends may go: loopback (default) or any
SEGMENT_TARGETS = ("loopback", "any")
_CMSG_LEN_U16 = 16 + 2        # CMSG_LEN(sizeof(u16)): the kernel wants exactly this
_CTRL_WORDS = 3               # CMSG_SPACE(sizeof(u16)) = 24 bytes per send
_AF_INET = int(socket.AF_INET)
_IOV_BYTES = IOVEC.itemsize
_RX_CTRL = 64                 # receive control buffer per message (one int cmsg needs 24)
_GSO_REFUSED = (errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT)
_said: set[str] = set()

CMSG_IN = np.dtype({"names": ["len", "level", "type", "size"],
                    "formats": ["<u8", "<i4", "<i4", "<i4"], "offsets": [0, 8, 12, 16],
                    "itemsize": _RX_CTRL})


def io_mode() -> str:
    """'gso' (default) or 'mmsg' from $NINA_UDP_IO; a bad value is an error, not a guess."""
    v = os.environ.get(ENV, "").strip().lower() or "gso"
    if v not in MODES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 'gso' (GRO/GSO batches, the "
                         f"default) or 'mmsg' (recvmmsg/sendmmsg only)")
    return v


def segment_any() -> bool:
    """Whether $NINA_UDP_SEGMENT_TO lets segmented sends go to any destination (a bad value
    is an error)."""
    v = os.environ.get(SEGMENT_ENV, "").strip().lower() or "loopback"
    if v not in SEGMENT_TARGETS:
        raise ValueError(f"{SEGMENT_ENV}={os.environ[SEGMENT_ENV]!r}: expected 'loopback' "
                         f"(segmented sends to 127/8 only, the default) or 'any'")
    return v == "any"


def _say_once(key: str, msg: str) -> None:
    if key not in _said:
        _said.add(key)
        print(f"nina: {msg}", file=sys.stderr, flush=True)


def enable_gro(sock: socket.socket) -> bool:
    """Turn UDP_GRO on; False (said once) where the kernel refuses it."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError as e:
        _say_once("gro", f"UDP_GRO refused ({e.strerror}): receiving with recvmmsg")
        return False


def gso_available(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT (setting the socket default 0 changes nothing)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
        return True
    except OSError as e:
        _say_once("gso", f"UDP_SEGMENT refused ({e.strerror}): sending with sendmmsg")
        return False


# ---- compiled halves: grouping a send batch, splitting a receive batch -------------------

@njit
def plan_sends(k, addr, length, ip, port, named, gso, any_dest, max_segs, hdr, iov, name,
               ctrl, name_base, iov_base, ctrl_base, npk, first, order):
    """Group packets 0..k-1 (buffer address, length, destination) into messages: hdr rows
    (MMSGHDR as 8 words), their iovecs (one per packet, in message order), names and UDP_SEGMENT
    control words. A message is a run to one loopback destination (any_dest: to one
    destination) of packets of one size,
    the last maybe shorter, at most max_segs of them and MAX_PAYLOAD bytes; with gso off (or
    another destination) a packet is a message of its own. order[t] is the packet behind
    iovec t, npk/first each message's packet count and first iovec. Returns the messages."""
    keys = np.empty(k, np.int64)   # destination (48 bits) then 0xFFFF - length; may wrap
    for i in range(k):
        d = ((np.int64(ip[i]) & 0xFFFFFFFF) << 16) | (np.int64(port[i]) & 0xFFFF) if named \
            else np.int64(0)
        ln = min(max(np.int64(length[i]), 0), 0xFFFF)
        keys[i] = (d << 16) | (0xFFFF - ln)   # a destination's longest first
    srt = np.argsort(keys, kind="mergesort")   # stable: a destination's order is kept
    nmsg = 0
    i = 0
    while i < k:
        p = srt[i]
        seg = np.int64(length[p])
        dst = keys[p] >> 16
        j = i + 1
        if gso and named and seg > 0 and (any_dest or (np.int64(ip[p]) >> 24) == 127):
            total = seg
            while j < k and j - i < max_segs:
                q = srt[j]
                lq = np.int64(length[q])
                if keys[q] >> 16 != dst or lq <= 0 or total + lq > MAX_PAYLOAD:
                    break
                total += lq
                j += 1
                if lq < seg:   # a shorter one can only be the last segment
                    break
        for t in range(i, j):
            q = srt[t]
            order[t] = q
            iov[t, 0] = addr[q]
            iov[t, 1] = length[q]
        h = hdr[nmsg]
        if named:
            h[0] = name_base + np.uint64(NAME_BYTES * nmsg)
            h[1] = 16
            a = np.int64(ip[p]) & 0xFFFFFFFF
            pt = np.int64(port[p]) & 0xFFFF
            nm = name[nmsg]   # sockaddr_in: family (host order), port and address big-endian
            nm[0] = _AF_INET
            nm[1] = 0
            nm[2] = pt >> 8
            nm[3] = pt & 0xFF
            nm[4] = (a >> 24) & 0xFF
            nm[5] = (a >> 16) & 0xFF
            nm[6] = (a >> 8) & 0xFF
            nm[7] = a & 0xFF
        else:
            h[0] = 0
            h[1] = 0
        h[2] = iov_base + np.uint64(_IOV_BYTES * i)
        h[3] = j - i
        if j - i > 1:
            c = ctrl[nmsg]
            c[0] = _CMSG_LEN_U16
            c[1] = np.uint64(SOL_UDP) | (np.uint64(UDP_SEGMENT) << np.uint64(32))
            c[2] = np.uint64(seg)
            h[4] = ctrl_base + np.uint64(8 * _CTRL_WORDS * nmsg)
            h[5] = _CMSG_LEN_U16
        else:
            h[4] = 0
            h[5] = 0
        h[6] = 0
        h[7] = 0
        npk[nmsg] = j - i
        first[nmsg] = i
        nmsg += 1
        i = j
    return nmsg


_STAGE_ARGS = ("int64, int64, int64[::1], int64[::1], int64, int64[::1], int64, int64[::1], "
               "int64, uint64[::1], int64[::1], int64[::1], int64[::1]")


@njit_typed(f"void(uint8[:, ::1], {_STAGE_ARGS})", f"void(uint8[:, :], {_STAGE_ARGS})")
def stage_rows(rows, lo, k, index, lengths, length, ip, ip_one, port, port_one, addr, lens,
               ips, ports):
    """Stage packets lo..lo+k-1 of a send_rows call for plan_sends: packet i is row index[i]
    (index empty: row i) of `rows`, lengths[i] bytes long (lengths empty: `length`), to
    (ip[i], port[i]) (empty: ip_one, port_one). One compiled pass for what took eight numpy
    operations a send; a row number outside rows is an IndexError, never a stray address."""
    base = np.uint64(rows.ctypes.data)
    stride = np.uint64(rows.strides[0])
    nrows = rows.shape[0]
    for t in range(k):
        i = lo + t
        r = index[i] if index.size else i
        if r < 0 or r >= nrows:
            raise IndexError("send_rows: a row number outside the rows")
        addr[t] = base + np.uint64(r) * stride
        lens[t] = lengths[i] if lengths.size else length
        ips[t] = ip[i] if ip.size else ip_one
        ports[t] = port[i] if port.size else port_one


@njit
def split_buffers(data, mlen, gsize, src_ip, src_port, m, state, rows, lens, ips, ports):
    """Cut received buffers 0..m-1 (mlen[j] bytes of data[j], segments of gsize[j] bytes, 0:
    one datagram) into rows, from buffer state[0], segment state[1] on, until rows are full.
    A row gets a datagram's first row-width bytes; lens its real length. Returns the rows
    filled and leaves state at the first segment not taken, and in state[2] the bytes of the
    datagrams in those rows (a receiver's byte count without a numpy sum per batch)."""
    j, s = state[0], state[1]
    n = nb = 0
    cap, width, dw = rows.shape[0], rows.shape[1], data.shape[1]
    while j < m:
        total = np.int64(mlen[j])
        g = np.int64(gsize[j])
        if g <= 0 or g > total:
            g = total
        nseg = 1 if total <= 0 else (total + g - 1) // g
        while s < nseg:
            if n == cap:
                state[0], state[1], state[2] = j, s, nb
                return n
            off = s * g
            sl = min(g, total - off)
            c = max(0, min(sl, width, dw - off))
            rows[n, :c] = data[j, off:off + c]
            lens[n] = sl
            nb += sl
            ips[n] = src_ip[j]
            ports[n] = src_port[j]
            n += 1
            s += 1
        j += 1
        s = 0
    state[0], state[1], state[2] = j, 0, nb
    return n


# ---- the classes ---------------------------------------------------------------------------

def _int64s(a, m: int) -> np.ndarray:
    """a (the first m entries are read) as a contiguous int64 array, the layout stage_rows
    is compiled for: no copy when it is one already."""
    a = np.ascontiguousarray(a, np.int64)
    if a.ndim != 1:
        a = a.reshape(-1)
    if a.size < m:
        raise ValueError(f"send_rows: {a.size} entries for {m} packets")
    return a


def _int64s_or_one(v, m: int) -> tuple[np.ndarray, int]:
    """A per-packet argument of send_rows as stage_rows takes it: (int64 array, 0), or, for
    a scalar, (an empty array, the scalar)."""
    if isinstance(v, (int, np.integer)) or \
            (isinstance(v, np.ndarray) and v.ndim == 0):   # (np.ndim costs 0.7 us a call)
        return _NONE, int(v)
    return _int64s(v, m), 0


_NONE = np.zeros(0, np.int64)


class BatchTx:
    """Batched sends of rows of a numpy array (GSO groups on loopback; sendmmsg otherwise)."""

    def __init__(self, sock: socket.socket, n: int, gso: bool | None = None):
        self.sock, self.n = sock, n
        if gso is None:
            gso = io_mode() == "gso"
        self.gso = bool(gso) and gso_available(sock)
        self.any_dest = self.gso and segment_any()
        self.max_segs = MAX_SEGMENTS
        self.messages = 0     # sendmsg payloads handed to the kernel (a group counts once)
        self.hdr = np.zeros(n, MMSGHDR)
        self.iov = np.zeros(n, IOVEC)
        self.name = np.zeros((n, NAME_BYTES), np.uint8)
        self.ctrl = np.zeros((n, _CTRL_WORDS), np.uint64)
        self._hw = self.hdr.view(np.uint64).reshape(n, 8)
        self._iw = self.iov.view(np.uint64).reshape(n, 2)
        self.npk = np.zeros(n, np.int64)
        self.first = np.zeros(n, np.int64)
        self.order = np.zeros(n, np.int64)
        self._addr = np.zeros(n, np.uint64)
        self._len = np.zeros(n, np.int64)
        self._ip = np.zeros(n, np.int64)
        self._port = np.zeros(n, np.int64)
        # addresses of the fixed buffers, taken once (.ctypes costs a microsecond a call)
        self._hdr0 = self.hdr.ctypes.data
        self._name0, self._iov0, self._ctrl0 = (np.uint64(a.ctypes.data)
                                                for a in (self.name, self.iov, self.ctrl))

    def send_rows(self, rows: np.ndarray, lengths, m: int, ip=None, port=None,
                  index: np.ndarray | None = None) -> tuple[int, int]:
        """Send rows[i][:lengths[i]] for i < m (with `index`: rows[index[i]]) to (ip[i],
        port[i]) (scalars or arrays; None: the connected peer). Returns (sent, failed)
        packets; one the kernel refuses for a transient reason (no buffer, an ICMP refusal)
        is counted failed and skipped, as a lost packet: retransmission covers it."""
        sent = failed = 0
        named = ip is not None
        index = _NONE if index is None else _int64s(index, m)
        lengths, length = _int64s_or_one(lengths, m)
        ip, ip_one = _int64s_or_one(ip, m) if named else (_NONE, 0)
        port, port_one = _int64s_or_one(port, m) if named else (_NONE, 0)
        for lo in range(0, m, self.n):
            k = min(m - lo, self.n)
            stage_rows(rows, lo, k, index, lengths, length, ip, ip_one, port, port_one,
                       self._addr, self._len, self._ip, self._port)
            s, f = self._send(k, named)
            sent += s
            failed += f
        return sent, failed

    def _send(self, k: int, named: bool) -> tuple[int, int]:
        nmsg = plan_sends(k, self._addr, self._len, self._ip, self._port, named, self.gso,
                          self.any_dest, self.max_segs, self._hw, self._iw, self.name, self.ctrl,
                          self._name0, self._iov0, self._ctrl0, self.npk, self.first,
                          self.order)
        fd, hdr0 = self.sock.fileno(), self._hdr0
        sent = failed = lo = 0
        while lo < nmsg:
            got = _sendmmsg(fd, hdr0 + lo * MMSGHDR.itemsize, nmsg - lo, 0)
            if lo == 0 and got == nmsg:   # the usual case: every message in one call
                self.messages += got
                return k, 0
            if got > 0:
                sent += int(self.npk[lo:lo + got].sum())
                self.messages += got
                lo += got
                continue
            e = ctypes.get_errno()
            if got == 0 or e in _RETRY:
                continue
            if self.npk[lo] > 1 and e in _GSO_REFUSED:
                # a segmented send refused: fewer segments (an older kernel's limit) or none
                if self.npk[lo] > OLD_MAX_SEGMENTS and self.max_segs > OLD_MAX_SEGMENTS:
                    self.max_segs = OLD_MAX_SEGMENTS
                else:
                    self.gso = False
                    _say_once("gso-send", f"segmented UDP send refused "
                                          f"({os.strerror(e)}): sending with sendmmsg")
                rest = self.order[self.first[lo]:k].copy()
                self._addr[:len(rest)] = self._addr[rest]
                self._len[:len(rest)] = self._len[rest]
                self._ip[:len(rest)] = self._ip[rest]
                self._port[:len(rest)] = self._port[rest]
                s, f = self._send(len(rest), named)
                return sent + s, failed + f
            if e in _SKIP:   # as sendmmsg of single datagrams does (nina.mmsg)
                failed += int(self.npk[lo])
                lo += 1
                continue
            raise OSError(e, os.strerror(e))
        return sent, failed


class BatchRx:
    """Batched receives into `rows` rows of `width` bytes: rows[i] holds datagram i's first
    width bytes, lengths[i] its real length, ips/ports[i] its source (int64 arrays).

    recv() takes what is queued (one recvmmsg: up to `msgs` GRO buffers, or `rows` datagrams
    without GRO) and returns how many datagrams are in the rows; more() the next rows of the
    same receive (a GRO receive may hold more datagrams than rows), 0 once all are out."""

    def __init__(self, sock: socket.socket, rows: int, width: int, msgs: int = 64,
                 gro: bool | None = None):
        self.sock = sock
        if gro is None:
            gro = io_mode() == "gso"
        self.gro = bool(gro) and enable_gro(sock)
        self.messages = 0    # receive buffers taken from the kernel
        if self.gro:
            self._ring = MsgRing(msgs, GRO_BUFFER)
            self._ctl = np.zeros(msgs, CMSG_IN)
            self._ring.hdr["control"] = self._ctl.ctypes.data + \
                np.arange(msgs, dtype=np.uint64) * _RX_CTRL
            self._controllen = self._ring.hdr["controllen"]
            self._cmsg = (self._ctl["level"], self._ctl["type"], self._ctl["size"])
            self._names = self._ring.name.view(np.uint8).reshape(msgs, -1)
            self.rows = np.zeros((rows, width), np.uint8)
        else:
            self._ring = MsgRing(rows, width)
            self.rows = self._ring.buf
        self.lengths = np.zeros(rows, np.int64)
        self.ips = np.zeros(rows, np.int64)
        self.ports = np.zeros(rows, np.int64)
        self._m = 0
        self._state = np.zeros(3, np.int64)   # split_buffers': buffer, segment, bytes
        self._gsize = np.zeros(msgs if self.gro else 1, np.int64)
        self._mlen = np.zeros(msgs if self.gro else 1, np.int64)
        self._sip = np.zeros(msgs if self.gro else 1, np.int64)
        self._sport = np.zeros(msgs if self.gro else 1, np.int64)

    @property
    def pending(self) -> bool:
        """Datagrams of the last receive not handed out yet."""
        return self.gro and self._state[0] < self._m

    def recv(self, flags: int) -> int:
        """One recvmmsg with `flags` (MSG_WAITFORONE to block for the first, MSG_DONTWAIT
        not to); returns the datagrams now in rows (0: none ready, or interrupted)."""
        ring = self._ring
        if self.gro:
            self._controllen[:] = _RX_CTRL
        m = ring.recv(self.sock.fileno(), flags | MSG_TRUNC)
        self.messages += m
        if not self.gro:
            self.lengths[:m] = ring.lengths[:m]
            self.ips[:m], self.ports[:m] = ring.sources(m)
            self._state[2] = ring.lengths[:m].sum() if m else 0
            return m
        _gro_meta(m, self._controllen, *self._cmsg, ring.lengths, self._names, self._gsize,
                  self._mlen, self._sip, self._sport, self._state)
        self._m = m
        return self.more()

    @property
    def nbytes(self) -> int:
        """Bytes (real lengths) of the datagrams the last recv or more put in the rows."""
        return int(self._state[2])

    def more(self) -> int:
        """The next datagrams of the last receive (0: none left)."""
        if not self.pending:
            return 0
        return split_buffers(self._ring.buf, self._mlen, self._gsize, self._sip, self._sport,
                             self._m, self._state, self.rows, self.lengths, self.ips,
                             self.ports)


@njit
def _gro_meta(m, controllen, level, ctype, size, lengths, names, gsize, mlen, sip, sport,
              state):
    """Per GRO buffer of a receive: its segment size (0: no UDP_GRO control message, one
    datagram), length and source (sockaddr_in: port and address big-endian at bytes 2 and
    4); one compiled pass instead of a numpy operation per field."""
    for i in range(m):
        ok = controllen[i] >= 20 and level[i] == SOL_UDP and ctype[i] == UDP_GRO
        gsize[i] = size[i] if ok else 0
        mlen[i] = lengths[i]
        nm = names[i]
        sport[i] = (np.int64(nm[2]) << 8) | np.int64(nm[3])
        sip[i] = (np.int64(nm[4]) << 24) | (np.int64(nm[5]) << 16) | (np.int64(nm[6]) << 8) | \
            np.int64(nm[7])
    state[0] = 0
    state[1] = 0


def _warm() -> None:
    """Load (on a machine's first run: compile) both halves at import, so no first packet
    waits for the compiler (a worker's retransmission timers would take it for loss)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        tx = BatchTx(s, 1, gso=False)
        tx._send(0, True)
        rx = BatchRx(s, 1, 8, msgs=1, gro=False)
        ctl, hdr = np.zeros(2, CMSG_IN), np.zeros(2, MMSGHDR)   # strided, as recv passes them
        _gro_meta(0, hdr["controllen"], ctl["level"], ctl["type"], ctl["size"], hdr["len"],
                  np.zeros((1, NAME_BYTES), np.uint8), rx._gsize, rx._mlen, rx._sip,
                  rx._sport, rx._state)
        split_buffers(np.zeros((1, 8), np.uint8), rx._mlen, rx._gsize, rx._sip, rx._sport, 0,
                      rx._state, rx.rows, rx.lengths, rx.ips, rx.ports)


_warm()
