"""What the switch decided for a packet, and the trace record it can emit for it.

Both data planes use these numbers: the P4 program (generated constants), the embedded switch,
the drop counters (indexed by Decision) and the trace tools.
"""
from __future__ import annotations

import enum

import numpy as np


class Decision(enum.IntEnum):
    FIRST = 0              # first contributor of (slot, ver): overwrote the accumulators
    AGGREGATE = 1          # added into the accumulators, slot not complete yet
    COMPLETE = 2           # last contributor: result multicast to the job's workers
    RETRANSMIT_REPLY = 3   # retransmission to a complete slot: result unicast back
    DROP_DUPLICATE = 4     # retransmission to an incomplete slot: consumed, nothing added
    DROP_MALFORMED = 5     # truncated header/payload, wrong payload length
    DROP_BAD_VERSION = 6   # protocol version unknown
    DROP_BAD_TYPE = 7      # message type not UPDATE (a switch never accepts RESULT)
    DROP_BAD_ENCODING = 8  # unknown encoding or not the job's encoding
    DROP_BAD_COUNT = 9     # element count larger than the encoding's capacity
    DROP_UNKNOWN_JOB = 10  # no job table entry
    DROP_BAD_WORKER = 11   # worker id >= the job's n
    DROP_UNREGISTERED = 12  # source (port, IP, UDP port) is not the admitted one for that id
    DROP_BAD_SLOT = 13     # slot outside the job's slot range
    DROP_INJECTED = 14     # dropped by the loss simulator (SwitchML-style drop knob)
    FORWARDED = 15         # not NINA: plain L2/L3 forwarding


N_DECISIONS = len(Decision)
DROP_DECISIONS = tuple(d for d in Decision if d.name.startswith("DROP_"))

# One trace record per processed packet; little-endian, fixed 32 bytes.
TRACE_DTYPE = np.dtype([
    ("time_ns", "<u8"),      # switch clock when the packet was processed
    ("ingress_port", "<u2"),
    ("job", "<u2"),
    ("slot", "<u2"),
    ("worker", "u1"),
    ("decision", "u1"),      # Decision
    ("ver", "u1"),
    ("exponent", "u1"),      # max exponent of (slot, ver) after this packet
    ("count", "u1"),         # contributions to (slot, ver) after this packet
    ("pad0", "u1"),
    ("bitmap", "<u4"),       # worker bitmap of (slot, ver) after this packet
    ("offset", "<u4"),       # the packet's chunk offset
    ("elements", "<u2"),     # the packet's element count
    ("pad1", "<u2"),
])
assert TRACE_DTYPE.itemsize == 32

# The P4 program mirrors each record to the monitor port as one frame: Ethernet header with
# this (IEEE local experimental) type, then the record's fields in TRACE_DTYPE order but
# big-endian (TRACE_WIRE_DTYPE); a collector converts with .astype(TRACE_DTYPE).
TRACE_ETHERTYPE = 0x88B5
TRACE_WIRE_DTYPE = TRACE_DTYPE.newbyteorder(">")
