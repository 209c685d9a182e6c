"""Generate NINA's P4_16 v1model program for BMv2 simple_switch_grpc: p4/nina.p4, which wires
the pipeline, and one file per control (and for the constants, headers and metadata) in p4/src/.

Every constant, field layout and control-plane name comes from the contracts: nina/wire.py
(header, payload layouts, encodings), nina/decisions.py (decision codes, trace record) and
nina/p4spec.py (tables, keys, actions, params, registers, counters). The per-element code
(256 accumulators, NAT8 code conversion, C_M rounding, INT32 adds) is emitted by loops.
One file per control so that a change (a drop reason, a header field) lands in the one or two
generated files a reviewer reads; SRC_FILES below lists them.

    python p4/gen_p4.py                 # writes p4/nina.p4 and p4/src/*.p4
    python p4/gen_p4.py --out DIR       # writes DIR/nina.p4 and DIR/src/ (the up-to-date test)
    python p4/gen_p4.py --check         # exit 1 when a file in p4/ differs from the generator

p4/README.md explains how the generated program is organised.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from string import Template
from typing import Callable

import numpy as np

from nina import p4spec
from nina.decisions import TRACE_DTYPE, TRACE_ETHERTYPE, Decision, N_DECISIONS
from nina.wire import (CAPACITY, FLAG_CM, FLAG_VER, HEADER_FIELDS, HEADER_LEN, MAX_WORKERS,
                       NAT8_MAG, NAT8_SIGN, NAT8_ZERO, RESULT_PART_SUMS, RID_PART_SHIFT, ROUND_MOD,
                       UDP_PORT, VERSION, Encoding, Layout, MsgType, U8, I32, payload_layout,
                       result_part_count, result_parts, round_flags, round_of)

OUT_DIR = Path(__file__).resolve().parent   # p4/: nina.p4 and src/

ETH_LEN, IPV4_LEN, UDP_LEN = 14, 20, 8   # IPV4_LEN: without options (what results carry)
IPV4_MAX_OPTIONS_BITS = 320               # ihl 15: 40 bytes of options
RESULT_TTL = 64
# flags bits that carry the round number (VER and bits 2-7): every bit but CM
ROUND_FLAGS = 0xFF & ~FLAG_CM
ROUND_HIGH_MASK = ROUND_FLAGS & ~FLAG_VER
assert {round_flags(r) for r in range(ROUND_MOD)} == {f & ROUND_FLAGS for f in range(256)}
TRACE_FIELD_LIST = 1                     # @field_list index preserved into the trace clone
# v1model's standard_metadata.instance_type values (BMv2 simple_switch)
INSTANCE_INGRESS_CLONE = 1

# ---- the payload shapes (wire.payload_layout), one P4 header each ----
# (instance name, type name, layout); a result reuses the update's shape where they agree.
UPD_INT32 = payload_layout(MsgType.UPDATE, Encoding.INT32)
UPD_NAT8 = payload_layout(MsgType.UPDATE, Encoding.NAT8)
RES_PART = payload_layout(MsgType.RESULT, Encoding.NAT8, 0)
# A NAT8 chunk's 256 sums: built in ingress, never emitted whole; egress moves the replica's
# part into hdr.part (BMv2 lets a packet grow by at most 512 bytes).
SUMS = Layout(I32, UPD_NAT8.capacity)
N_PARTS = result_parts(Encoding.NAT8, 0)
assert payload_layout(MsgType.RESULT, Encoding.INT32) == UPD_INT32
assert payload_layout(MsgType.RESULT, Encoding.INT32, FLAG_CM) == UPD_INT32
assert payload_layout(MsgType.RESULT, Encoding.NAT8, FLAG_CM) == UPD_NAT8
assert UPD_INT32.dtype == I32 and UPD_NAT8.dtype == U8 and RES_PART.dtype == I32
assert SUMS.capacity == p4spec.N_ACCUMULATORS and RES_PART.capacity == RESULT_PART_SUMS
assert N_PARTS * RESULT_PART_SUMS == SUMS.capacity
assert result_parts(Encoding.INT32, 0) == result_parts(Encoding.NAT8, FLAG_CM) == 1
assert RES_PART.nbytes - UPD_NAT8.nbytes <= 512   # BMv2's growth limit
assert CAPACITY[Encoding.INT32] == UPD_INT32.capacity <= p4spec.N_ACCUMULATORS
# Every update has the same payload size, and the switch accepts nothing but updates: a NINA
# packet of any other UDP length is malformed, whatever its header says (as the embedded switch).
UPDATE_PAYLOAD_LEN = UPD_INT32.nbytes
assert all(payload_layout(MsgType.UPDATE, e).nbytes == UPDATE_PAYLOAD_LEN for e in Encoding)
PAYLOADS = (("words", "words_t", UPD_INT32),   # INT32 update and INT32 result: int32 values
            ("codes", "codes_t", UPD_NAT8),    # NAT8 update and C_M result: 8-bit codes
            ("sums", "sums_t", SUMS),          # NAT8 sums (ingress only, never emitted)
            ("part", "part_t", RES_PART))      # a part of a NAT8 result without C_M

# A wider payload layout rule than the three shapes would need new parser states: fail loudly.
for _mt in (0, *MsgType):
    for _enc in range(4):
        for _fl in (0, FLAG_CM):
            _l = payload_layout(_mt, _enc, _fl)
            if _enc == Encoding.INT32:
                assert _l == UPD_INT32
            elif _mt == MsgType.RESULT and not _fl & FLAG_CM:
                assert _l == RES_PART
            else:
                assert _l == UPD_NAT8

ETHERNET = (("dstAddr", 48), ("srcAddr", 48), ("etherType", 16))
IPV4 = (("version", 4), ("ihl", 4), ("diffserv", 8), ("totalLen", 16), ("identification", 16),
        ("flags", 3), ("fragOffset", 13), ("ttl", 8), ("protocol", 8), ("hdrChecksum", 16),
        ("srcAddr", 32), ("dstAddr", 32))
UDP = (("srcPort", 16), ("dstPort", 16), ("length", 16), ("checksum", 16))
NINA = tuple((name, np.dtype(dt).itemsize * 8) for name, dt, _ in HEADER_FIELDS)
TRACE = tuple((name, TRACE_DTYPE.fields[name][0].itemsize * 8) for name in TRACE_DTYPE.names)
TRACE_LEN = TRACE_DTYPE.itemsize
assert sum(b for _, b in NINA) == 8 * HEADER_LEN

# User metadata: (name, bits, comment). The job params come from p4spec's set_job.
JOB_PARAMS = tuple((p.name, p.bits) for p in p4spec.JOB_TABLE.params)
# Trace fields carried into the I2E clone (all of TRACE_DTYPE except padding).
TRACE_META = tuple((f"tr_{n}", b) for n, b in TRACE if not n.startswith("pad"))

# Widths of every expression a table key may use, to check p4spec against the headers.
KEY_WIDTHS = {
    **{f"hdr.ethernet.{n}": b for n, b in ETHERNET},
    **{f"hdr.ipv4.{n}": b for n, b in IPV4},
    **{f"hdr.udp.{n}": b for n, b in UDP},
    **{f"hdr.nina.{n}": b for n, b in NINA},
    "standard_metadata.ingress_port": 9,
    "meta.job": 16,
    "meta.dst_worker": 8,
}


def _local(qualified: str, control: str) -> str:
    """'NinaIngress.job_table' -> 'job_table' (checking it belongs to `control`)."""
    prefix = control + "."
    assert qualified.startswith(prefix), (qualified, control)
    return qualified[len(prefix):]


def _lines(items, indent: int) -> str:
    pad = " " * indent
    return "\n".join(pad + s if s else "" for s in items)


def header_type(name: str, fields, comment: str) -> str:
    body = _lines((f"bit<{b}> {n};" for n, b in fields), 4)
    return f"// {comment}\nheader {name} {{\n{body}\n}}\n"


def payload_type(type_name: str, layout, comment: str) -> str:
    bits = layout.dtype.itemsize * 8
    return header_type(type_name, [(f"e{i}", bits) for i in range(layout.capacity)], comment)


def const_block() -> str:
    out = [
        f"const bit<16> NINA_UDP_PORT = 0x{UDP_PORT:04X};",
        f"const bit<8>  NINA_VERSION = {VERSION};",
        *[f"const bit<8>  MSG_{m.name} = {int(m)};" for m in MsgType],
        *[f"const bit<8>  ENC_{e.name} = {int(e)};" for e in Encoding],
        f"const bit<8>  FLAG_VER = 0x{FLAG_VER:02X};",
        f"const bit<8>  FLAG_CM = 0x{FLAG_CM:02X};",
        f"const bit<8>  ROUND_FLAGS = 0x{ROUND_FLAGS:02X};   // flags bits of the round number",
        f"const bit<8>  ROUND_HIGH_MASK = 0x{ROUND_HIGH_MASK:02X};   // round >> 1 in bits 2-7",
        f"const bit<8>  ROUND_MASK = 0x{ROUND_MOD - 1:02X};   // rounds count modulo {ROUND_MOD}",
        f"const bit<8>  NAT8_MAG = 0x{NAT8_MAG:02X};",
        f"const bit<8>  NAT8_ZERO = 0x{NAT8_ZERO:02X};",
        *[f"const bit<16> CAPACITY_{e.name} = {CAPACITY[e]};" for e in Encoding],
        f"const bit<16> NINA_HEADER_LEN = {HEADER_LEN};",
        f"const bit<16> UPDATE_PAYLOAD_LEN = {UPDATE_PAYLOAD_LEN};   // both update encodings",
        f"const bit<8>  MAX_WORKERS = {MAX_WORKERS};   // bits of the bitmap",
        f"const bit<32> POOL_SLOTS = {p4spec.POOL_SLOTS};",
        f"const bit<16> ETH_LEN = {ETH_LEN};",
        f"const bit<16> IPV4_LEN = {IPV4_LEN};",
        f"const bit<16> UDP_LEN = {UDP_LEN};",
        f"const bit<8>  RESULT_TTL = {RESULT_TTL};",
        "",
        "// nina.decisions.Decision: index of the `decisions` counter and the trace's decision",
        *[f"const bit<8>  D_{d.name} = {int(d)};" for d in Decision],
        "",
        f"const bit<32> REGISTER_SIZE = {p4spec.REGISTER_SIZE};   // (slot_base + slot) * 2 + ver",
        f"const bit<32> N_DECISIONS = {N_DECISIONS};",
        f"const bit<32> TRACE_CLONE_SESSION = {p4spec.TRACE_CLONE_SESSION};",
        f"const bit<8>  TRACE_FIELD_LIST = {TRACE_FIELD_LIST};",
        f"const bit<16> TRACE_ETHERTYPE = 0x{TRACE_ETHERTYPE:04X};",
        f"const bit<32> TRACE_FRAME_LEN = {ETH_LEN + TRACE_LEN};   // Ethernet + trace record",
        f"const bit<32> INSTANCE_INGRESS_CLONE = {INSTANCE_INGRESS_CLONE};",
        f"const bit<16> RID_WORKER_MASK = 0x{(1 << RID_PART_SHIFT) - 1:X};   // replica id: "
        f"part << {RID_PART_SHIFT} | worker",
        f"const bit<16> RESULT_PART_SUMS = {RESULT_PART_SUMS};",
    ]
    return "\n".join(out) + "\n"


def metadata_struct() -> str:
    rows = [
        ("bit<16>", "job", "NinaEgress.worker_addr key: the packet's job"),
        ("bit<8>", "dst_worker", "NinaEgress.worker_addr key: who this copy is for"),
        ("bit<1>", "job_hit", "job_table hit (set_job ran)"),
        *[(f"bit<{b}>", n, "set_job parameter") for n, b in JOB_PARAMS],
        ("bit<1>", "admitted", "worker_table hit (admit ran)"),
        ("bit<16>", "loss_draw", "loss simulator's uniform draw"),
        ("bit<1>", "accepted", "passed every check of step 1"),
        ("bit<8>", "decision", "nina.decisions.Decision of this packet"),
        ("bit<32>", "idx", "register index (slot_base + slot) * 2 + ver"),
        ("bit<1>", "first", "first contributor: overwrite instead of add"),
        ("bit<1>", "do_update", "add this packet's payload into the accumulators"),
        ("bit<1>", "send_result", "COMPLETE (multicast) or RETRANSMIT_REPLY (unicast)"),
        ("bit<1>", "is_result", "egress: this copy is a result to rewrite per worker"),
        ("bit<1>", "reply_only", "RETRANSMIT_REPLY: only the sender's replicas are kept"),
        ("bit<8>", "reply_to", "the sender of a RETRANSMIT_REPLY"),
        ("bit<8>", "part", "egress: the result part this replica carries"),
        ("bit<8>", "res_exp", "max_exp of (slot, ver) after this packet"),
    ]
    lines = [f"{t:<8} {n};{'':<{max(1, 14 - len(n))}}// {c}" for t, n, c in rows]
    lines.append("// trace record of this packet, preserved into the trace clone")
    lines += [f"@field_list({TRACE_FIELD_LIST}) bit<{b}> {n};" for n, b in TRACE_META]
    return "struct metadata_t {\n" + _lines(lines, 4) + "\n}\n"


def headers_struct() -> str:
    rows = [("ethernet_t", "ethernet"), ("trace_t", "trace"), ("ipv4_t", "ipv4"),
            ("ipv4_options_t", "ipv4_options"), ("udp_t", "udp"), ("nina_t", "nina")] + [(t, n) for n, t, _ in PAYLOADS]
    return "struct headers_t {\n" + _lines((f"{t} {n};" for t, n in rows), 4) + "\n}\n"


# ---------------------------------------------------------------- parser
PARSER = Template("""\
parser NinaParser(packet_in packet, out headers_t hdr, inout metadata_t meta,
                  inout standard_metadata_t standard_metadata) {
    state start {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.etherType) {
            0x0800: parse_ipv4;
            default: accept;
        }
    }
    // IPv4/UDP as the embedded switch reads it: options are skipped; a fragment addressed to
    // the NINA port is parsed on and dropped as malformed in ingress.
    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        transition select(hdr.ipv4.version, hdr.ipv4.protocol) {
            (4w4, 8w17): parse_ipv4_ihl;
            default: accept;
        }
    }
    state parse_ipv4_ihl {
        transition select(hdr.ipv4.ihl) {
            4w5: parse_udp;
            4w0 &&& 4w0xC: accept;   // ihl 0..3: not a valid IPv4 header
            4w4: accept;
            default: parse_ipv4_options;
        }
    }
    state parse_ipv4_options {
        packet.extract(hdr.ipv4_options, (bit<32>)(((bit<16>)hdr.ipv4.ihl - 16w5) << 5));
        transition parse_udp;
    }
    state parse_udp {
        packet.extract(hdr.udp);
        transition select(hdr.udp.dstPort) {
            NINA_UDP_PORT: parse_nina;
            default: accept;
        }
    }
    // A short header or payload stops the parser with PacketTooShort; ingress sees
    // standard_metadata.parser_error and counts DROP_MALFORMED. Only updates' payloads are
    // extracted (the switch never consumes anything else); their lengths are checked in ingress.
    state parse_nina {
        packet.extract(hdr.nina);
        transition select(hdr.nina.msg_type, hdr.nina.encoding) {
            (MSG_UPDATE, ENC_INT32): parse_words;
            (MSG_UPDATE, ENC_NAT8): parse_codes;
            default: accept;
        }
    }
    state parse_words {
        packet.extract(hdr.words);
        transition accept;
    }
    state parse_codes {
        packet.extract(hdr.codes);
        transition accept;
    }
}
""")


# ---------------------------------------------------------------- ingress: plain forwarding
def table_decl(spec: p4spec.Table, control: str, default: str, indent: int = 4) -> str:
    keys = []
    for name, bits in spec.keys:
        assert KEY_WIDTHS[name] == bits, (spec.name, name, bits)
        keys.append(f'{name}: exact @name("{name}");')
    body = [
        "key = {", *("    " + k for k in keys), "}",
        "actions = {",
        f"    {_local(spec.action, control)};",
        f"    @defaultonly {default};",
        "}",
        f"default_action = {default}();",
        f"size = {spec.size};",
    ]
    return (" " * indent + f'@name(".{spec.name}")\n' + " " * indent
            + f"table {_local(spec.name, control)} {{\n" + _lines(body, indent + 4)
            + "\n" + " " * indent + "}\n")


def action_decl(spec: p4spec.Table, control: str, body: list[str], indent: int = 4) -> str:
    params = ", ".join(f"bit<{p.bits}> {p.name}" for p in spec.params)
    return (" " * indent + f'@name(".{spec.action}")\n' + " " * indent
            + f"action {_local(spec.action, control)}({params}) {{\n"
            + _lines(body, indent + 4) + "\n" + " " * indent + "}\n")


def l2_forward_control() -> str:
    spec = p4spec.L2_FORWARD
    assert [p.name for p in spec.params] == ["port"]
    return f"""\
// Non-NINA traffic (ARP is static in the rack): forward by destination MAC, else drop.
control L2Forward(in headers_t hdr, inout standard_metadata_t standard_metadata) {{
{action_decl(spec, p4spec.INGRESS, ["standard_metadata.egress_spec = port;"])}
    @name(".{p4spec.INGRESS}.drop")
    action drop() {{
        mark_to_drop(standard_metadata);
    }}

{table_decl(spec, p4spec.INGRESS, "drop")}
    apply {{
        l2_forward.apply();
    }}
}}
"""


# ---------------------------------------------------------------- ingress: admission
def _capacity_expr() -> str:
    encs = list(Encoding)
    expr = f"CAPACITY_{encs[-1].name}"
    for e in reversed(encs[:-1]):
        expr = f"(hdr.nina.encoding == ENC_{e.name}) ? CAPACITY_{e.name} : ({expr})"
    return expr


# Step 1 of the protocol's switch algorithm, in its order; INJECTED (the loss simulator) is
# last and needs a random draw, so it is emitted after this chain.
CHECKS = (
    (Decision.DROP_MALFORMED,
     "standard_metadata.parser_error != error.NoError || !hdr.nina.isValid() ||\n"
     "    hdr.udp.length != UDP_LEN + NINA_HEADER_LEN + UPDATE_PAYLOAD_LEN ||\n"
     "    ((bit<16>)hdr.ipv4.ihl << 2) + hdr.udp.length > hdr.ipv4.totalLen ||\n"
     "    standard_metadata.packet_length < (bit<32>)ETH_LEN + (bit<32>)hdr.ipv4.totalLen ||\n"
     "    (hdr.ipv4.flags & 3w1) != 0 || hdr.ipv4.fragOffset != 0"),
    (Decision.DROP_BAD_VERSION, "hdr.nina.version != NINA_VERSION"),
    (Decision.DROP_BAD_TYPE, f"hdr.nina.msg_type != MSG_{MsgType.UPDATE.name}"),
    (Decision.DROP_BAD_ENCODING,
     "(" + " && ".join(f"hdr.nina.encoding != ENC_{e.name}" for e in Encoding) + ") ||\n"
     "    (meta.job_hit == 1 && hdr.nina.encoding != meta.encoding)"),
    (Decision.DROP_BAD_COUNT, "hdr.nina.count > capacity"),
    (Decision.DROP_UNKNOWN_JOB, "meta.job_hit == 0"),
    (Decision.DROP_BAD_WORKER,
     "hdr.nina.worker >= meta.n_workers || hdr.nina.worker >= MAX_WORKERS"),
    (Decision.DROP_UNREGISTERED, "meta.admitted == 0"),
    (Decision.DROP_BAD_SLOT,
     "hdr.nina.slot >= meta.slot_count ||\n"
     "    (bit<32>)meta.slot_base + (bit<32>)hdr.nina.slot >= POOL_SLOTS"),
)
# The Decision enum lists the drop reasons in the protocol's order of checks.
assert [d for d, _ in CHECKS] + [Decision.DROP_INJECTED] == \
    sorted(d for d in Decision if d.name.startswith("DROP_") and d != Decision.DROP_DUPLICATE)


def admission_control() -> str:
    job, worker = p4spec.JOB_TABLE, p4spec.WORKER_TABLE
    assert not worker.params
    chain = []
    for i, (dec, cond) in enumerate(CHECKS):
        cond = cond.replace("\n", "\n" + " " * 8)
        chain.append(("if" if i == 0 else "} else if") + f" ({cond}) {{")
        chain.append(f"    meta.decision = D_{dec.name};")
    chain += [
        "} else {",
        "    // loss simulator: drop with probability loss_q16 / 65536",
        "    random(meta.loss_draw, 16w0, 16w0xFFFF);",
        "    if (meta.loss_draw < meta.loss_q16) {",
        f"        meta.decision = D_{Decision.DROP_INJECTED.name};",
        "    } else {",
        "        meta.accepted = 1;",
        "    }",
        "}",
    ]
    return f"""\
// Step 1: job configuration, worker admission and every drop check, in the protocol's order.
// A packet that fails a check leaves with meta.decision = its reason and touches no register.
control JobAdmission(inout headers_t hdr, inout metadata_t meta,
                     inout standard_metadata_t standard_metadata) {{
{action_decl(job, p4spec.INGRESS, ["meta.job_hit = 1;", *[f"meta.{n} = {n};" for n, _ in JOB_PARAMS]])}
{table_decl(job, p4spec.INGRESS, "NoAction")}
{action_decl(worker, p4spec.INGRESS, ["meta.admitted = 1;"])}
{table_decl(worker, p4spec.INGRESS, "NoAction")}
    apply {{
        bit<16> capacity = 0;
        if (hdr.nina.isValid()) {{
            meta.job = hdr.nina.job;
            capacity = {_capacity_expr()};
            job_table.apply();
            worker_table.apply();
        }}
{_lines(chain, 8)}
    }}
}}
"""


# ---------------------------------------------------------------- ingress: slot state
def slot_state_control() -> str:
    regs = [(p4spec.REG_BITMAP, "bitmap"), (p4spec.REG_COUNT, "count"),
            (p4spec.REG_MAX_EXP, "max_exp"), (p4spec.REG_OFFSET, "offset"),
            (p4spec.REG_ROUND, "round")]
    decls = []
    for full, local in regs:
        assert _local(full, p4spec.INGRESS) == local
        decls.append(f'@name(".{full}") register<bit<{p4spec.REGISTERS[full]}>>'
                     f"(REGISTER_SIZE) {local};")
    assert set(full for full, _ in regs) | {p4spec.reg_acc(i)
                                            for i in range(p4spec.N_ACCUMULATORS)} \
        == set(p4spec.REGISTERS)
    assert p4spec.REGISTERS[p4spec.REG_COUNT] == 8 and p4spec.REGISTERS[p4spec.REG_MAX_EXP] == 8
    assert p4spec.REGISTERS[p4spec.REG_ROUND] == 8 and ROUND_MOD == 128
    # round_of(flags) = VER bit | (bits 2-7 >> 1), as the generated expression computes it
    assert all(round_of(f) == (f & FLAG_VER) | ((f & ROUND_HIGH_MASK) >> 1) for f in range(256))
    return f"""\
// Steps 2-4: the (slot, ver) state. Decides retransmission / stale / first / aggregate /
// complete and updates bitmap, count, max_exp, offset and round; the accumulators are
// Aggregate's. The packet's round r (7 bits: VER = r & 1, flags bits 2-7 = r >> 1) tells a
// copy of an old round of the same version from a new round.
control SlotState(inout headers_t hdr, inout metadata_t meta) {{
{_lines(decls, 4)}

    apply {{
        bit<32> other;      // the other version of the same slot
        bit<32> bm_v;
        bit<32> bm_o;
        bit<8> cnt_v;
        bit<8> mx_v;
        bit<8> rd_v;
        bit<8> rnd = (hdr.nina.flags & FLAG_VER) | ((hdr.nina.flags & ROUND_HIGH_MASK) >> 1);
        bit<32> wbit = 32w1 << hdr.nina.worker;
        meta.idx = (((bit<32>)meta.slot_base + (bit<32>)hdr.nina.slot) << 1) |
                   (bit<32>)(hdr.nina.flags & FLAG_VER);
        other = meta.idx ^ 1;
        bitmap.read(bm_v, meta.idx);
        bitmap.read(bm_o, other);
        count.read(cnt_v, meta.idx);
        max_exp.read(mx_v, meta.idx);
        round.read(rd_v, meta.idx);
        meta.tr_bitmap = bm_v;
        meta.tr_count = cnt_v;
        meta.tr_exponent = mx_v;
        if ((bm_v & wbit) != 0) {{
            // step 2: w already contributed to (slot, ver); answered only when it is this
            // round and the round is complete; never added twice
            if (rd_v == rnd && cnt_v == meta.n_workers) {{
                meta.decision = D_RETRANSMIT_REPLY;
                meta.send_result = 1;
                meta.res_exp = mx_v;
            }} else {{
                meta.decision = D_DROP_DUPLICATE;
            }}
        }} else if ((bm_v != 0 && (rd_v != rnd || cnt_v >= meta.n_workers)) ||
                   (bm_v == 0 && cnt_v != 0 && rnd != ((rd_v + 2) & ROUND_MASK))) {{
            // step 3, stale: a packet joins only the open round of its version, and opens a
            // new round only as the successor (round + 2) of the version's last round
            meta.decision = D_DROP_DUPLICATE;
        }} else {{
            // step 4: first arrival of w: claim its bit in ver, release it in the other
            bit<8> cnt_new;
            bit<8> mx_new;
            bitmap.write(meta.idx, bm_v | wbit);
            bitmap.write(other, bm_o & ~wbit);
            if (bm_v == 0) {{
                meta.first = 1;
                meta.decision = D_FIRST;
                cnt_new = 1;
                mx_new = hdr.nina.exponent;
                offset.write(meta.idx, hdr.nina.offset);
                round.write(meta.idx, rnd);
            }} else {{
                meta.decision = D_AGGREGATE;
                cnt_new = cnt_v + 1;
                mx_new = (hdr.nina.exponent > mx_v) ? hdr.nina.exponent : mx_v;
            }}
            count.write(meta.idx, cnt_new);
            max_exp.write(meta.idx, mx_new);
            meta.do_update = 1;
            if (cnt_new == meta.n_workers) {{
                meta.decision = D_COMPLETE;
                meta.send_result = 1;
            }}
            meta.res_exp = mx_new;
            meta.tr_bitmap = bm_v | wbit;
            meta.tr_count = cnt_new;
            meta.tr_exponent = mx_new;
        }}
    }}
}}
"""


# ---------------------------------------------------------------- ingress: per-element actions
# Elements per generated action. One action per operation is fastest in BMv2 (one synthesized
# table apply); smaller groups keep p4c's per-action passes short if they ever get slow.
ELEMENTS_PER_ACTION = 256


def element_actions(name: str, elements: range, per_element, prologue=(), locals_=()):
    """Actions `name` (or name_0, name_1, ... when split) over `elements`; returns
    (declarations, the calls that run them in order)."""
    groups = [elements[i:i + ELEMENTS_PER_ACTION]
              for i in range(0, len(elements), ELEMENTS_PER_ACTION)]
    decls, calls = [], []
    for g, group in enumerate(groups):
        act = name if len(groups) == 1 else f"{name}_{g}"
        body = [*locals_, *(prologue if g == 0 else ())]
        for i in group:
            body += per_element(i)
        decls.append(f"action {act}() {{\n{_lines(body, 4)}\n}}\n")
        calls.append(f"{act}();")
    return decls, calls


# ---------------------------------------------------------------- ingress: C_M
def _cm_element(i: int) -> list[str]:
    s, c = f"hdr.sums.e{i}", f"hdr.codes.e{i}"
    return [
        f"// element {i}",
        f"neg = {s}[31:31];",
        f"mag = (neg == 1) ? -{s} : {s};",
        # top set bit of mag: binary search over 16, 8, 4, 2, 1
        "b = (mag[31:16] != 0) ? 8w16 : 8w0;",
        "p = b;",
        "t = mag >> b;",
        *[ln for half in (8, 4, 2) for ln in (
            f"b = (t[{2 * half - 1}:{half}] != 0) ? 8w{half} : 8w0;",
            "p = p + b;",
            "t = t >> b;")],
        "b = (t[1:1] != 0) ? 8w1 : 8w0;",
        "p = p + b;",
        "pw = 32w1 << p;",
        "random(u, 32w0, 32w0xFFFFFFFF);",
        "p = ((u & (pw - 1)) < (mag - pw)) ? p + 1 : p;",
        "pw = 32w1 << p;",
        f"{s} = (mag == 0) ? 32w0 : ((neg == 1) ? -pw : pw);",
        f"{c} = (mag == 0) ? NAT8_ZERO : (neg ++ p[6:0]);",
    ]


def master_compress_control() -> str:
    assert NAT8_SIGN == 0x80 and NAT8_MAG == 0x7F  # code = sign bit ++ 7-bit p
    decls, calls = element_actions(
        "compress", range(SUMS.capacity), _cm_element,
        locals_=("bit<1> neg;", "bit<32> mag;", "bit<32> t;", "bit<8> b;", "bit<8> p;",
                 "bit<32> pw;", "bit<32> u;"))
    body = _lines("\n".join(decls).splitlines(), 4)
    return f"""\
// C_M: natural-compress every sum of hdr.sums in place into +-2^p, and its code into
// hdr.codes: p = top set bit of |A| (binary search), rounded up to p + 1 when
// (u & (2^p - 1)) < |A| - 2^p for a uniform 32-bit u (unbiased); code = sign ++ p, 0x7F for 0.
control MasterCompress(inout headers_t hdr) {{
{body}

    apply {{
{_lines(calls, 8)}
    }}
}}
"""


# ---------------------------------------------------------------- ingress: accumulators
def _add_nat8(i: int) -> list[str]:
    c, s = f"hdr.codes.e{i}", f"hdr.sums.e{i}"
    return [
        f"o = {c} & NAT8_MAG;",
        "v = (o <= meta.shift) ? (32w1 << (meta.shift - o)) : 32w0;",
        f"v = ({c}[7:7] == 1) ? -v : v;",
        f"acc_{i}.read({s}, meta.idx);",
        f"{s} = (meta.first == 1) ? v : {s} + v;",
        f"acc_{i}.write(meta.idx, {s});",
    ]


def _add_int32(i: int) -> list[str]:
    w = f"hdr.words.e{i}"
    return [
        f"acc_{i}.read(a, meta.idx);",
        f"{w} = (meta.first == 1) ? {w} : a + {w};",
        f"acc_{i}.write(meta.idx, {w});",
    ]


def aggregate_control() -> str:
    nat8, int32 = range(UPD_NAT8.capacity), range(UPD_INT32.capacity)
    decls = [f'@name(".{p4spec.reg_acc(i)}") register<bit<32>>(REGISTER_SIZE) acc_{i};'
             for i in range(p4spec.N_ACCUMULATORS)]
    for i in range(p4spec.N_ACCUMULATORS):
        assert p4spec.REGISTERS[p4spec.reg_acc(i)] == 32

    actions, calls = [], {}
    for name, elems, fn, pro, loc in (
            ("add_nat8", nat8, _add_nat8, ["hdr.sums.setValid();"], ["bit<8> o;", "bit<32> v;"]),
            ("add_int32", int32, _add_int32, [], ["bit<32> a;"]),
            ("read_nat8", nat8, lambda i: [f"acc_{i}.read(hdr.sums.e{i}, meta.idx);"],
             ["hdr.sums.setValid();"], []),
            ("read_int32", int32, lambda i: [f"acc_{i}.read(hdr.words.e{i}, meta.idx);"], [], []),
            ("write_back_nat8", nat8, lambda i: [f"acc_{i}.write(meta.idx, hdr.sums.e{i});"],
             [], [])):
        d, calls[name] = element_actions(name, elems, fn, pro, loc)
        actions += d

    body = _lines("\n".join(actions).splitlines(), 4)

    def run(name: str, indent: int) -> str:
        return _lines(calls[name], indent)

    return f"""\
// The accumulators acc_0..acc_{p4spec.N_ACCUMULATORS - 1} of every (slot, ver). An update is
// added (or, from the first contributor, written) and the new sums land in the packet's
// payload: in place in hdr.words for INT32, in hdr.sums for NAT8 (whose codes become
// +-(1 << (shift - o)), 0 when o > shift). A retransmission reply reads the sums back. With C_M
// the sums are compressed by MasterCompress and written back on completion, so a later
// retransmission reply re-encodes the same powers of two.
control Aggregate(inout headers_t hdr, inout metadata_t meta) {{
{_lines(decls, 4)}

    MasterCompress() master_compress;

{body}

    apply {{
        if (hdr.codes.isValid()) {{
            if (meta.do_update == 1) {{
{run("add_nat8", 16)}
            }} else if (meta.send_result == 1) {{
{run("read_nat8", 16)}
            }}
            if (meta.send_result == 1 && meta.cm != 0) {{
                master_compress.apply(hdr);
                if (meta.decision == D_COMPLETE) {{
{run("write_back_nat8", 20)}
                }}
            }}
        }} else if (hdr.words.isValid()) {{
            if (meta.do_update == 1) {{
{run("add_int32", 16)}
            }} else if (meta.send_result == 1) {{
{run("read_int32", 16)}
            }}
        }}
    }}
}}
"""


# ---------------------------------------------------------------- ingress: result
def _udp_len(layout) -> int:
    return UDP_LEN + HEADER_LEN + layout.nbytes


RESULT_BUILD = Template("""\
// Turn a completing update (COMPLETE: multicast to the job's group) or a retransmission to a
// complete slot (RETRANSMIT_REPLY: the same group, egress keeps the sender's replicas only)
// into the result that every copy shares; NinaEgress rewrites the per-worker fields and picks
// each replica's part of a NAT8 result. Everything else is dropped.
control ResultBuild(inout headers_t hdr, inout metadata_t meta,
                    inout standard_metadata_t standard_metadata) {
    apply {
        if (meta.send_result == 1) {
            if (hdr.codes.isValid()) {
                if (meta.cm != 0) {
                    // NAT8 job with C_M: 256 codes
                    hdr.sums.setInvalid();
                    hdr.nina.flags = (hdr.nina.flags & ROUND_FLAGS) | FLAG_CM;
                    hdr.udp.length = $len_cm;
                } else {
                    // NAT8 job without C_M: 256 int32 sums, sent as parts
                    hdr.codes.setInvalid();
                    hdr.nina.flags = hdr.nina.flags & ROUND_FLAGS;
                    hdr.udp.length = $len_part;
                }
            } else {
                // INT32 job: 64 int32 sums
                hdr.nina.flags = hdr.nina.flags & ROUND_FLAGS;
                hdr.udp.length = $len_words;
            }
            hdr.nina.msg_type = MSG_RESULT;
            hdr.nina.exponent = meta.res_exp;
            hdr.udp.srcPort = NINA_UDP_PORT;
            hdr.udp.checksum = 0;   // optional in IPv4
            hdr.ipv4_options.setInvalid();
            hdr.ipv4.ihl = 5;
            hdr.ipv4.totalLen = IPV4_LEN + hdr.udp.length;
            hdr.ipv4.ttl = RESULT_TTL;
            meta.is_result = 1;
            if (meta.decision == D_RETRANSMIT_REPLY) {
                meta.reply_only = 1;
                meta.reply_to = hdr.nina.worker;
            }
            if (meta.mcast_grp != 0) {
                standard_metadata.mcast_grp = meta.mcast_grp;
            } else {
                mark_to_drop(standard_metadata);
            }
        } else {
            mark_to_drop(standard_metadata);
        }
    }
}
""")


def result_build_control() -> str:
    return RESULT_BUILD.substitute(
        len_cm=_udp_len(payload_layout(MsgType.RESULT, Encoding.NAT8, FLAG_CM)),
        len_part=_udp_len(RES_PART),
        len_words=_udp_len(payload_layout(MsgType.RESULT, Encoding.INT32, 0)))


# ---------------------------------------------------------------- ingress: trace
def trace_clone_control() -> str:
    from_header = {"tr_job": "hdr.nina.job", "tr_slot": "hdr.nina.slot",
                   "tr_worker": "hdr.nina.worker", "tr_ver": "hdr.nina.flags & FLAG_VER",
                   "tr_offset": "hdr.nina.offset", "tr_elements": "hdr.nina.count"}
    names = {n for n, _ in TRACE_META}
    assert set(from_header) <= names
    assert names - set(from_header) == {"tr_time_ns", "tr_ingress_port", "tr_decision",
                                         "tr_exponent", "tr_count", "tr_bitmap"}
    set_hdr = [f"meta.{k} = {v};" for k, v in from_header.items()] + [
        "if (meta.accepted == 0) {",
        "    // dropped in step 1: no slot state was read; report the packet's exponent",
        "    meta.tr_exponent = hdr.nina.exponent;",
        "}"]
    clear_hdr = [f"meta.{k} = 0;" for k in from_header]
    return f"""\
// Trace: every processed packet is cloned (I2E) to TRACE_CLONE_SESSION with its trace record
// in the preserved metadata; NinaEgress turns the clone into Ethernet + record. Tracing is on
// exactly when the controller has configured that clone session (to the monitor port): with
// no session BMv2 makes no copy.
control TraceClone(in headers_t hdr, inout metadata_t meta,
                   in standard_metadata_t standard_metadata) {{
    apply {{
        meta.tr_time_ns = (bit<64>)standard_metadata.ingress_global_timestamp * 1000;
        meta.tr_ingress_port = (bit<16>)standard_metadata.ingress_port;
        meta.tr_decision = meta.decision;
        if (hdr.nina.isValid()) {{
{_lines(set_hdr, 12)}
        }} else {{
{_lines(clear_hdr, 12)}
        }}
        clone_preserving_field_list(CloneType.I2E, TRACE_CLONE_SESSION, TRACE_FIELD_LIST);
    }}
}}
"""


def init_metadata() -> list[str]:
    return ["meta.decision = D_FORWARDED;", "meta.job_hit = 0;", "meta.admitted = 0;",
            "meta.accepted = 0;", "meta.first = 0;", "meta.do_update = 0;",
            "meta.send_result = 0;", "meta.is_result = 0;", "meta.res_exp = 0;",
            "meta.reply_only = 0;", "meta.reply_to = 0;", "meta.part = 0;",
            "meta.tr_bitmap = 0;", "meta.tr_count = 0;", "meta.tr_exponent = 0;"]


def ingress_control() -> str:
    return f"""\
control {p4spec.INGRESS}(inout headers_t hdr, inout metadata_t meta,
                    inout standard_metadata_t standard_metadata) {{
    counter(N_DECISIONS, CounterType.packets_and_bytes) {_local(p4spec.CTR_DECISIONS, p4spec.INGRESS)};

    L2Forward() l2;
    JobAdmission() admission;
    SlotState() slot_state;
    Aggregate() aggregate;
    ResultBuild() result_build;
    TraceClone() trace_clone;

    apply {{
{_lines(init_metadata(), 8)}
        if (hdr.udp.isValid() && hdr.udp.dstPort == NINA_UDP_PORT) {{
            admission.apply(hdr, meta, standard_metadata);
            if (meta.accepted == 1) {{
                slot_state.apply(hdr, meta);
                aggregate.apply(hdr, meta);
            }}
            result_build.apply(hdr, meta, standard_metadata);
        }} else {{
            l2.apply(hdr, standard_metadata);
        }}
        decisions.count((bit<32>)meta.decision);
        trace_clone.apply(hdr, meta, standard_metadata);
    }}
}}
"""


# ---------------------------------------------------------------- egress
def result_rewrite_control() -> str:
    spec = p4spec.WORKER_ADDR
    assert [p.name for p in spec.params] == ["dmac", "dip", "dport", "smac", "sip"]
    body = ["hdr.ethernet.dstAddr = dmac;", "hdr.ethernet.srcAddr = smac;",
            "hdr.ipv4.dstAddr = dip;", "hdr.ipv4.srcAddr = sip;",
            "hdr.udp.dstPort = dport;", "hdr.udp.srcPort = NINA_UDP_PORT;"]
    P = RESULT_PART_SUMS
    takes, branches = [], []
    for part in range(N_PARTS):
        copy = [f"hdr.part.e{i} = hdr.sums.e{part * P + i};" for i in range(P)]
        takes.append(f"    action take_part_{part}() {{\n        hdr.part.setValid();\n"
                     f"{_lines(copy, 8)}\n    }}\n")
        # the part's header: offset + part * P, count = the chunk's elements inside the part
        # (nina.wire.result_part_count); a part the chunk does not reach is not sent
        cond = "meta.part == 0" if part == 0 else \
            f"meta.part == {part} && hdr.nina.count > {part * P}"
        stmts = [f"take_part_{part}();"]
        if part:
            stmts += [f"hdr.nina.count = hdr.nina.count - {part * P};",
                      f"hdr.nina.offset = hdr.nina.offset + {part * P};"]
        stmts += ["if (hdr.nina.count > RESULT_PART_SUMS) {",
                  "    hdr.nina.count = RESULT_PART_SUMS;", "}"]
        branches.append(("if" if part == 0 else "} else if") + f" ({cond}) {{\n"
                        + _lines(stmts, 4))
    for count in range(SUMS.capacity + 1):   # the count rule written out above, checked
        for part in range(N_PARTS):
            sent = part == 0 or count > part * P
            assert result_part_count(count, part, Encoding.NAT8) == \
                (min(P, count - part * P) if sent else None)
    chain = "\n".join(branches) + "\n} else {\n    keep = 0;\n}"
    return f"""\
// Per copy of a result: the multicast replica's egress_rid = part << {RID_PART_SHIFT} | worker names
// the destination worker (worker_addr gives its addresses) and, for a NAT8 result without
// C_M, which part of the 256 sums the copy carries. A copy for a worker without an entry, a
// part the result does not have, and, for a retransmission reply, every copy not for the
// sender are dropped.
control ResultRewrite(inout headers_t hdr, inout metadata_t meta,
                      inout standard_metadata_t standard_metadata) {{
{action_decl(spec, p4spec.EGRESS, body)}
    @name(".{p4spec.EGRESS}.drop")
    action drop() {{
        mark_to_drop(standard_metadata);
    }}

{"".join(takes)}
{table_decl(spec, p4spec.EGRESS, "drop")}
    apply {{
        bit<1> keep = 1;
        meta.dst_worker = (bit<8>)(standard_metadata.egress_rid & RID_WORKER_MASK);
        meta.part = (bit<8>)(standard_metadata.egress_rid >> {RID_PART_SHIFT});
        if (meta.reply_only == 1 && meta.dst_worker != meta.reply_to) {{
            keep = 0;
        }}
        if (hdr.sums.isValid()) {{
{_lines(chain.splitlines(), 12)}
            hdr.sums.setInvalid();
        }} else if (meta.part != 0) {{
            keep = 0;
        }}
        if (keep == 1) {{
            hdr.nina.worker = meta.dst_worker;
            worker_addr.apply();
        }} else {{
            mark_to_drop(standard_metadata);
        }}
    }}
}}
"""


def trace_emit_control() -> str:
    sets = []
    for name, _ in TRACE:
        src = "0" if name.startswith("pad") else f"meta.tr_{name}"
        sets.append(f"hdr.trace.{name} = {src};")
    invalid = [f"hdr.{h}.setInvalid();"
               for h in ("ipv4", "ipv4_options", "udp", "nina", *[p[0] for p in PAYLOADS])]
    return f"""\
// The trace clone becomes Ethernet (type TRACE_ETHERTYPE) + the 32-byte record (big-endian on
// the wire, fields in nina.decisions.TRACE_DTYPE order); everything after it is cut off.
control TraceEmit(inout headers_t hdr, in metadata_t meta) {{
    apply {{
        hdr.ethernet.setValid();
        hdr.ethernet.etherType = TRACE_ETHERTYPE;
{_lines(invalid, 8)}
        hdr.trace.setValid();
{_lines(sets, 8)}
        truncate(TRACE_FRAME_LEN);
    }}
}}
"""


def egress_control() -> str:
    return f"""\
control {p4spec.EGRESS}(inout headers_t hdr, inout metadata_t meta,
                   inout standard_metadata_t standard_metadata) {{
    ResultRewrite() result_rewrite;
    TraceEmit() trace_emit;

    apply {{
        if (standard_metadata.instance_type == INSTANCE_INGRESS_CLONE) {{
            trace_emit.apply(hdr, meta);
        }} else if (meta.is_result == 1) {{
            result_rewrite.apply(hdr, meta, standard_metadata);
        }}
    }}
}}
"""


# ---------------------------------------------------------------- checksums, deparser, main
def checksum_controls() -> str:
    ipv4_fields = ",\n".join(" " * 16 + f"hdr.ipv4.{n}" for n, _ in IPV4 if n != "hdrChecksum")
    return f"""\
control NinaVerifyChecksum(inout headers_t hdr, inout metadata_t meta) {{
    apply {{ }}
}}

// Results get a fresh IPv4 header checksum (their lengths and addresses changed); the UDP
// checksum of a result is 0. Other packets keep theirs.
control NinaComputeChecksum(inout headers_t hdr, inout metadata_t meta) {{
    apply {{
        update_checksum(
            hdr.ipv4.isValid() && meta.is_result == 1,
            {{
{ipv4_fields}
            }},
            hdr.ipv4.hdrChecksum,
            HashAlgorithm.csum16);
    }}
}}
"""


def deparser_control() -> str:
    emits = "\n".join(" " * 8 + f"packet.emit(hdr.{h});" for h in
                      ("ethernet", "trace", "ipv4", "ipv4_options", "udp", "nina",
                       *[p[0] for p in PAYLOADS]))
    return f"""\
control NinaDeparser(packet_out packet, in headers_t hdr) {{
    apply {{
{emits}
    }}
}}
"""


def main_decl() -> str:
    return f"""\
V1Switch(NinaParser(), NinaVerifyChecksum(), {p4spec.INGRESS}(), {p4spec.EGRESS}(),
         NinaComputeChecksum(), NinaDeparser()) main;
"""


def headers_decls() -> str:
    return "\n".join(p.rstrip("\n") + "\n" for p in (
        header_type("ethernet_t", ETHERNET, "Ethernet II"),
        header_type("ipv4_t", IPV4, "IPv4"),
        "// IPv4 options (ihl > 5); results leave without them\n"
        f"header ipv4_options_t {{\n    varbit<{IPV4_MAX_OPTIONS_BITS}> options;\n}}\n",
        header_type("udp_t", UDP, "UDP"),
        header_type("nina_t", NINA, "NINA header (nina.wire.HEADER_FIELDS), 16 bytes"),
        payload_type("words_t", UPD_INT32,
                     "INT32 update / INT32 result: 64 big-endian int32 (256 bytes)"),
        payload_type("codes_t", UPD_NAT8,
                     "NAT8 update / C_M result: 256 codes sign<<7 | offset (256 bytes)"),
        payload_type("sums_t", SUMS,
                     "NAT8 sums of a chunk: 256 int32 (ingress only; egress emits a part)"),
        payload_type("part_t", RES_PART,
                     f"NAT8 result without C_M: one part, {RESULT_PART_SUMS} big-endian int32 "
                     f"sums ({RES_PART.nbytes} bytes)"),
        header_type("trace_t", TRACE,
                    "trace record: nina.decisions.TRACE_DTYPE's fields, big-endian"),
        headers_struct(),
    ))


# ---------------------------------------------------------------- the files
# One file per control (or per group of declarations) under p4/src/, in the order p4/nina.p4
# includes them: (file, what it holds, the project files it includes, whether it uses v1model's
# externs or types, the function that writes its declarations). Every file includes what it
# uses, so it reads (and compiles) on its own; include guards make the repeated includes no-ops,
# so the expanded program declares everything once, in this order.
SRC_DIR = "src"
SrcFile = tuple[str, str, tuple[str, ...], bool, Callable[[], str]]
TYPES = ("constants.p4", "headers.p4", "metadata.p4")
INGRESS_FILES: tuple[SrcFile, ...] = (
    ("parser.p4", "NinaParser: Ethernet/IPv4/UDP/NINA and the per-kind payload", TYPES, True,
     PARSER.substitute),
    ("l2_forward.p4", "L2Forward: non-NINA traffic, forwarded by destination MAC",
     ("headers.p4",), True, l2_forward_control),
    ("admission.p4", "JobAdmission: job and worker tables, the drop checks (step 1)", TYPES,
     True, admission_control),
    ("slot_state.p4", "SlotState: bitmap, count, max_exp, offset and round (steps 2-4)", TYPES,
     True, slot_state_control),
    ("master_compress.p4", "MasterCompress: C_M of the 256 sums", ("constants.p4", "headers.p4"),
     True, master_compress_control),
    ("aggregate.p4", "Aggregate: the accumulators acc_0..acc_255",
     (*TYPES, "master_compress.p4"), True, aggregate_control),
    ("result_build.p4", "ResultBuild: the result every copy shares, and where it goes", TYPES,
     True, result_build_control),
    ("trace_clone.p4", "TraceClone: the trace record, cloned to the trace session", TYPES, True,
     trace_clone_control),
)
EGRESS_FILES: tuple[SrcFile, ...] = (
    ("result_rewrite.p4", "ResultRewrite: each copy's worker, part and addresses", TYPES, True,
     result_rewrite_control),
    ("trace_emit.p4", "TraceEmit: a trace clone becomes Ethernet + record", TYPES, True,
     trace_emit_control),
)
TAIL_FILES: tuple[SrcFile, ...] = (
    ("checksums.p4", "NinaVerifyChecksum, NinaComputeChecksum: the IPv4 header checksum",
     ("headers.p4", "metadata.p4"), True, checksum_controls),
    ("deparser.p4", "NinaDeparser: the headers, in wire order", ("headers.p4",), False,
     deparser_control),
)
TYPE_FILES: tuple[SrcFile, ...] = (
    ("constants.p4", "constants from nina/wire.py, nina/decisions.py and nina/p4spec.py", (),
     False, const_block),
    ("headers.p4", "header types (nina.wire.HEADER_FIELDS, the payloads, the trace record) and "
     "headers_t", (), False, headers_decls),
    ("metadata.p4", "metadata_t: the user metadata, with the trace fields kept in the clone", (),
     False, metadata_struct),
)
SRC_FILES = TYPE_FILES + INGRESS_FILES + EGRESS_FILES + TAIL_FILES
assert len({f for f, *_ in SRC_FILES}) == len(SRC_FILES)
# a file includes only files declared before it (the include order is a topological order)
for _i, (_f, _what, _deps, _v1, _fn) in enumerate(SRC_FILES):
    assert set(_deps) <= {f for f, *_ in SRC_FILES[:_i]}, (_f, _deps)

BANNER = """\
// GENERATED by p4/gen_p4.py from nina/wire.py, nina/decisions.py and nina/p4spec.py.
// Do not edit: change the generator or the contracts and run `make p4`.
"""


def _guard(name: str) -> str:
    return "NINA_" + name.replace(".", "_").upper()


def src_file(entry: SrcFile) -> str:
    name, what, deps, v1model, fn = entry
    incs = (["#include <core.p4>", "#include <v1model.p4>"] if v1model else []) + \
        [f'#include "{d}"' for d in deps]
    guard = _guard(name)
    head = f"// NINA switch, {SRC_DIR}/{name}: {what}.\n{BANNER}\n#ifndef {guard}\n#define {guard}\n"
    if incs:
        head += "\n" + "\n".join(incs) + "\n"
    return f"{head}\n{fn().rstrip()}\n\n#endif  // {guard}\n"


def top_file() -> str:
    def incs(files) -> str:
        return "\n".join(f'#include "{SRC_DIR}/{f}"' for f, *_ in files)
    return f"""\
// NINA switch: in-network aggregation of natural-compressed gradients (P4_16, v1model, BMv2).
{BANNER}// docs/protocol.md specifies the algorithm; p4/README.md explains this program's layout:
// one file per control under p4/{SRC_DIR}/, wired here into the v1model pipeline.

#include <core.p4>
#include <v1model.p4>

{incs(TYPE_FILES)}

// ---------------------------------------------------------------- parser, ingress
{incs(INGRESS_FILES)}

{ingress_control().rstrip()}

// ---------------------------------------------------------------- egress
{incs(EGRESS_FILES)}

{egress_control().rstrip()}

// ---------------------------------------------------------------- the rest
{incs(TAIL_FILES)}

{main_decl().rstrip()}
"""


def _tidy(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def program_files() -> dict[str, str]:
    """The whole program: path relative to p4/ -> text; nina.p4 first, then p4/src/ in include
    order."""
    files = {"nina.p4": _tidy(top_file())}
    for entry in SRC_FILES:
        files[f"{SRC_DIR}/{entry[0]}"] = _tidy(src_file(entry))
    return files


INCLUDE = re.compile(r'^#include\s+(?:"([^"]+)"|<([^>]+)>)\s*$', re.M)


def expand(path: Path, _seen: set[Path] | None = None) -> str:
    """The program as p4c's preprocessor sees it, with the project's own includes inlined
    once each (what the include guards do) and the guard lines removed; system includes
    (<core.p4>, <v1model.p4>) are left as they are."""
    seen = set() if _seen is None else _seen
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    text = path.read_text()
    guard = _guard(path.name)
    text = re.sub(rf"^(#ifndef|#define|#endif  //) {guard}\n", "", text, flags=re.M)

    def inline(m: re.Match) -> str:
        if m.group(2):
            return m.group(0)
        return expand(path.parent / m.group(1), seen).rstrip("\n")
    return INCLUDE.sub(inline, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate NINA's P4 program (p4/nina.p4 and one file per control in "
                    "p4/src/) from the nina contracts.")
    ap.add_argument("--out", type=Path, default=OUT_DIR,
                    help=f"directory to write nina.p4 and {SRC_DIR}/ into (default {OUT_DIR})")
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 when a file in the directory differs from the "
                         f"generator's, is missing, or is a stale extra .p4 in {SRC_DIR}/")
    args = ap.parse_args(argv)
    files = program_files()
    if args.check:
        stale = stale_files(args.out, files)
        if stale:
            print(f"out of date in {args.out}: {', '.join(stale)}: run python p4/gen_p4.py",
                  file=sys.stderr)
            return 1
        print(f"{args.out}: {len(files)} files up to date")
        return 0
    if args.out.exists() and not args.out.is_dir():
        print(f"gen_p4: --out {args.out} is a file; it takes a directory", file=sys.stderr)
        return 2
    (args.out / SRC_DIR).mkdir(parents=True, exist_ok=True)
    for extra in _extra_files(args.out, files):
        extra.unlink()   # a control the generator no longer writes
    for rel, text in files.items():
        (args.out / rel).write_text(text)
    lines = sum(len(t.splitlines()) for t in files.values())
    print(f"wrote {args.out}/nina.p4 and {len(files) - 1} files in {args.out}/{SRC_DIR} "
          f"({lines} lines)")
    return 0


def _extra_files(out: Path, files: dict[str, str]) -> list[Path]:
    return sorted(p for p in (out / SRC_DIR).glob("*.p4")
                  if f"{SRC_DIR}/{p.name}" not in files)


def stale_files(out: Path, files: dict[str, str]) -> list[str]:
    """Paths (relative to out) that differ from `files`, are missing, or are extra."""
    stale = [rel for rel, text in files.items()
             if not (out / rel).exists() or (out / rel).read_text() != text]
    return stale + [f"{SRC_DIR}/{p.name}" for p in _extra_files(out, files)]


if __name__ == "__main__":
    sys.exit(main())
