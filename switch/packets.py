"""Ethernet / IPv4 / UDP framing for the raw-interface back end.

parse_frame() classifies a received frame (NINA update, malformed NINA, or other traffic to
forward) and extracts the addresses; build_udp_frame() writes a frame with a correct IPv4
header checksum and UDP checksum (veth peers verify them: AF_PACKET frames get no offload).

Checksums use the identity "one's-complement sum of 16-bit words == the big-endian integer
mod 0xFFFF" (2^16 = 1 mod 0xFFFF), so one int.from_bytes does the whole sum in C.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from nina.wire import UDP_PORT

ETH_LEN, IPV4_MIN_LEN, UDP_LEN = 14, 20, 8
ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")

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


def build_udp_frame(dst_mac: int, src_mac: int, src_ip: int, dst_ip: int, src_port: int,
                    dst_port: int, payload: bytes, ttl: int = 64, ident: int = 0) -> bytes:
    """Ethernet/IPv4/UDP frame around payload, with both checksums filled in."""
    udp_len = UDP_LEN + len(payload)
    udp_hdr = _UDP.pack(src_port, dst_port, udp_len, 0)
    ucs = udp_checksum(src_ip, dst_ip, udp_hdr + payload)
    ip_hdr = _IPV4.pack(0x45, 0, IPV4_MIN_LEN + udp_len, ident & 0xFFFF, 0x4000, ttl,
                        IPPROTO_UDP, 0, src_ip.to_bytes(4, "big"), dst_ip.to_bytes(4, "big"))
    ics = ipv4_checksum(ip_hdr)
    return b"".join((
        dst_mac.to_bytes(6, "big"), src_mac.to_bytes(6, "big"),
        ETHERTYPE_IPV4.to_bytes(2, "big"),
        ip_hdr[:10], ics.to_bytes(2, "big"), ip_hdr[12:],
        udp_hdr[:6], ucs.to_bytes(2, "big"), payload,
    ))


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
    n = len(frame)
    if n < ETH_LEN:
        return Frame(OTHER, 0, 0)
    dst, src, ethertype = _ETH.unpack_from(frame)
    dst_mac, src_mac = int.from_bytes(dst, "big"), int.from_bytes(src, "big")
    if ethertype != ETHERTYPE_IPV4 or n < ETH_LEN + IPV4_MIN_LEN:
        return Frame(OTHER, dst_mac, src_mac)
    vihl, _, total, _, frag, _, proto, _, sip, dip = _IPV4.unpack_from(frame, ETH_LEN)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or proto != IPPROTO_UDP or ihl < IPV4_MIN_LEN:
        return Frame(OTHER, dst_mac, src_mac)
    l4 = ETH_LEN + ihl
    if n < l4 + UDP_LEN:
        return Frame(OTHER, dst_mac, src_mac)
    sport, dport, ulen, _ = _UDP.unpack_from(frame, l4)
    if dport != nina_port:
        return Frame(OTHER, dst_mac, src_mac)
    src_ip, dst_ip = int.from_bytes(sip, "big"), int.from_bytes(dip, "big")
    # Broken lengths, fragments, or a UDP length past the frame: NINA traffic we cannot read.
    ok = (total >= ihl + UDP_LEN and ETH_LEN + total <= n and ulen >= UDP_LEN
          and ihl + ulen <= total and frag & 0x3FFF == 0)
    kind = NINA if ok else MALFORMED
    plen = ulen - UDP_LEN if ok else max(0, n - l4 - UDP_LEN)
    return Frame(kind, dst_mac, src_mac, src_ip, dst_ip, sport, dport, l4 + UDP_LEN, plen)
