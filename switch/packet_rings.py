"""PACKET_MMAP rings for the raw-interface switch: a receive ring and a TX ring per port.

recvmmsg/sendmmsg still copy every frame through a syscall's iovec and allocate a socket
buffer per frame on the receive side. With a ring the kernel writes received frames straight
into memory this process has mapped, and reads frames to send from another mapped area; the
process only makes a syscall to sleep (poll) and to start transmission (one send() per batch).
Both rings are numpy arrays over the mmap, walked by compiled loops (nina.jit), so no Python
runs per frame.

Receive (`RxRing`), in one of two layouts:
- TPACKET_V2 (the default, switch.raw_io_options.RING_VERSION): fixed 2 KiB slots, a frame
  each (tpacket2_hdr, sockaddr_ll, the frame); the kernel hands each slot over as soon as the
  frame is in it (status TP_STATUS_USER) and wakes poll() at once.
- TPACKET_V3: blocks of frames packed back to back (tpacket3_hdr each); the kernel hands a
  whole block over when it is full or RETIRE_MS after it opened. Denser (400 bytes an
  update instead of 2 KiB) and one wake-up per block, but a frame that does not fill a block
  waits for the block timer: bench/switch_ifaces.py measured a round trip of one update at
  ~950 us on V3 against 46-105 us on V2 (the same as on recvmmsg), and the rack's clients are a
  closed loop (a result frees a slot for the next update), so V3 would cap a window at one
  round per millisecond. Under load (a drain) both rates are alike. Hence V2 by default;
  `nina switch --io ring-v3` selects V3.
Either way `take` copies the frames handed over into the switch's receive rows (a frame row
each, as the pipeline reads them) and then gives the slots or blocks back (TP_STATUS_KERNEL) in
a separate compiled call, so the copies are done before the kernel may write there again.

Transmit (TPACKET_V2 frames, `TxRing`, on a second socket bound with protocol 0, so it receives
nothing): `frame_nr` slots of `TX_FRAME` bytes, each a tpacket2_hdr then the frame at
TX_DATA_AT. `put` copies frames into free slots (status TP_STATUS_AVAILABLE) in ring order and
sets their length; `commit` (again a separate call, after the copies) marks them
TP_STATUS_SEND_REQUEST; `kick` is the one send() that makes the kernel transmit every
requested slot, through the interface's qdisc (the rack shapes switch ports with HTB, so no
PACKET_QDISC_BYPASS). A slot becomes free again when the kernel has freed the frame's buffer,
i.e. after the qdisc let it out; PACKET_LOSS makes the kernel skip a malformed frame instead of
stopping the ring. A ring made with segments > 1 has PACKET_VNET_HDR and TX_GSO_FRAME slots:
each frame there starts with a virtio_net_hdr, and `send(group=True)` puts up to `segments`
consecutive frames of one UDP flow and length into one slot as a GSO frame
(switch.packets.put_vnet_frame). The kernel cuts it into datagrams at the first device that
cannot carry it whole (software GSO, checksums completed), so every receiver gets datagrams;
veths with tx-udp-segmentation carry it whole to a UDP_GRO socket, which takes it in one
receive. Every qdisc on the way counts its datagrams' bytes and headers (qdisc_pkt_len).

Ring sizing (per switch port; the kernel allocates it, unswappable, when the ring is set up):
- receive: DEFAULT_RX_MIB (4 MiB). TPACKET_V2: 2048 slots of 2 KiB (a 1514-byte frame behind
  its 80 header bytes fits), so 2048 frames queued per port: 8x a window of 256 updates of one
  worker. TPACKET_V3: 256 blocks of 16 KiB; an update takes 400 bytes of a block, so about
  10,400 updates, but at rates below a block per RETIRE_MS (41 updates per ms) each block
  holds less and the ring then holds 256 ms of traffic (which matters only when the switch
  stalls, e.g. a paused bench server). Small blocks give many blocks per MiB and a short fill
  time under load; one `take` walks across blocks, so the pipeline's batch is not limited by
  the block size. `--ring-mib` scales either.
- transmit: TX_FRAMES (2048) slots of 2 KiB (a full 1514-byte frame fits) = 4 MiB: more than
  the default 1000-frame queue of a shaped port's qdisc, so frames waiting in HTB do not starve
  the ring before the qdisc itself would drop.
The socket's send buffer (SO_SNDBUFFORCE, TX_SNDBUF) is raised with it: sent frames are charged
to it until freed.

Layouts are those of <linux/if_packet.h> on 64-bit Linux; frames are read little-endian
(x86/arm64 hosts). Anything the kernel refuses raises RingUnavailable with the reason; the
caller (switch.io_raw) then falls back to recvmmsg/sendmmsg.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct

import numpy as np

from nina.jit import copy_bytes, njit
from nina.wire import IPV4_MIN_LEN, UDP_LEN
from switch.packets import (FRAME_HEAD, VNET_GSO_NONE, VNET_GSO_UDP_L4, VNET_HDR_LEN,
                            VNET_NEEDS_CSUM, cut_udp_gso, pending_checksum, plain_udp_frame,
                            put_vnet_frame, same_udp_flow)
from switch.raw_io_options import DEFAULT_RX_MIB

SOL_PACKET = 263
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION, PACKET_TX_RING = 5, 6, 10, 13
PACKET_LOSS, PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING = 14, 15, 23
TPACKET_V2, TPACKET_V3 = 1, 2
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST, TP_STATUS_SENDING, TP_STATUS_WRONG_FORMAT = \
    0, 1, 2, 4
_SO_SNDBUFFORCE = 32
_SO_ATTACH_FILTER = 26

# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1's block_status, num_pkts,
# offset_to_first_pkt (u32 words 2, 3, 4).
_BLK_STATUS, _BLK_NUM, _BLK_FIRST = 2, 3, 4
# tpacket3_hdr (48 bytes): tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status
# (u32 words 0..5), tp_mac (u16 at byte 24); the sockaddr_ll follows at byte 48.
_H3_NEXT, _H3_SNAP, _H3_LEN, _H3_MAC = 0, 3, 4, 24
_H3_PKTTYPE = 48 + 10
# tpacket2_hdr (32 bytes): tp_status, tp_len (u32 words 0, 1); a TX frame's data at byte 32
# (TPACKET2_HDRLEN - sizeof(sockaddr_ll), as the kernel reads it without PACKET_TX_HAS_OFF).
TX_DATA_AT = 32

BLOCK_SIZE = 16 << 10        # receive block (see the sizing above)
TX_BLOCK = 64 << 10          # transmit slots are allocated 32 to a block
RETIRE_MS = 1                 # the shortest the kernel's block timer takes
RX_FRAME_LIMIT = 4096         # largest frame slot in a block (frames beyond are cut)
TX_FRAME = 2048
TX_FRAMES = 2048
TX_GSO_FRAME = 8192          # a slot of a GSO ring: a frame of up to 15 full-size datagrams
TX_SNDBUF = 32 << 20
TX_WAIT_US = 50_000          # a kick waiting for a full ring gives up after this


class RingUnavailable(OSError):
    """The kernel refused a ring (old kernel, no memory, not permitted): use the fallback."""


def length_filter(sock: socket.socket, limit: int, longer: bool) -> None:
    """Attach a classic BPF filter: the socket gets only frames longer than `limit` bytes
    (longer) or only the others. Before bind, so no frame slips in unfiltered."""
    ret_keep, ret_drop = (0x06, 0, 0, 0xFFFFFFFF), (0x06, 0, 0, 0)
    prog = [(0x80, 0, 0, 0),                                  # A = frame length
            (0x25, 0, 1, limit),                              # A > limit ? next : skip one
            ret_keep if longer else ret_drop,
            ret_drop if longer else ret_keep]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as e:
        raise RingUnavailable(e.errno, f"SO_ATTACH_FILTER: {e.strerror}") from None


def _setsockopt(sock: socket.socket, opt: int, value, what: str) -> None:
    try:
        sock.setsockopt(SOL_PACKET, opt, value)
    except OSError as e:
        raise RingUnavailable(e.errno, f"{what}: {e.strerror}") from None


def _map(sock: socket.socket, size: int, what: str) -> mmap.mmap:
    try:
        return mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as e:
        raise RingUnavailable(e.errno, f"mmap of the {what}: {e.strerror}") from None


# ---------------------------------------------------------------- receive (TPACKET_V3)

@njit
def _rx_take(ring, words, state, n_blocks, block_size, rows, lens, pkttype, cap):
    """Copy up to `cap` frames of handed-over blocks into rows 0..; returns how many.
    state: [block, frames of it taken, byte offset of its next frame, blocks to release,
    first block to release]. A block all of whose frames are taken is left for _rx_release."""
    width = rows.shape[1]
    m = 0
    while m < cap:
        b = state[0]
        base = b * block_size
        wb = base >> 2
        if words[wb + _BLK_STATUS] & TP_STATUS_USER == 0:
            break
        num = np.int64(words[wb + _BLK_NUM])
        if state[1] == 0:
            state[2] = np.int64(words[wb + _BLK_FIRST])
        while state[1] < num and m < cap:
            p = base + state[2]
            wp = p >> 2
            snap = np.int64(words[wp + _H3_SNAP])
            mac = p + (np.int64(ring[p + _H3_MAC]) | (np.int64(ring[p + _H3_MAC + 1]) << 8))
            k = snap if snap < width else width
            copy_bytes(rows[m], 0, ring, mac, k)
            lens[m] = np.int64(words[wp + _H3_LEN])
            pkttype[m] = ring[p + _H3_PKTTYPE]
            m += 1
            state[1] += 1
            state[2] += np.int64(words[wp + _H3_NEXT])
        if state[1] >= num:   # block done: release it later, move on
            if state[3] == 0:
                state[4] = b
            state[3] += 1
            state[0] = (b + 1) % n_blocks
            state[1] = 0
    return m


@njit
def _set_status(words, first, count, n, stride, offset, status):
    """Write `status` into the status word (`offset` words into each) of `count` ring entries
    of `stride` bytes from entry `first` on, wrapping at `n`: how a block or slot changes hands
    between the kernel and us, on every ring."""
    e = first
    for _ in range(count):
        words[((e * stride) >> 2) + offset] = status
        e = (e + 1) % n


@njit
def _rx_release(words, state, n_blocks, block_size):
    """Hand the blocks _rx_take finished back to the kernel."""
    _set_status(words, state[4], state[3], n_blocks, block_size, _BLK_STATUS,
                TP_STATUS_KERNEL)
    state[3] = 0


# tpacket2_hdr (32 bytes): tp_status, tp_len, tp_snaplen (u32 words 0..2), tp_mac (u16 at
# byte 12); the sockaddr_ll follows at byte 32.
_H2_LEN, _H2_SNAP, _H2_MAC, _H2_PKTTYPE = 1, 2, 12, 32 + 10
RX2_FRAME = 2048              # a TPACKET_V2 receive slot: a 1514-byte frame behind 80 bytes


@njit
def _rx2_release(words, state, n_frames, frame_size):
    """Hand the slots _rx2_take copied back to the kernel."""
    _set_status(words, state[1], state[2], n_frames, frame_size, 0, TP_STATUS_KERNEL)
    state[2] = 0


# Receive rings with PACKET_VNET_HDR (RxRing(gso=True)): each frame is behind a
# virtio_net_hdr (little-endian flags, gso_type, hdr_len, gso_size, csum_start, csum_offset),
# and a UDP GSO frame from a sender whose devices all pass them comes whole, up to 64 KiB.
# Slots that big for every frame would take 34x the memory of today's 2 KiB slots, so a port
# has two rings (switch.io_raw): its 2 KiB-slot ring takes frames up to RX_SMALL_LIMIT bytes
# (every frame of an MTU-1500 link, small GSO frames), and a ring of RX_GSO_SLOTS slots of
# RX_GSO_FRAME bytes (at DEFAULT_RX_MIB) takes the longer ones, each socket told by a filter
# on the frame's length (length_filter). A GSO frame carries at least 2 datagrams, so a
# worker's window of 64 updates is at most 32 such frames in flight.
RX_GSO_FRAME = 17 << 12       # 69632: a 65535-byte IP packet, its Ethernet header and ours
RX_GSO_SLOTS = 64
RX_SMALL_LIMIT = 1920         # a 2 KiB slot holds the frame behind 76 bytes of headers: 1972
GSO_ROWS_MAX = 128            # datagrams in a GSO frame at most (the kernel's UDP_MAX_SEGMENTS):
                              # a take given this many rows always has room for one frame
# state words of the vnet ring beyond _rx2_take's three: GSO frames cut, frames dropped
# (a GSO kind or frame cut_udp_gso cannot cut, or one cut short by its slot)
_S_GSO, _S_BAD = 3, 4
_NO_CSUM = np.zeros(1, np.int64)   # take's csum on a ring without PACKET_VNET_HDR (never written)


@njit
def _u16le(ring, at):
    return np.int64(ring[at]) | (np.int64(ring[at + 1]) << 8)


@njit
def _rx2_take(ring, words, state, n_frames, frame_size, rows, lens, pkttype, cap, vnet, csum):
    """TPACKET_V2: copy up to `cap` frames whose slot the kernel handed over (TP_STATUS_USER)
    into rows 0..; state: [next slot, first slot to release, slots to release, and (vnet)
    _S_GSO, _S_BAD]. vnet (a ring with PACKET_VNET_HDR): a UDP GSO frame becomes a row per
    datagram (switch.packets.cut_udp_gso), left in its slot for the next call if the rows run
    out, and a frame whose checksum the sender left to an offload gets csum[row] set (see
    switch.packets.pending_checksum), others 0; without vnet csum is not touched."""
    width = rows.shape[1]
    if state[2] == 0:
        state[1] = state[0]
    m = 0
    while m < cap:
        f = state[0]
        base = f * frame_size
        w = base >> 2
        if words[w] & TP_STATUS_USER == 0:
            break
        snap = np.int64(words[w + _H2_SNAP])
        n = np.int64(words[w + _H2_LEN])
        mac = base + _u16le(ring, base + _H2_MAC)
        v = mac - VNET_HDR_LEN
        kind = ring[base + _H2_PKTTYPE]
        gso = ring[v + 1] if vnet else VNET_GSO_NONE
        if gso != VNET_GSO_NONE:
            k = -2
            if gso == VNET_GSO_UDP_L4 and snap == n:
                k = cut_udp_gso(ring[mac:mac + n], n, _u16le(ring, v + 4), rows, lens, csum,
                                m, cap)
            if k == -1 and cap - m < GSO_ROWS_MAX:
                break   # not enough rows left in this batch: the next one takes it
            if k < 0:
                state[_S_BAD] += 1
            else:
                for j in range(k):
                    pkttype[m + j] = kind
                m += k
                state[_S_GSO] += 1
        else:
            k = snap if snap < width else width
            copy_bytes(rows[m], 0, ring, mac, k)
            lens[m] = n
            pkttype[m] = kind
            if vnet:
                csum[m] = 0
                if ring[v] & VNET_NEEDS_CSUM:
                    start = _u16le(ring, v + 6)
                    csum[m] = pending_checksum(start, start + _u16le(ring, v + 8))
            m += 1
        state[0] = (f + 1) % n_frames
        state[2] += 1
    return m


class RxRing:
    """A receive ring on `sock` (an AF_PACKET socket not bound yet): TPACKET_V3 blocks
    (version 3) or TPACKET_V2 frame slots (version 2, see switch.io_raw for the choice).
    gso (version 2 only): PACKET_VNET_HDR, so UDP GSO frames are cut into a row per datagram
    here (_rx2_take), and frames whose checksum their sender left to an offload say so
    (take's csum); big: RX_GSO_FRAME slots, which hold a GSO frame of 64 KiB whole."""

    def __init__(self, sock: socket.socket, mib: int = DEFAULT_RX_MIB,
                 block_size: int = BLOCK_SIZE, version: int = 3, gso: bool = False,
                 big: bool = False):
        if mib * (1 << 20) < block_size:
            raise ValueError(f"receive ring of {mib} MiB is smaller than one {block_size}-byte "
                             f"block")
        if version not in (2, 3):
            raise ValueError(f"TPACKET version must be 2 or 3, got {version!r}")
        if (gso or big) and version != 2:
            raise ValueError("a receive ring that takes GSO frames whole is TPACKET_V2")
        if big and not gso:
            raise ValueError("a ring of GSO-sized slots is a gso ring")
        self.version = version
        self.gso = gso
        self.block_size = block_size
        self.n_blocks = (mib << 20) // block_size
        self.frame_size = RX2_FRAME
        if big:   # a slot per block: V2 slots may not straddle blocks, and 17 pages is one
            self.frame_size = self.block_size = RX_GSO_FRAME
            self.n_blocks = max(16, RX_GSO_SLOTS * mib // DEFAULT_RX_MIB)
        if gso:
            _setsockopt(sock, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")
        if version == 3:
            _setsockopt(sock, PACKET_VERSION, TPACKET_V3, "TPACKET_V3")
            # tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov,
            # sizeof_priv, feature_req_word
            frames = block_size // RX_FRAME_LIMIT * self.n_blocks
            req = np.array([block_size, self.n_blocks, RX_FRAME_LIMIT, frames, RETIRE_MS, 0,
                            0], np.uint32)
            self.state = np.zeros(5, np.int64)
        else:
            _setsockopt(sock, PACKET_VERSION, TPACKET_V2, "TPACKET_V2")
            self.n_frames = self.block_size // self.frame_size * self.n_blocks
            req = np.array([self.block_size, self.n_blocks, self.frame_size, self.n_frames],
                           np.uint32)
            self.state = np.zeros(5, np.int64)
        _setsockopt(sock, PACKET_RX_RING, req.tobytes(), "PACKET_RX_RING")
        self.map = _map(sock, self.block_size * self.n_blocks, "receive ring")
        self.ring = np.frombuffer(self.map, np.uint8)
        self.words = np.frombuffer(self.map, np.uint32)
        self.sock = sock

    def take(self, rows: np.ndarray, lens: np.ndarray, pkttype: np.ndarray, cap: int,
             csum: np.ndarray | None = None) -> int:
        """Frames into rows (cut at the row width; lens = their real length); then release
        (a second compiled call: the copies are done before the kernel gets the memory).
        A gso ring needs csum (a row's pending checksum, switch.packets.pending_checksum)."""
        if self.version == 2:
            m = _rx2_take(self.ring, self.words, self.state, self.n_frames, self.frame_size,
                          rows, lens, pkttype, cap, self.gso,
                          csum if csum is not None else _NO_CSUM)
            if self.state[2]:
                _rx2_release(self.words, self.state, self.n_frames, self.frame_size)
            return m
        m = _rx_take(self.ring, self.words, self.state, self.n_blocks, self.block_size, rows,
                     lens, pkttype, cap)
        if self.state[3]:
            _rx_release(self.words, self.state, self.n_blocks, self.block_size)
        return m

    def drops(self) -> int:
        """Frames the kernel dropped because the ring was full (PACKET_STATISTICS; the read
        resets the kernel's counters, so this keeps the sum)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        self._drops = getattr(self, "_drops", 0) + int(np.frombuffer(raw, np.uint32)[1])
        return self._drops

    @property
    def gso_frames(self) -> int:
        """GSO frames taken whole and cut into datagrams (a gso ring)."""
        return int(self.state[_S_GSO]) if self.gso else 0

    @property
    def bad_gso_frames(self) -> int:
        """GSO frames dropped: not IPv4/UDP, or cut short (a gso ring)."""
        return int(self.state[_S_BAD]) if self.gso else 0

    def close(self) -> None:
        self.ring = self.words = None
        try:
            self.map.close()
        except BufferError:   # a view still alive somewhere: the mapping dies with it
            pass


# ---------------------------------------------------------------- transmit (TPACKET_V2)

@njit
def _tx_put(ring, words, state, n_frames, frame_size, frames, flen, index, k, vnet, max_segs):
    """Copy frames[index[i]][:flen[index[i]]] into the next free slots of `frame_size` bytes,
    in ring order; returns how many frames are in (stops at the first slot the kernel still
    holds). vnet: the socket has PACKET_VNET_HDR, so each slot starts with a virtio_net_hdr,
    and up to max_segs consecutive frames of one UDP flow and length share a slot as one GSO
    frame (switch.packets.put_vnet_frame). Statuses are left to _tx_commit.
    state: [next slot, first slot to commit, slots to commit]."""
    i = 0
    if state[2] == 0:
        state[1] = state[0]
    room = frame_size - TX_DATA_AT
    while i < k:
        s = state[0]
        w = (s * frame_size) >> 2
        st = words[w]
        if st != TP_STATUS_AVAILABLE and st != TP_STATUS_WRONG_FORMAT:
            break
        r = index[i]
        n = flen[r]
        base = s * frame_size + TX_DATA_AT
        g = 1
        if vnet:
            if max_segs > 1 and n > FRAME_HEAD and plain_udp_frame(frames[r]):
                pay = n - FRAME_HEAD
                cap = min(max_segs, k - i, (room - VNET_HDR_LEN - FRAME_HEAD) // pay,
                          (0xFFFF - IPV4_MIN_LEN - UDP_LEN) // pay)
                while g < cap and flen[index[i + g]] == n and \
                        same_udp_flow(frames[r], frames[index[i + g]]):
                    g += 1
            words[w + 1] = put_vnet_frame(ring, base, frames, flen, index, i, g, room)
        else:
            if n > room:
                n = room
            copy_bytes(ring, base, frames[r], 0, n)
            words[w + 1] = n
        state[0] = (s + 1) % n_frames
        state[2] += 1
        i += g
    return i


@njit
def _tx_commit(words, state, n_frames, frame_size):
    """Mark the slots _tx_put filled for the kernel to send."""
    _set_status(words, state[1], state[2], n_frames, frame_size, 0, TP_STATUS_SEND_REQUEST)
    state[2] = 0


class TxRing:
    """A transmit ring on its own AF_PACKET socket bound to `iface` with protocol 0."""

    def __init__(self, iface: str, frames: int = TX_FRAMES, segments: int = 1):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        # segments > 1: frames carry a virtio_net_hdr (set before the ring, as the kernel
        # requires), in slots big enough for a GSO frame of that many datagrams
        self.segments = segments
        self.frame_size = TX_FRAME if segments == 1 else TX_GSO_FRAME
        if segments > 1:
            frames = max(1, frames * TX_FRAME // TX_GSO_FRAME)   # the same ring memory
        try:
            _setsockopt(self.sock, PACKET_VERSION, TPACKET_V2, "TPACKET_V2")
            _setsockopt(self.sock, PACKET_LOSS, 1, "PACKET_LOSS")
            if segments > 1:
                _setsockopt(self.sock, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")
            per_block = TX_BLOCK // self.frame_size   # tpacket_req: slots packed in blocks
            frames = -(-frames // per_block) * per_block
            req = np.array([TX_BLOCK, frames // per_block, self.frame_size, frames], np.uint32)
            _setsockopt(self.sock, PACKET_TX_RING, req.tobytes(), "PACKET_TX_RING")
            self.map = _map(self.sock, self.frame_size * frames, "transmit ring")
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, TX_SNDBUF)
            except OSError:
                pass   # the default buffer throttles, it does not break
            # blocking socket (a kick that waits for a full ring to drain), never for long
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                 struct.pack("ll", 0, TX_WAIT_US))
            self.sock.bind((iface, 0))
        except BaseException:
            self.sock.close()
            raise
        self.n_frames = frames
        self.ring = np.frombuffer(self.map, np.uint8)
        self.words = np.frombuffer(self.map, np.uint32)
        self.state = np.zeros(3, np.int64)
        self.fd = self.sock.fileno()
        self.kick_errors = 0

    def send(self, frames: np.ndarray, flen: np.ndarray, index: np.ndarray, k: int,
             group: bool = False) -> int:
        """Queue frames[index[:k]] and start their transmission; returns how many were
        queued (the rest found the ring full, even after waiting once for it to drain).
        group: consecutive frames of one UDP flow and length may leave as one GSO frame
        (on a ring made with segments > 1; the kernel cuts it where a device cannot carry
        it, so every receiver still gets datagrams)."""
        vnet = self.segments > 1
        segs = self.segments if group else 1
        done = _tx_put(self.ring, self.words, self.state, self.n_frames, self.frame_size,
                       frames, flen, index, k, vnet, segs)
        _tx_commit(self.words, self.state, self.n_frames, self.frame_size)
        self.kick()
        if done < k:   # ring full: let the kernel finish what it holds, then try once more
            self.kick(wait=True)
            more = _tx_put(self.ring, self.words, self.state, self.n_frames, self.frame_size,
                           frames, flen, index[done:k], k - done, vnet, segs)
            _tx_commit(self.words, self.state, self.n_frames, self.frame_size)
            self.kick()
            done += more
        return done

    def kick(self, wait: bool = False) -> None:
        """One send(): the kernel transmits every slot marked SEND_REQUEST."""
        try:
            self.sock.send(b"", 0 if wait else socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            pass   # send buffer full: the frames stay requested, the next kick sends them
        except OSError as e:
            if e.errno in (errno.ENOBUFS, errno.EINTR, errno.ENETDOWN, errno.ENXIO):
                self.kick_errors += 1
            else:
                raise

    def close(self) -> None:
        self.ring = self.words = None
        try:
            self.map.close()
        except BufferError:
            pass
        self.sock.close()


def ignore_outgoing(sock: socket.socket) -> bool:
    """Ask the kernel not to hand this receive socket the frames the switch itself sends
    (PACKET_IGNORE_OUTGOING, Linux 4.20+); False if refused (they are then filtered)."""
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        return True
    except OSError:
        return False



def _warm() -> None:
    """Load (on a machine's first run: compile) the ring loops at import, as switch.pipeline
    does for the kernel: the first frame must not wait for the compiler. Every status word
    here is zero (kernel-owned), so each loop returns at once."""
    ring = np.zeros(TX_BLOCK, np.uint8)
    words = ring.view(np.uint32)
    rows = np.zeros((1, 64), np.uint8)
    lens = np.zeros(1, np.int64)
    kinds = np.zeros(1, np.uint8)
    state = np.zeros(5, np.int64)
    _rx_take(ring, words, state, 1, TX_BLOCK, rows, lens, kinds, 1)
    _rx_release(words, state, 1, TX_BLOCK)
    for vnet in (False, True):
        _rx2_take(ring, words, state, 1, RX2_FRAME, rows, lens, kinds, 1, vnet, lens)
    _rx2_release(words, state, 1, RX2_FRAME)
    words[0] = TP_STATUS_SENDING   # a slot the kernel holds: _tx_put stops there
    for vnet in (False, True):
        _tx_put(ring, words, state, 1, TX_FRAME, rows, lens, lens, 1, vnet, 16)
    _tx_commit(words, state, 1, TX_FRAME)


_warm()
