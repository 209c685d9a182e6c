"""The choices of interface-mode I/O, importable without numba (`nina switch --help` reads
them; switch.io_raw and switch.packet_rings use them)."""

# ring: PACKET_MMAP rings, the receive ring in the TPACKET version RING_VERSION; ring-v2 /
# ring-v3 name the version; mmsg: recvmmsg/sendmmsg on plain sockets.
IO_KINDS = ("ring", "ring-v2", "ring-v3", "mmsg")
RING_VERSION = 2              # TPACKET_V2 receive: no block timer in the round trip (packet_rings)
DEFAULT_RX_MIB = 4            # receive ring per port; switch.packet_rings says what it holds
FRAMES_PER_MIB = 512          # frames a MiB of (TPACKET_V2) receive ring holds: 2 KiB slots


def ring_version(io: str) -> int | None:
    """The TPACKET version of the receive ring of I/O kind `io` (None: no ring)."""
    return {"ring": RING_VERSION, "ring-v2": 2, "ring-v3": 3}.get(io)
MAX_TX_SEGMENTS = 15          # results per GSO frame at most (packet_rings.TX_GSO_FRAME holds
                              # 15 of the largest, 528-byte, datagrams)
