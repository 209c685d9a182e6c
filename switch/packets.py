"""Ethernet / IPv4 / UDP framing for the raw-interface back end.

parse_frame() classifies a received frame (NINA update, malformed NINA, or other traffic to
forward) and extracts the addresses; build_udp_frame() writes a frame with a correct IPv4
header checksum and UDP checksum (veth peers verify them: AF_PACKET frames get no offload).

Checksums use the identity "one's-complement sum of 16-bit words == the big-endian integer
mod 0xFFFF" (2^16 = 1 mod 0xFFFF), so one int.from_bytes does the whole sum in C.

The interface back end works on batches: `classify_frames` and `frame_results` are the same
rules compiled (nina.jit) over rows of a numpy buffer, and parse_frame/build_udp_frame are
those functions applied to one frame, so there is one implementation of each.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from nina.jit import copy_bytes, njit
from nina.wire import ETH_LEN, IPV4_MIN_LEN, UDP_LEN, UDP_PORT
from switch.kernel import R_DIP, R_DPORT, R_PORT

ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17


# Kinds of frame, as parse_frame reports them.
NINA, MALFORMED, OTHER = "nina", "malformed", "other"


def ones_complement_sum(data: bytes) -> int:
    """16-bit one's-complement sum of data (zero-padded to even length)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    v = int.from_bytes(data, "big")
    s = v % 0xFFFF
    return 0xFFFF if s == 0 and v else s


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of data."""
    return ~ones_complement_sum(data) & 0xFFFF


def ipv4_checksum(header: bytes) -> int:
    """Checksum of an IPv4 header whose checksum field is zero."""
    return checksum(header)


def udp_checksum(src_ip: int, dst_ip: int, udp_segment: bytes) -> int:
    """UDP checksum over the pseudo-header and the segment (checksum field zero); 0 -> 0xFFFF."""
    pseudo = struct.pack("!IIBBH", src_ip, dst_ip, 0, IPPROTO_UDP, len(udp_segment))
    c = checksum(pseudo + bytes(udp_segment))
    return c or 0xFFFF


K_OTHER, K_NINA, K_MALFORMED = 0, 1, 2
_KINDS = {K_OTHER: OTHER, K_NINA: NINA, K_MALFORMED: MALFORMED}
FRAME_HEAD = ETH_LEN + IPV4_MIN_LEN + UDP_LEN   # the frame around a result's UDP payload


@njit
def _csum_add(b, lo, hi, total):
    """Add bytes b[lo:hi] as big-endian 16-bit words (odd length: zero-padded)."""
    v = b[lo:hi]   # a view indexed from 0: the loop vectorises (see nina.jit.copy_bytes)
    n = v.size
    for k in range(n >> 1):
        total += (np.int64(v[2 * k]) << 8) | np.int64(v[2 * k + 1])
    if n & 1:
        total += np.int64(v[n - 1]) << 8
    return total


@njit
def _csum_fold(total):
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@njit
def _be(b, o, v, n):
    for j in range(n):
        b[o + j] = (v >> (8 * (n - 1 - j))) & 0xFF


@njit
def frame_results(out, out_len, out_rep, k, replicas, frames, frame_len, src_port):
    """Ethernet/IPv4 (DF, TTL 64, id 0)/UDP frames around result payloads out[i][:out_len[i]],
    addressed by replica row out_rep[i] (switch.kernel's R_* columns), both checksums set."""
    for i in range(k):
        r = replicas[out_rep[i]]
        dmac, dip, dport, smac, sip = r[3], r[4], r[5], r[6], r[7]
        f = frames[i]
        plen = out_len[i]
        ulen = UDP_LEN + plen
        _be(f, 0, dmac, 6)
        _be(f, 6, smac, 6)
        _be(f, 12, ETHERTYPE_IPV4, 2)
        ip = ETH_LEN
        f[ip] = 0x45
        f[ip + 1] = 0
        _be(f, ip + 2, IPV4_MIN_LEN + ulen, 2)
        _be(f, ip + 4, 0, 2)
        _be(f, ip + 6, 0x4000, 2)
        f[ip + 8] = 64
        f[ip + 9] = IPPROTO_UDP
        _be(f, ip + 10, 0, 2)
        _be(f, ip + 12, sip, 4)
        _be(f, ip + 16, dip, 4)
        _be(f, ip + 10, ~_csum_fold(_csum_add(f, ip, ip + IPV4_MIN_LEN, 0)) & 0xFFFF, 2)
        u = ip + IPV4_MIN_LEN
        _be(f, u, src_port, 2)
        _be(f, u + 2, dport, 2)
        _be(f, u + 4, ulen, 2)
        _be(f, u + 6, 0, 2)
        copy_bytes(f, u + UDP_LEN, out[i], 0, plen)
        pseudo = (sip >> 16) + (sip & 0xFFFF) + (dip >> 16) + (dip & 0xFFFF) + IPPROTO_UDP + ulen
        c = ~_csum_fold(_csum_add(f, u, u + ulen, pseudo)) & 0xFFFF
        _be(f, u + 6, c if c else 0xFFFF, 2)
        frame_len[i] = u + ulen


# A PACKET_VNET_HDR socket's frames start with a struct virtio_net_hdr (little-endian: flags,
# gso_type, hdr_len, gso_size, csum_start, csum_offset), which can ask the kernel to cut the
# frame into UDP datagrams of gso_size payload bytes (GSO) wherever a device cannot carry it.
VNET_HDR_LEN = 10
VNET_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_UDP_L4 = 1, 0, 5   # its flags and gso_type
# header bytes each GSO segment gets anew: IP total length and id, IP checksum, UDP length
# and checksum (a read-only global: numba compiles it in as a constant)
_PER_SEGMENT = np.zeros(FRAME_HEAD, np.bool_)
_PER_SEGMENT[[ETH_LEN + 2, ETH_LEN + 3, ETH_LEN + 4, ETH_LEN + 5, ETH_LEN + 10, ETH_LEN + 11,
              FRAME_HEAD - 4, FRAME_HEAD - 3, FRAME_HEAD - 2, FRAME_HEAD - 1]] = True


@njit
def plain_udp_frame(a):
    """Frame a is IPv4 without options carrying UDP (what a GSO frame's first may be)."""
    return a[12] == 0x08 and a[13] == 0 and a[ETH_LEN] == 0x45 and a[ETH_LEN + 9] == IPPROTO_UDP


@njit
def same_udp_flow(a, b):
    """Frames a and b are plain_udp_frame frames whose headers agree in every byte a GSO
    segment takes from the first one (all but lengths, IP id and checksums)."""
    if not plain_udp_frame(a):
        return False
    for j in range(FRAME_HEAD):   # equal format bytes make b a plain UDP frame too
        if a[j] != b[j] and not _PER_SEGMENT[j]:
            return False
    return True


@njit
def put_vnet_frame(dst, at, frames, flen, index, i, g, room):
    """Write at dst[at:] a virtio_net_hdr and a frame for frames[index[i..i+g-1]]; returns the
    bytes written (at most `room`: the caller sizes g to fit). g == 1: the frame as it is
    (cut to fit), behind an empty header. g > 1 (same_udp_flow
    frames of one length): one frame with the first one's headers and all g UDP payloads, its
    IP and UDP lengths for the whole, and a header asking for UDP GSO into g datagrams; the
    UDP checksum field holds the pseudo-header sum (CHECKSUM_PARTIAL), which the kernel
    completes per datagram when it cuts them (or the receiver trusts, if none has to)."""
    r = index[i]
    n = np.int64(flen[r])
    for j in range(VNET_HDR_LEN):
        dst[at + j] = 0
    f0 = frames[r]
    o = at + VNET_HDR_LEN
    if g == 1:
        n = min(n, room - VNET_HDR_LEN)
        copy_bytes(dst, o, f0, 0, n)
        return VNET_HDR_LEN + n
    pay = n - FRAME_HEAD
    dst[at] = VNET_NEEDS_CSUM
    dst[at + 1] = VNET_GSO_UDP_L4
    for v, q in ((FRAME_HEAD, 2), (pay, 4), (ETH_LEN + IPV4_MIN_LEN, 6), (6, 8)):
        dst[at + q] = v & 0xFF
        dst[at + q + 1] = v >> 8
    for j in range(FRAME_HEAD):
        dst[o + j] = f0[j]
    ulen = UDP_LEN + g * pay
    ip = o + ETH_LEN
    _be(dst, ip + 2, IPV4_MIN_LEN + ulen, 2)
    _be(dst, ip + 10, 0, 2)
    _be(dst, ip + 10, ~_csum_fold(_csum_add(dst, ip, ip + IPV4_MIN_LEN, 0)) & 0xFFFF, 2)
    u = ip + IPV4_MIN_LEN
    _be(dst, u + 4, ulen, 2)
    sip = _csum_add(dst, ip + 12, ip + 20, 0)   # source and destination addresses
    _be(dst, u + 6, _csum_fold(sip + IPPROTO_UDP + ulen), 2)
    p = u + UDP_LEN
    for s in range(g):
        copy_bytes(dst, p, frames[index[i + s]], FRAME_HEAD, pay)
        p += pay
    return p - at


# A received frame's pending checksum (a CHECKSUM_PARTIAL frame from a PACKET_VNET_HDR socket:
# the sender left it to an offload): 0 = complete, else (start << 16) | field, the checksum
# field at `field` holding the pseudo-header sum and the sum to take from byte `start` to the
# end. The switch completes it only on frames it forwards (complete_checksums); updates are
# read by the pipeline, whose results are framed anew.
_UDP_CHECK_AT = 6


@njit
def pending_checksum(start, field):
    return (np.int64(start) << 16) | np.int64(field)


@njit
def cut_udp_gso(frame, n, seg, rows, lens, csum, m, cap):
    """Cut a received UDP GSO frame (frame[:n]: one IPv4/UDP header, then the datagrams'
    payloads of `seg` bytes each, the last maybe shorter) into rows m.. as the kernel's
    software GSO would: each datagram gets the header with its own IP total length, id (+1
    per datagram) and header checksum, and UDP length; its UDP checksum is left pending
    (the field holds the pseudo-header sum, csum[row] says where), as the frame's was.
    Returns the rows written; -1 if they would pass row `cap` (nothing written; the caller
    takes the frame in its next batch); -2 if the frame is no IPv4/UDP GSO frame this can
    cut (the caller drops and counts it)."""
    if n < ETH_LEN + IPV4_MIN_LEN or frame[12] != 0x08 or frame[13] != 0 or seg <= 0:
        return -2
    ip = ETH_LEN
    ihl = (np.int64(frame[ip]) & 0x0F) * 4
    if frame[ip] >> 4 != 4 or ihl < IPV4_MIN_LEN or frame[ip + 9] != IPPROTO_UDP:
        return -2
    l4 = ip + ihl
    head = l4 + UDP_LEN
    if n <= head or head > rows.shape[1]:
        return -2
    body = n - head
    k = (body + seg - 1) // seg
    if k > cap - m:
        return -1
    ident = (np.int64(frame[ip + 4]) << 8) | np.int64(frame[ip + 5])
    addrs = _csum_add(frame, ip + 12, ip + 20, 0)
    for s in range(k):
        r = rows[m + s]
        ln = min(seg, body - s * seg)
        copy_bytes(r, 0, frame, 0, head)
        copy_bytes(r, head, frame, head + s * seg, ln)
        _be(r, ip + 2, ihl + UDP_LEN + ln, 2)
        _be(r, ip + 4, (ident + s) & 0xFFFF, 2)
        _be(r, ip + 10, 0, 2)
        _be(r, ip + 10, ~_csum_fold(_csum_add(r, ip, l4, 0)) & 0xFFFF, 2)
        _be(r, l4 + 4, UDP_LEN + ln, 2)
        _be(r, l4 + _UDP_CHECK_AT, _csum_fold(addrs + IPPROTO_UDP + UDP_LEN + ln), 2)
        lens[m + s] = head + ln
        csum[m + s] = pending_checksum(l4, l4 + _UDP_CHECK_AT)
    return k


@njit
def complete_checksums(buf, lens, csum, which):
    """Complete the pending checksum of rows buf[which] (what an offload would have done
    before the frame left its sender): the one's-complement sum from `start` to the frame's
    end, over the field's pseudo-header sum, into the field (UDP: 0 is sent as 0xFFFF). A
    row cut short of its frame cannot be summed and stays as it is."""
    for i in which:
        c = csum[i]
        if c == 0:
            continue
        csum[i] = 0
        start = c >> 16
        field = c & 0xFFFF
        b = buf[i]
        n = np.int64(lens[i])
        if n > b.size or field + 2 > n or start > field:
            continue
        v = ~_csum_fold(_csum_add(b, start, n, 0)) & 0xFFFF
        if v == 0 and field - start == _UDP_CHECK_AT:
            v = 0xFFFF
        _be(b, field, v, 2)


@njit
def classify_frames(buf, lens, m, nina_port, kind, dst_mac, src_ip, dst_ip, src_port, dst_port,
                    off, plen):
    """parse_frame's rules over frames buf[i][:lens[i]] (a row may hold fewer bytes than the
    frame had: only the headers are read, lengths are checked against lens)."""
    for i in range(m):
        b = buf[i]
        n = np.int64(lens[i])
        kind[i] = K_OTHER
        dst_mac[i] = src_ip[i] = dst_ip[i] = src_port[i] = dst_port[i] = off[i] = plen[i] = 0
        if n < ETH_LEN:
            continue
        d = 0
        for j in range(6):
            d = (d << 8) | np.int64(b[j])
        dst_mac[i] = d
        etype = (np.int64(b[12]) << 8) | np.int64(b[13])
        if etype != ETHERTYPE_IPV4 or n < ETH_LEN + IPV4_MIN_LEN:
            continue
        ip = ETH_LEN
        vihl = np.int64(b[ip])
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or b[ip + 9] != IPPROTO_UDP or ihl < IPV4_MIN_LEN:
            continue
        l4 = ETH_LEN + ihl
        if n < l4 + UDP_LEN or l4 + UDP_LEN > b.size:
            continue
        dport = (np.int64(b[l4 + 2]) << 8) | np.int64(b[l4 + 3])
        if dport != nina_port:
            continue
        total = (np.int64(b[ip + 2]) << 8) | np.int64(b[ip + 3])
        frag = (np.int64(b[ip + 6]) << 8) | np.int64(b[ip + 7])
        ulen = (np.int64(b[l4 + 4]) << 8) | np.int64(b[l4 + 5])
        s = 0
        t = 0
        for j in range(4):
            s = (s << 8) | np.int64(b[ip + 12 + j])
            t = (t << 8) | np.int64(b[ip + 16 + j])
        src_ip[i], dst_ip[i] = s, t
        src_port[i] = (np.int64(b[l4]) << 8) | np.int64(b[l4 + 1])
        dst_port[i] = dport
        # Broken lengths, fragments, or a UDP length past the frame: NINA traffic we cannot read
        ok = (total >= ihl + UDP_LEN and ETH_LEN + total <= n and ulen >= UDP_LEN
              and ihl + ulen <= total and frag & 0x3FFF == 0)
        kind[i] = K_NINA if ok else K_MALFORMED
        off[i] = l4 + UDP_LEN
        plen[i] = ulen - UDP_LEN if ok else max(0, n - l4 - UDP_LEN)


@njit
def split_frames(kind, pkttype, m, outgoing, nina, other, counts):
    """Sort classified frames 0..m-1: those whose packet type is not `outgoing` (the kernel's
    copies of our own sends) are ours, and of those the indices of the NINA frames go to
    `nina`, the rest (malformed NINA, other traffic) to `other`, in order; counts = [ours,
    NINA, other]. One pass for what took six numpy operations a batch."""
    a = b = c = 0
    for i in range(m):
        if pkttype[i] == outgoing:
            continue
        a += 1
        if kind[i] == K_NINA:
            nina[b] = i
            b += 1
        else:
            other[c] = i
            c += 1
    counts[0], counts[1], counts[2] = a, b, c


@njit
def group_results(out_rep, k, replicas, by_flow, order, runs):
    """The order in which results 0..k-1 leave: grouped by egress port (replica column R_PORT),
    stable, and with by_flow within a port by worker flow (destination IP, UDP port: a GSO
    frame takes a run of one worker's results, their own order kept). runs[2j], runs[2j+1]:
    the j-th port and the end of its results in order; returns the number of ports."""
    keys = np.empty(k, np.int64)
    for i in range(k):
        r = replicas[out_rep[i]]
        keys[i] = (r[R_PORT] << 48) | (r[R_DIP] << 16) | r[R_DPORT] if by_flow else r[R_PORT]
    srt = np.argsort(keys, kind="mergesort")
    n = 0
    for i in range(k):
        order[i] = srt[i]
        p = replicas[out_rep[srt[i]]][R_PORT]
        if n and runs[2 * n - 2] == p:
            runs[2 * n - 1] = i + 1
        else:
            runs[2 * n] = p
            runs[2 * n + 1] = i + 1
            n += 1
    return n


class FrameRows:
    """Per-frame outputs of classify_frames for a batch of n frames, and of split_frames."""

    def __init__(self, n: int):
        (self.kind, self.dst_mac, self.src_ip, self.dst_ip, self.src_port, self.dst_port,
         self.off, self.plen, self.nina, self.other) = (np.zeros(n, np.int64) for _ in range(10))
        self.counts = np.zeros(3, np.int64)

    def classify(self, buf: np.ndarray, lens: np.ndarray, m: int,
                 nina_port: int = UDP_PORT) -> None:
        classify_frames(buf, lens, m, nina_port, self.kind, self.dst_mac, self.src_ip,
                        self.dst_ip, self.src_port, self.dst_port, self.off, self.plen)

    def split(self, pkttype: np.ndarray, m: int, outgoing: int) -> tuple[int, int, int]:
        """(frames that are ours, NINA frames, others) of the classified batch; their
        indices in self.nina[:NINA] and self.other[:others] (see split_frames)."""
        split_frames(self.kind, pkttype, m, outgoing, self.nina, self.other, self.counts)
        a, b, c = self.counts.tolist()
        return a, b, c


def build_udp_frame(dst_mac: int, src_mac: int, src_ip: int, dst_ip: int, src_port: int,
                    dst_port: int, payload: bytes) -> bytes:
    """Ethernet/IPv4/UDP frame around payload, with both checksums filled in."""
    n = len(payload)
    out = np.frombuffer(bytes(payload), np.uint8).reshape(1, n)
    rep = np.array([[0, 0, 0, dst_mac, dst_ip, dst_port, src_mac, src_ip]], np.int64)
    frames = np.zeros((1, FRAME_HEAD + n), np.uint8)
    flen = np.zeros(1, np.int64)
    frame_results(out, np.array([n], np.int64), np.zeros(1, np.int64), 1, rep, frames, flen,
                  src_port)
    return frames[0].tobytes()


class Frame(NamedTuple):
    kind: str              # NINA, MALFORMED (UDP to the NINA port but broken) or OTHER
    dst_mac: int
    src_mac: int
    src_ip: int = 0
    dst_ip: int = 0
    src_port: int = 0
    dst_port: int = 0
    payload_offset: int = 0   # where the UDP payload starts in the frame
    payload_len: int = 0


def parse_frame(frame: bytes | memoryview, nina_port: int = UDP_PORT) -> Frame:
    """Classify a frame; never raises. NINA = IPv4/UDP to nina_port, unfragmented."""
    buf = np.frombuffer(bytes(frame), np.uint8)
    rows = FrameRows(1)
    rows.classify(buf.reshape(1, -1), np.array([buf.size], np.int64), 1, nina_port)
    if not buf.size:
        return Frame(OTHER, 0, 0)
    src_mac = int.from_bytes(bytes(frame[6:12]), "big") if buf.size >= ETH_LEN else 0
    return Frame(_KINDS[int(rows.kind[0])], int(rows.dst_mac[0]), src_mac, int(rows.src_ip[0]),
                 int(rows.dst_ip[0]), int(rows.src_port[0]), int(rows.dst_port[0]),
                 int(rows.off[0]), int(rows.plen[0]))


def _warm() -> None:
    """Load (first run: compile) the framing at import, as the interface loop calls it."""
    frame = build_udp_frame(2, 1, 0x0A000001, 0x0A000002, UDP_PORT, UDP_PORT, bytes(272))
    parse_frame(frame)
    rows = np.zeros((1, 64), np.uint8)
    frame_results(rows, np.zeros(1, np.int64), np.zeros(1, np.int64), 1,
                  np.zeros((1, 8), np.int64), np.zeros((1, FRAME_HEAD + 64), np.uint8),
                  np.zeros(1, np.int64), UDP_PORT)
    fr = FrameRows(1)
    fr.classify(rows, np.zeros(1, np.int64), 1)
    fr.split(np.zeros(1, np.uint8), 1, 4)
    group_results(np.zeros(1, np.int64), 1, np.zeros((1, 8), np.int64), True,
                  np.zeros(1, np.int64), np.zeros(2, np.int64))
    lens, csum = np.zeros(2, np.int64), np.zeros(2, np.int64)
    gso = np.frombuffer(frame + bytes(8), np.uint8)
    cut_udp_gso(gso, gso.size, 272, np.zeros((2, 2048), np.uint8), lens, csum, 0, 2)
    complete_checksums(rows, lens, csum, np.zeros(1, np.int64))


_warm()
