"""The wire protocol module: round trips, validation errors, batches, scapy agreement."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from nina import wire
from nina.scapy_layer import Nina
from nina.wire import (FLAG_CM, FLAG_VER, BadField, Encoding, Header, MsgType, TruncatedPacket,
                       UDP_PORT)

headers = st.builds(
    Header,
    msg_type=st.sampled_from(list(MsgType)),
    encoding=st.sampled_from(list(Encoding)),
    flags=st.sampled_from([0, FLAG_VER, FLAG_CM, FLAG_VER | FLAG_CM]),
    job=st.integers(0, 0xFFFF),
    worker=st.integers(0, 31),
    exponent=st.integers(0, 255),
    slot=st.integers(0, 0xFFFF),
    count=st.integers(0, 64),
    offset=st.integers(0, 2**32 - 1),
)


@given(headers)
def test_header_round_trip(h):
    assert Header.unpack(h.pack()) == h


@settings(max_examples=200)
@given(headers)
def test_scapy_layer_agrees_with_definition(h):
    """The scapy layer decodes the bytes our packer writes, field by field, and re-encodes them."""
    frame = Ether() / IP() / UDP(sport=1234, dport=UDP_PORT) / h.pack()
    layer = Ether(raw(frame))[Nina]
    for name, _, _ in wire.HEADER_FIELDS:
        assert getattr(layer, name) == getattr(h, name), name
    built = raw(Nina(**{name: getattr(h, name) for name, _, _ in wire.HEADER_FIELDS}))
    assert built == h.pack()


def test_scapy_field_order_is_the_definition():
    assert [f.name for f in Nina.fields_desc] == [n for n, _, _ in wire.HEADER_FIELDS]
    assert len(raw(Nina())) == wire.HEADER_LEN


def test_header_layout_is_big_endian_and_fixed():
    h = Header(job=0x0102, slot=0x0304, count=0x0005, offset=0x0A0B0C0D, exponent=0x7E,
               worker=9, flags=FLAG_VER, encoding=Encoding.INT32, msg_type=MsgType.UPDATE)
    assert h.pack() == bytes([1, 1, 0, 1, 1, 2, 9, 0x7E, 3, 4, 0, 5, 0x0A, 0x0B, 0x0C, 0x0D])


@pytest.mark.parametrize("field,value", [
    ("version", 2), ("version", 0), ("msg_type", 0), ("msg_type", 9), ("encoding", 7), ("flags", 0x100),
    ("worker", 32), ("job", 1 << 16), ("offset", -1),
])
def test_invalid_header_names_the_field(field, value):
    with pytest.raises(BadField) as e:
        Header(**{field: value}).pack()
    assert e.value.field == field


def test_count_over_capacity_rejected():
    with pytest.raises(BadField) as e:
        Header(encoding=Encoding.INT32, count=65).pack()
    assert e.value.field == "count"
    Header(encoding=Encoding.NAT8, count=256).pack()  # exactly the capacity is fine


def test_unpack_rejects_bad_bytes():
    good = wire.pack_packet(Header(count=2), np.array([1, 2], np.uint8))
    with pytest.raises(TruncatedPacket) as e:
        wire.parse_packet(good[:10])
    assert e.value.field == "header"
    with pytest.raises(TruncatedPacket) as e:
        wire.parse_packet(good[:-1])
    assert e.value.field == "payload"
    with pytest.raises(BadField) as e:
        wire.parse_packet(good + b"\0")
    assert e.value.field == "payload"
    with pytest.raises(BadField) as e:
        wire.parse_packet(bytes([3]) + good[1:])
    assert e.value.field == "version"


@pytest.mark.parametrize("msg_type,encoding,flags,nbytes,capacity", [
    (MsgType.UPDATE, Encoding.INT32, 0, 256, 64),
    (MsgType.UPDATE, Encoding.NAT8, 0, 256, 256),
    (MsgType.RESULT, Encoding.INT32, 0, 256, 64),
    (MsgType.RESULT, Encoding.NAT8, 0, 512, 128),   # one of two parts
    (MsgType.RESULT, Encoding.NAT8, FLAG_CM, 256, 256),
])
def test_payload_layouts(msg_type, encoding, flags, nbytes, capacity):
    layout = wire.payload_layout(msg_type, encoding, flags)
    assert (layout.nbytes, layout.capacity) == (nbytes, capacity)
    h = Header(msg_type=msg_type, encoding=encoding, flags=flags, count=3)
    values = np.array([5, 0, 7])
    pkt = wire.pack_packet(h, values)
    assert len(pkt) == wire.HEADER_LEN + nbytes
    h2, v2 = wire.parse_packet(pkt)
    assert h2 == h and v2.tolist() == [5, 0, 7]


def test_pack_packet_count_must_match_values():
    with pytest.raises(BadField):
        wire.pack_packet(Header(count=3), np.zeros(2, np.uint8))


@given(st.integers(1, 40), st.sampled_from(list(Encoding)), st.data())
def test_batch_round_trip(n, enc, data):
    batch = wire.empty_batch(n, MsgType.UPDATE, enc)
    cap = wire.CAPACITY[enc]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    batch["hdr"]["slot"] = rng.integers(0, 1000, n)
    batch["hdr"]["count"] = rng.integers(0, cap + 1, n)
    batch["payload"] = rng.integers(0, 100, (n, cap))
    bufs = wire.pack_batch(batch)
    assert all(len(b) == batch.dtype.itemsize for b in bufs)
    back = wire.unpack_batch(bufs, MsgType.UPDATE, enc)
    assert back.tobytes() == batch.tobytes()
    # a single packet of the batch parses with the single-packet path identically
    h, v = wire.parse_packet(bufs[0])
    assert h.slot == batch["hdr"]["slot"][0] and v.tolist() == \
        batch["payload"][0][: h.count].tolist()


def test_unpack_batch_names_bad_packet():
    batch = wire.empty_batch(3, MsgType.UPDATE, Encoding.NAT8)
    batch["hdr"]["worker"][2] = 40
    with pytest.raises(BadField, match="packet 2") as e:
        wire.unpack_batch(wire.pack_batch(batch), MsgType.UPDATE, Encoding.NAT8)
    assert e.value.field == "worker"



@pytest.mark.parametrize("field,good,bad", [
    ("worker", wire.MAX_WORKERS - 1, wire.MAX_WORKERS),
    ("count", None, None),      # the encoding's capacity, and one more
])
@pytest.mark.parametrize("enc", list(Encoding))
def test_batch_and_single_packet_checks_agree_at_the_boundaries(field, good, bad, enc):
    """The last valid value of a field is accepted and the first invalid one refused, by the
    batch path and the single-packet path alike."""
    if field == "count":
        good, bad = wire.CAPACITY[enc], wire.CAPACITY[enc] + 1
    batch = wire.empty_batch(2, MsgType.UPDATE, enc)
    batch["hdr"][field][1] = good
    back = wire.unpack_batch(wire.pack_batch(batch), MsgType.UPDATE, enc)
    assert back["hdr"][field][1] == good
    assert getattr(wire.parse_packet(wire.pack_batch(batch)[1])[0], field) == good
    batch["hdr"][field][1] = bad
    pkts = wire.pack_batch(batch)
    with pytest.raises(BadField, match="packet 1") as e:
        wire.unpack_batch(pkts, MsgType.UPDATE, enc)
    assert e.value.field == field
    with pytest.raises(BadField) as e:
        wire.parse_packet(pkts[1])
    assert e.value.field == field


def test_batch_of_another_message_type_is_refused():
    """An INT32 update has the size of an INT32 result: only the type field tells them apart,
    in either direction."""
    for sent, expected in ((MsgType.UPDATE, MsgType.RESULT), (MsgType.RESULT, MsgType.UPDATE)):
        batch = wire.empty_batch(2, sent, Encoding.INT32)
        with pytest.raises(BadField) as e:
            wire.unpack_batch(wire.pack_batch(batch), expected, Encoding.INT32)
        assert e.value.field == "msg_type"


def test_empty_batch_defaults_to_no_flags_and_ver_is_the_low_flag_bit():
    assert (wire.empty_batch(3, MsgType.UPDATE, Encoding.NAT8)["hdr"]["flags"] == 0).all()
    for rnd in (0, 1, 2, 3, 126, 127):
        for cm in (0, FLAG_CM):
            h = Header(flags=wire.round_flags(rnd) | cm)
            assert (h.ver, h.round) == (rnd & 1, rnd)

def test_headroom():
    for n in range(1, 33):
        s = wire.headroom_shift(n)
        assert n * 2**s <= 2**30 < 2**31  # never wraps a signed 32-bit accumulator
        assert s == 30 - int(np.ceil(np.log2(n)))  # DESIGN.md: ceil(log2 n) + 1 headroom bits
    with pytest.raises(ValueError):
        wire.headroom_shift(33)


def test_nat8_to_int_semantics():
    s = 10
    codes = np.array([0, 1, 10, 11, 0x7F, 0x80 | 3, 0x80 | 0x7F], np.uint8)
    assert wire.nat8_to_int(codes, s).tolist() == [1024, 512, 1, 0, 0, -128, 0]


@given(st.lists(st.integers(-(2**30), 2**30), min_size=1, max_size=50), st.integers(0, 2**32 - 1))
def test_cm_codes_are_neighbouring_powers(sums, seed):
    sums = np.array(sums, np.int64)
    u = np.random.default_rng(seed).integers(0, 2**32, sums.size, dtype=np.uint64)
    vals = wire.cm_codes_to_int(wire.int_to_cm_codes(sums, u))
    mag, got = np.abs(sums), np.abs(vals)
    assert (np.sign(vals) == np.sign(sums)).all()
    nz = mag > 0
    lo = 2 ** np.floor(np.log2(mag[nz])).astype(np.int64)
    assert ((got[nz] == lo) | (got[nz] == 2 * lo)).all()
    # exact powers of two are fixed points, whatever the random draw: retransmissions agree
    pw = np.where(nz, vals, 0)
    assert (wire.cm_codes_to_int(wire.int_to_cm_codes(pw, u ^ 0xFFFFFFFF)) == pw).all()



@pytest.mark.parametrize("u", [0, 0xFFFFFFFF, 0x55555555])
def test_cm_of_every_power_of_two_is_itself(u):
    """2^p and -2^p (p = 0..30) are fixed points of C_M for any random draw, the extreme
    draws included (a retransmission reply re-encodes the written-back powers)."""
    pw = np.array([1 << p for p in range(31)] + [-(1 << p) for p in range(31)], np.int64)
    codes = wire.int_to_cm_codes(pw, np.full(pw.size, u, np.uint64))
    np.testing.assert_array_equal(wire.cm_codes_to_int(codes), pw)
    # and the rounding probability is the remaining fraction exactly: 3 = 2 + 1 rounds up
    # to 4 iff the draw's low bit is below 1, i.e. is 0
    three = np.full(2, 3, np.int64)
    assert wire.cm_codes_to_int(wire.int_to_cm_codes(three, np.array([0, 1]))).tolist() == [4, 2]

def test_cm_unbiased():
    x = np.full(200_000, 3 * 2**20 + 12345, np.int64)
    u = np.random.default_rng(1).integers(0, 2**32, x.size, dtype=np.uint64)
    v = wire.cm_codes_to_int(wire.int_to_cm_codes(x, u)).astype(np.float64)
    # each draw is 2^21 or 2^22; standard error of the mean from the sample
    se = v.std(ddof=1) / np.sqrt(v.size)
    assert abs(v.mean() - x[0]) < 5 * se


def test_round_numbers_ride_in_flags():
    seen = set()
    for r in range(wire.ROUND_MOD):
        f = wire.round_flags(r)
        assert wire.round_of(f) == r and (f & FLAG_VER) == (r & 1) and not f & FLAG_CM
        assert wire.round_of(f | FLAG_CM) == r  # the CM bit does not disturb the round
        seen.add(f)
    assert len(seen) == wire.ROUND_MOD
    assert wire.round_flags(wire.ROUND_MOD + 5) == wire.round_flags(5)


@pytest.mark.parametrize("encoding,flags,count,want", [
    (Encoding.NAT8, 0, 256, [128, 128]),
    (Encoding.NAT8, 0, 200, [128, 72]),
    (Encoding.NAT8, 0, 129, [128, 1]),
    (Encoding.NAT8, 0, 128, [128, None]),
    (Encoding.NAT8, 0, 5, [5, None]),
    (Encoding.NAT8, 0, 0, [0, None]),        # a priming result: part 0 only
    (Encoding.NAT8, FLAG_CM, 256, [256]),
    (Encoding.INT32, 0, 64, [64]),
    (Encoding.INT32, 0, 0, [0]),
])
def test_result_parts_split_only_nat8_sums(encoding, flags, count, want):
    parts = wire.result_parts(encoding, flags)
    assert [wire.result_part_count(count, p, encoding, flags) for p in range(parts)] == want
    assert wire.result_part_count(count, parts, encoding, flags) is None
    # a result part never grows the 256-byte update by more than BMv2's 512 bytes
    assert wire.payload_layout(MsgType.RESULT, encoding, flags).nbytes - 256 <= 512


def test_plain_int_encodings_and_the_default_flags():
    """The codec functions take the encoding as a plain int (as it comes off the wire) and
    their flags default to none."""
    assert wire.result_parts(1) == wire.result_parts(Encoding.NAT8) == 2
    assert wire.result_parts(1, FLAG_CM) == wire.result_parts(0) == 1
    assert wire.result_part_count(200, 1, 1) == 72
    assert wire.payload_layout(MsgType.RESULT, 1).capacity == wire.RESULT_PART_SUMS
    assert Header().flags == 0 and Header().ver == 0


@pytest.mark.parametrize("worker", [32, 33, 255])
def test_every_worker_id_beyond_the_bitmap_is_refused(worker):
    with pytest.raises(BadField) as e:
        Header(worker=worker).pack()
    assert e.value.field == "worker"


def test_payload_padding_is_the_zero_element_of_its_type():
    """Unused payload elements are zero codes (0x7F) in NAT8 payloads and 0 in int32 ones,
    for one packet and for a batch."""
    nat8 = wire.pack_packet(Header(count=2), np.array([1, 2], np.uint8))
    assert nat8[wire.HEADER_LEN + 2:] == bytes([wire.NAT8_ZERO]) * 254
    i32 = wire.pack_packet(Header(encoding=Encoding.INT32, count=1), np.array([5]))
    assert i32[wire.HEADER_LEN + 4:] == bytes(252)
    assert (wire.empty_batch(2, MsgType.UPDATE, Encoding.NAT8)["payload"] == wire.NAT8_ZERO).all()
    assert (wire.empty_batch(2, MsgType.UPDATE, Encoding.INT32)["payload"] == 0).all()
    assert (wire.empty_batch(2, MsgType.RESULT, Encoding.NAT8)["payload"] == 0).all()


@pytest.mark.parametrize("cm", [0, FLAG_CM])
def test_batches_carry_any_round_and_refuse_the_other_cm_kind(cm):
    batch = wire.empty_batch(wire.ROUND_MOD, MsgType.RESULT, Encoding.NAT8, cm)
    batch["hdr"]["flags"] = [wire.round_flags(r) | cm for r in range(wire.ROUND_MOD)]
    back = wire.unpack_batch(wire.pack_batch(batch), MsgType.RESULT, Encoding.NAT8, cm)
    assert [wire.round_of(f) for f in back["hdr"]["flags"]] == list(range(wire.ROUND_MOD))
    # a packet whose C_M bit disagrees with the kind asked for (updates: same size either way)
    batch = wire.empty_batch(2, MsgType.UPDATE, Encoding.NAT8, cm)
    batch["hdr"]["flags"][1] ^= FLAG_CM
    with pytest.raises(BadField) as e:
        wire.unpack_batch(wire.pack_batch(batch), MsgType.UPDATE, Encoding.NAT8, cm)
    assert e.value.field == "flags"


@pytest.mark.parametrize("field,value,enc", [("version", 0, Encoding.NAT8),
                                             ("version", 2, Encoding.NAT8),
                                             ("encoding", 0, Encoding.NAT8),
                                             ("encoding", 1, Encoding.INT32)])
def test_batch_refuses_a_lower_or_higher_version_or_encoding(field, value, enc):
    """INT32 and NAT8 updates have the same size: only the encoding field tells them apart."""
    batch = wire.empty_batch(2, MsgType.UPDATE, enc)
    batch["hdr"][field][1] = value
    with pytest.raises(BadField, match="packet 1") as e:
        wire.unpack_batch(wire.pack_batch(batch), MsgType.UPDATE, enc)
    assert e.value.field == field


def test_batch_refuses_a_packet_of_the_wrong_size():
    good = wire.pack_batch(wire.empty_batch(2, MsgType.UPDATE, Encoding.NAT8))
    with pytest.raises(TruncatedPacket, match="packet 1"):
        wire.unpack_batch([good[0], good[1][:-1]], MsgType.UPDATE, Encoding.NAT8)
    with pytest.raises(BadField, match="packet 0"):
        wire.unpack_batch([good[0] + b"\0", good[1]], MsgType.UPDATE, Encoding.NAT8)


def test_a_nat8_result_packet_byte_for_byte():
    """A golden packet in docs/protocol.md's terms: RESULT is type 2, NAT8 encoding 1, the C_M
    flag bit 1, round 127 fills every round bit of flags (0xFD), the zero code is 0x7F."""
    h = Header(msg_type=MsgType.RESULT, encoding=Encoding.NAT8,
               flags=wire.round_flags(127) | FLAG_CM, job=7, worker=3, exponent=130, slot=2,
               count=2, offset=512)
    pkt = wire.pack_packet(h, np.array([0x81, 0x05], np.uint8))
    assert pkt[:16] == bytes([1, 2, 1, 0xFF, 0, 7, 3, 130, 0, 2, 0, 2, 0, 0, 2, 0])
    assert pkt[16:] == bytes([0x81, 0x05]) + b"\x7f" * 254
    assert wire.round_of(0xFD) == 127 and wire.round_flags(128) == 0   # rounds are mod 128


def test_header_and_batch_defaults():
    h = Header()
    assert [getattr(h, f) for f, _, _ in wire.HEADER_FIELDS] == \
        [wire.VERSION, MsgType.UPDATE, Encoding.NAT8, 0, 0, 0, 0, 0, 0, 0]
    assert wire.batch_dtype(MsgType.RESULT, Encoding.NAT8).itemsize == 16 + 512   # no C_M


def test_pack_packet_refuses_more_values_than_the_count():
    with pytest.raises(BadField):
        wire.pack_packet(Header(count=1), np.zeros(2, np.uint8))


def test_cm_of_zero_is_the_zero_code():
    assert wire.int_to_cm_codes(np.zeros(3, np.int64), np.array([0, 1, 0xFFFFFFFF])).tolist() \
        == [wire.NAT8_ZERO] * 3
