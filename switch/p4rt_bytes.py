"""P4Runtime bytestrings (spec section 8.4), shared by the P4Runtime server and the controller:
the canonical form (no leading zero bytes, one byte for zero) is what both write; the padded
form and the empty string are accepted on read, as PI (BMv2's server) accepts them."""
from __future__ import annotations


def int_to_bytes(value: int, bitwidth: int | None = None) -> bytes:
    """Canonical bytestring of value; with `bitwidth`, a negative value is written as its two's
    complement within that width (the embedded registers hold signed sums)."""
    if bitwidth is not None:
        value &= (1 << bitwidth) - 1
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def bytes_to_int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def fits(value: int, bitwidth: int) -> bool:
    return value.bit_length() <= bitwidth
