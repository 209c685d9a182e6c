"""Scapy layer for the NINA header, generated from nina.wire.HEADER_FIELDS.

`import nina.scapy_layer` binds it to UDP port 0xBEE0 (both directions), so `rdpcap` and
`Ether(raw)` decode NINA packets; the payload after the header stays Raw.
"""
from __future__ import annotations

import numpy as np
from scapy.fields import ByteField, IntField, ShortField
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

from nina.wire import HEADER_FIELDS, UDP_PORT

_FIELD_BY_SIZE = {1: ByteField, 2: ShortField, 4: IntField}


def _scapy_fields():
    out = []
    for name, dt, _ in HEADER_FIELDS:
        dtype = np.dtype(dt)
        if dtype.itemsize > 1 and dtype.byteorder != ">":
            raise TypeError(f"header field {name} must be big-endian for scapy")
        out.append(_FIELD_BY_SIZE[dtype.itemsize](name, 0))  # all unsigned, network order
    return out


class Nina(Packet):
    name = "NINA"
    fields_desc = _scapy_fields()


bind_layers(UDP, Nina, dport=UDP_PORT)
bind_layers(UDP, Nina, sport=UDP_PORT)
