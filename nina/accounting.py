"""Where the bytes of an all-reduce go: element payload, headers, padding, priming, result parts
and retransmissions, each way.

A single "bytes on the wire" figure mixes what a compressor saves with what the protocol costs:
every update is a fixed-size packet (16-byte header + 256-byte payload, so P4 can parse it), the
first window of every call is a priming exchange with no elements, a short last chunk is zero
filled, and NAT8 results without C_M come back as int32 sums in two parts. This module splits a
call's UDP payload bytes into those parts from the counts the all-reduce client already reports
(elements, chunks, priming packets, retransmissions, packets and bytes in), using only the wire
format of nina.wire, so the split stays right if the client changes how it sends.

Parts (bytes, UDP payloads as the transport counts them; IP/UDP/Ethernet headers excluded):
  payload   the elements themselves: 1 B per NAT8 code or C_M code, 4 B per INT32 value or sum
  padding   zero-filled element slots of packets that are not full (a short last chunk; the
            unused half of a NAT8 result's second part)
  headers   the NINA header of each packet that carries elements
  parts     down only: the headers of the extra packets a result is split into (NAT8 sums)
  priming   whole priming packets (header + empty payload) of the exponent agreement
  retx      up: retransmitted updates; down: results beyond the expected ones (answers to
            retransmissions, duplicates, stale or foreign results)
The parts of a direction add up to its byte count exactly (`check` says so otherwise).
"""
from __future__ import annotations

from nina.wire import (CAPACITY, FLAG_CM, FRAME_OVERHEAD, HEADER_LEN, Encoding, MsgType,
                       payload_layout, result_part_count, result_parts)

PARTS = ("payload", "padding", "headers", "parts", "priming", "retx")


def _size(msg_type: int, encoding: int, flags: int) -> tuple[int, int, int]:
    """(packet bytes, payload capacity in elements, bytes per element) of one packet kind."""
    lay = payload_layout(msg_type, encoding, flags)
    width = lay.dtype.itemsize
    return HEADER_LEN + lay.capacity * width, lay.capacity, width


def breakdown(encoding: int, cm: bool, elements: int, chunks: int, priming_packets: int,
              retransmissions: int, packets_in: int) -> dict:
    """The parts of one call (add the dicts of several calls with `add`). Keys: up_<part>,
    down_<part>, up_bytes, down_bytes."""
    enc = Encoding(encoding)
    flags = FLAG_CM if cm else 0
    up_size, k, w_up = _size(MsgType.UPDATE, enc, 0)
    down_size, cap_down, w_down = _size(MsgType.RESULT, enc, flags)
    assert k == CAPACITY[enc]
    out = {f"{d}_{p}": 0 for d in ("up", "down") for p in PARTS}
    if chunks == 0:
        out.update(up_bytes=0, down_bytes=0)
        return out
    # up: one data packet per chunk, priming packets, retransmissions (all the same size)
    out["up_payload"] = elements * w_up
    out["up_headers"] = chunks * HEADER_LEN
    out["up_padding"] = chunks * k * w_up - elements * w_up
    out["up_priming"] = priming_packets * up_size
    out["up_retx"] = retransmissions * up_size
    # down: result packets of the data chunks (one per part), one per priming round, the rest
    # answers retransmissions or is ignored
    data_results = _result_packets(enc, flags, elements, chunks)
    out["down_payload"] = elements * w_down
    out["down_headers"] = chunks * HEADER_LEN
    out["down_parts"] = (data_results - chunks) * HEADER_LEN
    out["down_padding"] = data_results * cap_down * w_down - elements * w_down
    out["down_priming"] = priming_packets * down_size
    extra = packets_in - data_results - priming_packets
    out["down_retx"] = max(0, extra) * down_size
    out["up_bytes"] = sum(out[f"up_{p}"] for p in PARTS)
    out["down_bytes"] = sum(out[f"down_{p}"] for p in PARTS)
    return out


def _result_packets(enc: Encoding, flags: int, elements: int, chunks: int) -> int:
    """Result packets of the data chunks: every chunk full except the last."""
    k = CAPACITY[enc]
    full, last = divmod(elements, k)
    if last == 0:
        full, last = full - 1, k
    if full + 1 != chunks:
        raise ValueError(f"{elements} elements do not make {chunks} chunks of {k}")
    parts = result_parts(enc, flags)
    per_full = parts
    per_last = sum(result_part_count(last, p, enc, flags) is not None for p in range(parts))
    return full * per_full + per_last


def from_call_stats(st: dict, encoding: int, cm: bool) -> dict:
    """breakdown() of one all-reduce call's CallStats.as_dict()."""
    return breakdown(encoding, cm, st["elements"], st["chunks"], st["priming_packets"],
                     st["retransmissions"], st["packets_in"])


def add(total: dict, parts: dict) -> dict:
    """Sum of breakdowns (of several calls, steps or workers), in place in `total`."""
    for key, v in parts.items():
        total[key] = total.get(key, 0) + v
    return total


def check(parts: dict, bytes_up: int, bytes_down: int) -> list[str]:
    """Problems if the parts do not add up to the measured byte counts (empty: they do)."""
    bad = []
    if parts["up_bytes"] != bytes_up:
        bad.append(f"up: parts add up to {parts['up_bytes']} B, the transport counted {bytes_up}")
    if parts["down_bytes"] != bytes_down:
        bad.append(f"down: parts add up to {parts['down_bytes']} B, the transport counted "
                   f"{bytes_down}")
    return bad


def bits_per_element(parts: dict, elements: int) -> dict:
    """Bits per element each way: of the payload alone and of everything sent."""
    if not elements:
        return {}
    return {"up_bits_per_element": 8 * parts["up_bytes"] / elements,
            "down_bits_per_element": 8 * parts["down_bytes"] / elements,
            "up_payload_bits_per_element": 8 * parts["up_payload"] / elements,
            "down_payload_bits_per_element": 8 * parts["down_payload"] / elements}


def priming_share(encoding: int, cm: bool, elements: int, window: int) -> float:
    """Fraction of a loss-free call's bytes (up + down) spent on priming: min(W, chunks)
    priming packets each way against the data packets."""
    k = CAPACITY[Encoding(encoding)]
    chunks = -(-elements // k)
    prim = min(window, chunks)
    p = breakdown(encoding, cm, elements, chunks, prim, 0,
                  _result_packets(Encoding(encoding), FLAG_CM if cm else 0, elements, chunks)
                  + prim)
    return (p["up_priming"] + p["down_priming"]) / (p["up_bytes"] + p["down_bytes"])


def link_bound_seconds(encoding: int, cm: bool, elements: int, window: int,
                       bw_mbit: float) -> float:
    """The time one worker's link needs for a loss-free call: the busier direction's frames
    (UDP payloads of the data and priming packets plus FRAME_OVERHEAD bytes of Ethernet, IPv4
    and UDP headers each, which a shaper on an Ethernet link counts) over the bandwidth. Both
    directions of a link run at once, so the bound is their maximum, not their sum."""
    enc = Encoding(encoding)
    chunks = -(-elements // CAPACITY[enc])
    if chunks == 0:
        return 0.0
    prim = min(window, chunks)
    results = _result_packets(enc, FLAG_CM if cm else 0, elements, chunks)
    p = breakdown(enc, cm, elements, chunks, prim, 0, results + prim)
    up = p["up_bytes"] + (chunks + prim) * FRAME_OVERHEAD
    down = p["down_bytes"] + (results + prim) * FRAME_OVERHEAD
    return max(up, down) * 8 / (bw_mbit * 1e6)
