"""The gossip datagram: how decentralized workers send each other model messages over UDP.

Gossip traffic is worker-to-worker, not aggregation: it goes to the peer's gossip socket (never
to nina.wire.UDP_PORT), so the switch forwards it as plain traffic and never parses it as NINA.
A message (one worker's data for one neighbour in one gossip round) is cut into chunks of at
most MAX_CHUNK payload bytes so every datagram fits a 1500-byte Ethernet MTU unfragmented
(20 IPv4 + 8 UDP + HEADER.size + MAX_CHUNK <= 1500).

Header (network byte order), HEADER:
  magic  2s  b"NG"
  version u1  GOSSIP_VERSION
  kind    u1  DATA (a chunk of a message) or NACK (the receiver asks for chunks again)
  sender  u2  worker id of the sender
  round   u4  gossip round (every worker counts its exchanges the same way)
  chunk   u2  DATA: index of this chunk; NACK: 0
  chunks  u2  DATA: number of chunks of the message; NACK: number of u2 indices that follow
  length  u4  DATA: total message length in bytes; NACK: 0
A NACK's payload is the list of missing chunk indices (u2 each); an empty list means "all".
"""
from __future__ import annotations

import struct

MAGIC = b"NG"
GOSSIP_VERSION = 1
DATA = 1
NACK = 2
HEADER = struct.Struct("!2sBBHIHHI")
MAX_CHUNK = 1400
IP_UDP_OVERHEAD = 28          # IPv4 (20) + UDP (8) header bytes of every datagram on a link
assert 20 + 8 + HEADER.size + MAX_CHUNK <= 1500


def chunk_count(length: int) -> int:
    """Datagrams of one message of `length` bytes (an empty message still takes one)."""
    return max(1, -(-length // MAX_CHUNK))


def datagram_bytes(length: int) -> int:
    """UDP payload bytes of one message of `length` bytes: its chunks plus their headers."""
    return length + chunk_count(length) * HEADER.size


def data_datagrams(sender: int, rnd: int, msg: bytes) -> list[bytes]:
    n = chunk_count(len(msg))
    return [HEADER.pack(MAGIC, GOSSIP_VERSION, DATA, sender, rnd & 0xFFFFFFFF, c, n, len(msg))
            + msg[c * MAX_CHUNK:(c + 1) * MAX_CHUNK] for c in range(n)]


def nack_datagram(sender: int, rnd: int, missing: list[int]) -> bytes:
    missing = missing[:(MAX_CHUNK // 2)]
    return HEADER.pack(MAGIC, GOSSIP_VERSION, NACK, sender, rnd & 0xFFFFFFFF, 0, len(missing),
                       0) + struct.pack(f"!{len(missing)}H", *missing)


def parse(buf: bytes) -> tuple[int, int, int, int, int, int, bytes] | None:
    """(kind, sender, round, chunk, chunks, length, payload), or None for a foreign datagram."""
    if len(buf) < HEADER.size:
        return None
    magic, ver, kind, sender, rnd, chunk, chunks, length = HEADER.unpack_from(buf)
    if magic != MAGIC or ver != GOSSIP_VERSION or kind not in (DATA, NACK):
        return None
    return kind, sender, rnd, chunk, chunks, length, buf[HEADER.size:]


def nack_indices(payload: bytes, count: int) -> list[int]:
    count = min(count, len(payload) // 2)
    return list(struct.unpack(f"!{count}H", payload[:2 * count]))
