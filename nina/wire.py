"""The NINA wire protocol: the one definition of the header and payload encodings.

Everything that reads or writes NINA packets (embedded switch, P4 generator, workers, scapy
layer, tests) takes its field layout and constants from here. docs/protocol.md explains the
layout in prose; tests/test_wire.py checks the scapy layer against HEADER_FIELDS.

Packet = Ethernet / IPv4 / UDP(dport=UDP_PORT) / header (16 bytes) / payload. The payload has a
fixed size per kind of packet (payload_layout) so the P4 parser has a fixed shape; `count` says
how many leading elements are meaningful and the rest are zero (NAT8_ZERO for codes).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields as dc_fields

import numpy as np

VERSION = 1
UDP_PORT = 0xBEE0  # SwitchML's range 0xBEE0-0xBEEF; the switch's aggregation port
HEADER_LEN = 16
# the frame around a NINA packet on an Ethernet link: Ethernet II, IPv4 without options, UDP
ETH_LEN, IPV4_MIN_LEN, UDP_LEN = 14, 20, 8
FRAME_OVERHEAD = ETH_LEN + IPV4_MIN_LEN + UDP_LEN
MAX_WORKERS = 32  # one bit each in a 32-bit bitmap
ELEMENTS_NAT8 = 256  # codes per NAT8 packet
ELEMENTS_INT32 = 64  # int32 values per INT32 packet
# A NAT8 result without C_M is sent in parts of this many int32 sums (512 bytes), one packet
# each: a whole 1024-byte result would grow the 256-byte update by 768 bytes, and BMv2's
# simple_switch lets a packet grow by at most 512 (its receive buffer's headroom).
RESULT_PART_SUMS = 128
RID_PART_SHIFT = 8   # multicast replica id = part << RID_PART_SHIFT | worker id

# Header fields in wire order: (name, numpy dtype, meaning). Multi-byte fields are big-endian.
HEADER_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("version", "u1", "protocol version, must equal VERSION"),
    ("msg_type", "u1", "MsgType: UPDATE from a worker, RESULT from the switch"),
    ("encoding", "u1", "Encoding of the payload"),
    ("flags", "u1", "bit0 FLAG_VER shadow-copy version (= round & 1), bit1 FLAG_CM payload "
                    "holds C_M codes, bits2-7 round >> 1"),
    ("job", ">u2", "job id, selects the job's table entry"),
    ("worker", "u1", "worker id 0..31 (its bit in the slot bitmap)"),
    ("exponent", "u1", "biased float32 exponent: worker's max for a later chunk / agreed max"),
    ("slot", ">u2", "slot index relative to the job's slot base"),
    ("count", ">u2", "number of meaningful payload elements"),
    ("offset", ">u4", "element offset of this chunk in the tensor, echoed in the result"),
)
HEADER_DTYPE = np.dtype([(name, dt) for name, dt, _ in HEADER_FIELDS])
assert HEADER_DTYPE.itemsize == HEADER_LEN

FLAG_VER = 0x01
FLAG_CM = 0x02
ROUND_BITS = 7            # a slot's round number modulo 128; its low bit is the version bit
ROUND_MOD = 1 << ROUND_BITS
_ROUND_HIGH_MASK = 0xFC   # flags bits 2-7 carry round >> 1


def round_flags(rnd: int) -> int:
    """The flags bits that carry round number `rnd` (mod 128): VER = rnd & 1, bits 2-7 the rest."""
    rnd %= ROUND_MOD
    return (rnd & 1) | ((rnd >> 1) << 2)


def round_of(flags: int) -> int:
    """The 7-bit round number a flags byte carries."""
    return (flags & FLAG_VER) | ((flags & _ROUND_HIGH_MASK) >> 1)


class MsgType(enum.IntEnum):
    UPDATE = 1
    RESULT = 2


class Encoding(enum.IntEnum):
    INT32 = 0  # 64 big-endian int32 fixed-point values (SwitchML block floating point)
    NAT8 = 1   # 256 natural-compression codes, one byte each


I32 = np.dtype(">i4")
U8 = np.dtype("u1")


@dataclass(frozen=True)
class Layout:
    """Shape of a payload: `capacity` elements of `dtype`; always exactly this many bytes."""
    dtype: np.dtype
    capacity: int

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * self.capacity


def payload_layout(msg_type: int, encoding: int, flags: int = 0) -> Layout:
    """The payload every packet of this kind carries (fixed size, so P4 can parse it).

    Updates: INT32 -> 64 int32 (256 B); NAT8 -> 256 codes (256 B). Results: INT32 -> 64 int32
    sums; NAT8 -> one part of RESULT_PART_SUMS int32 sums (512 B; see result_parts), or with
    FLAG_CM 256 C_M codes (256 B).
    """
    if encoding == Encoding.INT32:
        return Layout(I32, ELEMENTS_INT32)
    if msg_type == MsgType.RESULT and not flags & FLAG_CM:
        return Layout(I32, RESULT_PART_SUMS)
    return Layout(U8, ELEMENTS_NAT8)


def result_parts(encoding: int, flags: int = 0) -> int:
    """How many result packets a full chunk's result is split into (2 for NAT8 without C_M)."""
    if encoding == Encoding.NAT8 and not flags & FLAG_CM:
        return ELEMENTS_NAT8 // RESULT_PART_SUMS
    return 1


def result_part_count(count: int, part: int, encoding: int, flags: int = 0) -> int | None:
    """Elements in result part `part` of a chunk of `count` elements; None: the part is not sent.

    Part p covers elements [p * P, (p + 1) * P) of the chunk (P = the part's capacity) and carries
    offset + p * P in its header. Part 0 is always sent (a priming result has count 0); a later
    part only when the chunk reaches into it.
    """
    cap = payload_layout(MsgType.RESULT, encoding, flags).capacity
    if not 0 <= part < result_parts(encoding, flags) or (part and count <= part * cap):
        return None
    return min(cap, count - part * cap)


CAPACITY = {Encoding.INT32: ELEMENTS_INT32, Encoding.NAT8: ELEMENTS_NAT8}

# NAT8 code byte: bit7 = sign, bits0-6 = offset o. Uplink: value = +-(1 << (S - o)) in the
# switch's integer domain (S = headroom_shift(n)); any o > S, in particular NAT8_ZERO, adds 0.
# Downlink with FLAG_CM: value = +-(1 << p) for p = bits0-6 (p <= 31); NAT8_ZERO means 0.
NAT8_SIGN = 0x80
NAT8_MAG = 0x7F
NAT8_ZERO = 0x7F


class WireError(ValueError):
    """A packet or header violates the protocol; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class TruncatedPacket(WireError):
    pass


class BadField(WireError):
    pass


@dataclass(frozen=True)
class Header:
    version: int = VERSION
    msg_type: int = MsgType.UPDATE
    encoding: int = Encoding.NAT8
    flags: int = 0
    job: int = 0
    worker: int = 0
    exponent: int = 0
    slot: int = 0
    count: int = 0
    offset: int = 0

    @property
    def ver(self) -> int:
        return self.flags & FLAG_VER

    @property
    def round(self) -> int:
        return round_of(self.flags)

    def pack(self) -> bytes:
        validate_header(self)
        arr = np.zeros((), HEADER_DTYPE)
        for f in dc_fields(self):
            arr[f.name] = getattr(self, f.name)
        return arr.tobytes()

    @classmethod
    def unpack(cls, buf: bytes | memoryview, validate: bool = True) -> "Header":
        if len(buf) < HEADER_LEN:
            raise TruncatedPacket("header", f"{len(buf)} bytes, need {HEADER_LEN}")
        arr = np.frombuffer(buf, HEADER_DTYPE, count=1)[0]
        hdr = cls(**{name: int(arr[name]) for name, _, _ in HEADER_FIELDS})
        if validate:
            validate_header(hdr)
        return hdr


_FIELD_MAX = {name: np.iinfo(np.dtype(dt)).max for name, dt, _ in HEADER_FIELDS}


def validate_header(h: Header) -> None:
    """Raise BadField naming the first field that breaks the protocol."""
    for name, _, _ in HEADER_FIELDS:
        v = getattr(h, name)
        if not isinstance(v, (int, np.integer)) or v < 0 or v > _FIELD_MAX[name]:
            raise BadField(name, f"{v!r} does not fit the field")
    if h.version != VERSION:
        raise BadField("version", f"unknown version {h.version} (this side speaks {VERSION})")
    if h.msg_type not in MsgType._value2member_map_:
        raise BadField("msg_type", f"unknown message type {h.msg_type}")
    if h.encoding not in Encoding._value2member_map_:
        raise BadField("encoding", f"unknown encoding {h.encoding}")
    if h.worker >= MAX_WORKERS:
        raise BadField("worker", f"worker id {h.worker} >= {MAX_WORKERS}")
    if h.count > CAPACITY[Encoding(h.encoding)]:
        raise BadField("count", f"{h.count} elements exceed the "
                                f"{CAPACITY[Encoding(h.encoding)]} of {Encoding(h.encoding).name}")


def _zero_fill(layout: Layout) -> np.ndarray:
    payload = np.zeros(layout.capacity, layout.dtype)
    if layout.dtype == U8:
        payload[:] = NAT8_ZERO
    return payload


def pack_packet(h: Header, values: np.ndarray | None = None) -> bytes:
    """Header + fixed-size payload; `values` are the wire-domain elements (ints or codes)."""
    layout = payload_layout(h.msg_type, h.encoding, h.flags)
    payload = _zero_fill(layout)
    n = 0 if values is None else np.asarray(values).size
    if n != h.count:
        raise BadField("count", f"header says {h.count} elements, {n} given")
    if n:
        payload[:n] = np.asarray(values).ravel()
    return h.pack() + payload.tobytes()


def parse_packet(buf: bytes | memoryview) -> tuple[Header, np.ndarray]:
    """Validate a whole NINA packet (UDP payload) and return (header, meaningful elements)."""
    hdr = Header.unpack(buf)
    layout = payload_layout(hdr.msg_type, hdr.encoding, hdr.flags)
    have = len(buf) - HEADER_LEN
    if have < layout.nbytes:
        raise TruncatedPacket("payload", f"{have} payload bytes, need {layout.nbytes}")
    if have > layout.nbytes:
        raise BadField("payload", f"{have} payload bytes, expected {layout.nbytes}")
    values = np.frombuffer(buf, layout.dtype, count=hdr.count, offset=HEADER_LEN)
    return hdr, values


# ---- batches: many same-kind packets as one numpy structured array (no per-element loops) ----

def batch_dtype(msg_type: int, encoding: int, flags: int = 0) -> np.dtype:
    layout = payload_layout(msg_type, encoding, flags)
    return np.dtype([("hdr", HEADER_DTYPE), ("payload", layout.dtype, (layout.capacity,))])


def empty_batch(n: int, msg_type: int, encoding: int, flags: int = 0) -> np.ndarray:
    """n packets with version/type/encoding/flags set and zero payloads (NAT8 zero codes)."""
    batch = np.zeros(n, batch_dtype(msg_type, encoding, flags))
    h = batch["hdr"]
    h["version"], h["msg_type"], h["encoding"], h["flags"] = VERSION, msg_type, encoding, flags
    if payload_layout(msg_type, encoding, flags).dtype == U8:
        batch["payload"][:] = NAT8_ZERO
    return batch


def pack_batch(batch: np.ndarray) -> list[bytes]:
    """Serialise a batch into one bytes object per packet (for sendto)."""
    raw, size = batch.tobytes(), batch.dtype.itemsize
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def unpack_batch(bufs: list[bytes], msg_type: int, encoding: int, flags: int = 0) -> np.ndarray:
    """Parse packets of one kind into a structured array; raises WireError on any bad one."""
    dt = batch_dtype(msg_type, encoding, flags)
    for i, b in enumerate(bufs):
        if len(b) != dt.itemsize:
            cls = TruncatedPacket if len(b) < dt.itemsize else BadField
            raise cls("payload", f"packet {i} has {len(b)} bytes, expected {dt.itemsize}")
    batch = np.frombuffer(b"".join(bufs), dt).copy()
    h = batch["hdr"]
    checks = (
        ("version", h["version"] != VERSION),
        ("msg_type", h["msg_type"] != msg_type),
        ("encoding", h["encoding"] != encoding),
        ("flags", (h["flags"] & FLAG_CM) != (flags & FLAG_CM)),
        ("worker", h["worker"] >= MAX_WORKERS),
        ("count", h["count"] > CAPACITY[Encoding(encoding)]),
    )
    for name, bad in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise BadField(name, f"packet {i}: unexpected value {int(h[name][i])}")
    return batch


# ---- integer domain shared by switch and workers ----

def headroom_bits(n_workers: int) -> int:
    """Bits kept free so n workers' values summed in int32 never overflow: ceil(log2 n) + 1."""
    if not 1 <= n_workers <= MAX_WORKERS:
        raise ValueError(f"n_workers must be in 1..{MAX_WORKERS}, got {n_workers}")
    return math.ceil(math.log2(n_workers)) + 1


def headroom_shift(n_workers: int) -> int:
    """S: the largest per-worker integer magnitude is 2^S, so n * 2^S <= 2^30 < 2^31."""
    return 31 - headroom_bits(n_workers)


def block_top_exponent(exponent_byte: int | np.ndarray) -> int | np.ndarray:
    """Unbiased exponent e_top with every value of the block (after rounding up) <= 2^e_top.

    The exponent byte holds the biased float32 exponent of the block's largest magnitude m, so
    m < 2^(byte - 126); natural rounding can reach 2^(byte - 126) itself, hence the + 1.
    """
    return np.asarray(exponent_byte, np.int64) - 126


def integer_scale(exponent_byte: int | np.ndarray, shift: int) -> np.ndarray:
    """Float value of integer 1 in the switch domain: 2^(e_top - S)."""
    return np.ldexp(1.0, (block_top_exponent(exponent_byte) - shift).astype(np.int64))


def nat8_to_int(codes: np.ndarray, shift: int) -> np.ndarray:
    """Uplink NAT8 codes -> the int32 addends the switch uses: +-(1 << (S - o)), 0 if o > S."""
    codes = np.asarray(codes, np.uint8)
    off = (codes & NAT8_MAG).astype(np.int64)
    mag = np.where(off <= shift, np.left_shift(1, np.clip(shift - off, 0, 62)), 0)
    return np.where(codes & NAT8_SIGN, -mag, mag).astype(np.int32)


def cm_codes_to_int(codes: np.ndarray) -> np.ndarray:
    """Downlink C_M codes -> integers +-(1 << p) (int64: p may be 31), NAT8_ZERO -> 0."""
    codes = np.asarray(codes, np.uint8)
    p = (codes & NAT8_MAG).astype(np.int64)
    mag = np.where(p == NAT8_ZERO, 0, np.left_shift(1, np.clip(p, 0, 62)))
    return np.where(codes & NAT8_SIGN, -mag, mag)


def int_to_cm_codes(sums: np.ndarray, uniform32: np.ndarray) -> np.ndarray:
    """Master compression C_M of int32 sums, as the switch does it.

    p = index of the top set bit of |x|; round up to 2^(p+1) when (u & (2^p - 1)) < |x| - 2^p,
    with u a uniform 32-bit random number: P(up) = (|x| - 2^p) / 2^p, so E[C_M(x)] = x.
    """
    x = np.asarray(sums, np.int64)
    mag = np.abs(x)
    p = np.where(mag > 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64), 0)
    # float log2 can be off by one near powers of two for large ints; correct exactly.
    p = np.where(np.left_shift(1, p) > mag, p - 1, p)
    p = np.where(np.left_shift(1, p + 1) <= mag, p + 1, p)
    low = mag - np.left_shift(1, p)
    up = (np.asarray(uniform32, np.int64) & (np.left_shift(1, p) - 1)) < low
    p = p + up
    codes = np.where(x < 0, NAT8_SIGN, 0) | p
    return np.where(mag == 0, NAT8_ZERO, codes).astype(np.uint8)
