"""Conformance packet vectors: the switch algorithm of docs/protocol.md as packets in -> out.

Data-plane independent, in the spirit of p4lang PTF tests: each Vector installs jobs
(nina.config.JobSpec), sends packets at an ingress port from a source (IP, UDP port), expects
exactly the listed packets out (port, destination, NINA bytes) and the listed register values,
and, summed over its steps, exactly the listed decision counts.

Addresses here are logical: a plane maps every (IP, UDP port) a vector uses to something it can
realise (the embedded UDP plane binds one loopback socket per endpoint). Local mode has one
ingress port, 0, so the vectors use port 0.

Expected results are computed here from the integer meaning of the inputs with plain Python
ints (nat8_value below), never with the switch's code; nina.wire only packs the bytes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from nina import p4spec
from nina.config import JobSpec, WorkerAddr
from nina.decisions import Decision
from nina.wire import (FLAG_CM, HEADER_DTYPE, NAT8_SIGN, NAT8_ZERO, RESULT_PART_SUMS, Encoding,
                       Header, MsgType, pack_packet, round_flags)

D = Decision
PORT = 0   # local mode: every worker is behind ingress port 0
CAP = {Encoding.INT32: 64, Encoding.NAT8: 256}

Endpoint = tuple[str, int]   # logical (IPv4, UDP port)


@dataclass(frozen=True)
class Expected:
    """One packet out. Exact `data`, or for C_M results: exact `header` plus `cm_sums` (each
    code must be the floor or ceil power of the exact sum) and optionally `same_as` (the label
    of an earlier packet whose payload must be byte-identical)."""
    port: int
    dst: Endpoint
    data: bytes | None = None
    header: Header | None = None
    cm_sums: tuple[int, ...] | None = None
    same_as: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class RegCheck:
    name: str
    index: int
    value: int


@dataclass(frozen=True)
class Step:
    port: int
    src: Endpoint
    data: bytes
    decision: Decision
    expect: tuple[Expected, ...] = ()
    registers: tuple[RegCheck, ...] = ()   # checked right after this step
    note: str = ""


@dataclass(frozen=True)
class Reinstall:
    """A control-plane step: remove job `spec.job_id` and install `spec` again through the
    plane's control plane; the install must report `first_rounds` (slot -> first round)."""
    spec: JobSpec
    first_rounds: tuple[tuple[int, int], ...]   # (slot, round) pairs to check


@dataclass
class Vector:
    name: str
    jobs: tuple[JobSpec, ...]
    steps: list[Step | Reinstall] = field(default_factory=list)
    registers: list[RegCheck] = field(default_factory=list)   # checked at the end

    @property
    def packet_steps(self) -> list[Step]:
        return [s for s in self.steps if isinstance(s, Step)]

    @property
    def counters(self) -> dict[Decision, int]:
        """Packets per decision the vector causes (the decisions counter's delta)."""
        return dict(Counter(s.decision for s in self.packet_steps))

    @property
    def endpoints(self) -> list[Endpoint]:
        eps = {(w.ip, w.udp_port) for j in self.jobs for w in j.workers}
        eps |= {s.src for s in self.packet_steps}
        return sorted(eps)


# ---------------------------------------------------------------- integer semantics

def nat8_value(code: int, shift: int) -> int:
    """What the switch adds for an uplink NAT8 code: +-2^(S - o), 0 when o > S."""
    off = code & 0x7F
    if off > shift:
        return 0
    return -(1 << (shift - off)) if code & 0x80 else 1 << (shift - off)


def exact_sums(spec: JobSpec, contributions: list[list[int]]) -> list[int]:
    """Element-wise sums of the workers' values over the job's full payload."""
    sums = [0] * CAP[spec.encoding]
    for vals in contributions:
        for i, v in enumerate(vals):
            sums[i] += nat8_value(v, spec.shift) if spec.encoding == Encoding.NAT8 else v
    assert all(-(1 << 31) <= s < 1 << 31 for s in sums), "vector overflows int32"
    return sums


def cm_code_is_valid(code: int, exact: int) -> bool:
    """A C_M code is the floor or ceil power of two of |exact| (exact when it is one)."""
    if exact == 0:
        return code == NAT8_ZERO
    if bool(code & NAT8_SIGN) != (exact < 0):
        return False
    floor = abs(exact).bit_length() - 1
    allowed = {floor} if abs(exact) == 1 << floor else {floor, floor + 1}
    return code & 0x7F in allowed


# ---------------------------------------------------------------- packet builders

def make_job(job_id: int, n: int, enc: Encoding, cm: bool = False, slot_base: int = 0,
             slot_count: int = 8) -> JobSpec:
    workers = tuple(WorkerAddr(w, f"10.{job_id % 250}.0.{w + 1}", 40000 + w, port=PORT,
                               mac=f"02:00:00:00:{job_id % 256:02x}:{w + 1:02x}")
                    for w in range(n))
    return JobSpec(job_id, n, enc, cm=cm, slot_base=slot_base, slot_count=slot_count,
                   workers=workers, switch_ip="10.0.0.254")


def src(spec: JobSpec, w: int) -> Endpoint:
    return (spec.workers[w].ip, spec.workers[w].udp_port)


def update(spec: JobSpec, w: int, slot: int, values: list[int], ver: int = 0,
           exponent: int = 120, offset: int = 0) -> bytes:
    """An update of round `ver` (the round number; its low bit is the version bit)."""
    enc = spec.encoding
    vals = np.array(values, np.uint8 if enc == Encoding.NAT8 else np.int32)
    return pack_packet(Header(msg_type=MsgType.UPDATE, encoding=enc, flags=round_flags(ver),
                              job=spec.job_id, worker=w, exponent=exponent, slot=slot,
                              count=len(values), offset=offset), vals)


def raw_update(**fields) -> bytes:
    """A header with any field values (no validation) + a 256-byte payload of zero codes."""
    h = np.zeros((), HEADER_DTYPE)
    base = dict(version=1, msg_type=1, encoding=1, flags=0, job=0, worker=0, exponent=0,
                slot=0, count=0, offset=0)
    base.update(fields)
    for k, v in base.items():
        h[k] = v
    return h.tobytes() + bytes([NAT8_ZERO]) * 256


def result_header(spec: JobSpec, w: int, slot: int, ver: int, count: int, offset: int,
                  exponent: int) -> Header:
    return Header(msg_type=MsgType.RESULT, encoding=spec.encoding,
                  flags=round_flags(ver) | (FLAG_CM if spec.cm else 0), job=spec.job_id,
                  worker=w,
                  exponent=exponent, slot=slot, count=count, offset=offset)


def results(spec: JobSpec, slot: int, ver: int, count: int, offset: int, exponent: int,
            sums: list[int], to: list[int] | None = None) -> tuple[Expected, ...]:
    """The result copies for workers `to` (default: all, i.e. the multicast). A NAT8 result
    without C_M comes as parts of RESULT_PART_SUMS sums, each with its own offset and count:
    part 0 always, a later part when the chunk reaches into it."""
    part = RESULT_PART_SUMS if spec.encoding == Encoding.NAT8 else CAP[spec.encoding]
    starts = [0] + list(range(part, count, part))
    out = []
    for w in (range(spec.n_workers) if to is None else to):
        for a in starts:
            n = min(part, count - a)
            h = result_header(spec, w, slot, ver, n, offset + a, exponent)
            out.append(Expected(PORT, src(spec, w),
                                data=pack_packet(h, np.array(sums[a:a + n], np.int32))))
    return tuple(out)


def cm_results(spec: JobSpec, slot: int, ver: int, count: int, offset: int, exponent: int,
               sums: list[int], label: str, to: list[int] | None = None,
               same_as: str | None = None) -> tuple[Expected, ...]:
    """C_M result copies: codes checked against the exact sums; all copies identical."""
    out = []
    for i, w in enumerate(range(spec.n_workers) if to is None else to):
        ref = same_as or (label if i else None)
        out.append(Expected(PORT, src(spec, w),
                            header=result_header(spec, w, slot, ver, count, offset, exponent),
                            cm_sums=tuple(sums), same_as=ref,
                            label=None if ref else label))
    return tuple(out)


def slot_regs(spec: JobSpec, slot: int, ver: int, bitmap: int, count: int, max_exp: int,
              offset: int, acc: list[int]) -> list[RegCheck]:
    idx = (spec.slot_base + slot) * 2 + ver
    regs = [RegCheck(p4spec.REG_BITMAP, idx, bitmap), RegCheck(p4spec.REG_COUNT, idx, count),
            RegCheck(p4spec.REG_MAX_EXP, idx, max_exp), RegCheck(p4spec.REG_OFFSET, idx, offset)]
    return regs + [RegCheck(p4spec.reg_acc(i), idx, v) for i, v in enumerate(acc)]


def payload_values(spec: JobSpec, rng: np.random.Generator, count: int) -> list[int]:
    """Random element values a worker may send (NAT8 codes, or |int| <= 2^S)."""
    if spec.encoding == Encoding.NAT8:
        return [int(x) for x in rng.integers(0, 256, count)]
    m = 1 << spec.shift
    return [int(x) for x in rng.integers(-m, m + 1, count)]


# ---------------------------------------------------------------- the vectors

def v_full_aggregation(enc: Encoding, n: int) -> Vector:
    spec = make_job(1, n, enc, slot_base=8, slot_count=4)
    rng = np.random.default_rng(100 + n + 10 * int(enc))
    count = CAP[enc] if n != 3 else CAP[enc] - 7    # n = 3 also checks a partial payload
    vals = [payload_values(spec, rng, count) for _ in range(n)]
    exps = [int(e) for e in rng.integers(90, 140, n)]
    sums = exact_sums(spec, vals)
    v = Vector(f"full_aggregation_{enc.name}_n{n}", (spec,))
    for w in range(n):
        last = w == n - 1
        v.steps.append(Step(PORT, src(spec, w), update(spec, w, 2, vals[w], exponent=exps[w],
                                                       offset=512),
                            D.COMPLETE if last else (D.FIRST if w == 0 else D.AGGREGATE),
                            results(spec, 2, 0, count, 512, max(exps), sums) if last else ()))
    v.registers = slot_regs(spec, 2, 0, (1 << n) - 1, n, max(exps), 512, sums[:8])
    return v


def v_out_of_order() -> Vector:
    spec = make_job(2, 4, Encoding.NAT8, slot_count=4)
    rng = np.random.default_rng(7)
    vals = {(s, w): payload_values(spec, rng, 256) for s in range(3) for w in range(4)}
    order = [(s, w) for s in range(3) for w in range(4)]
    rng.shuffle(order)
    v = Vector("out_of_order_interleaved_slots", (spec,))
    seen = {s: 0 for s in range(3)}
    for s, w in order:
        seen[s] += 1
        k = seen[s]
        sums = exact_sums(spec, [vals[s, x] for x in range(4)])
        v.steps.append(Step(PORT, src(spec, w), update(spec, w, s, vals[s, w], ver=s % 2,
                                                       exponent=100 + w, offset=256 * s),
                            D.COMPLETE if k == 4 else (D.FIRST if k == 1 else D.AGGREGATE),
                            results(spec, s, s % 2, 256, 256 * s, 103, sums) if k == 4 else ()))
    for s in range(3):
        sums = exact_sums(spec, [vals[s, x] for x in range(4)])
        v.registers += slot_regs(spec, s, s % 2, 0b1111, 4, 103, 256 * s, sums[:4])
    return v


def v_retransmit_before_completion() -> Vector:
    spec = make_job(3, 3, Encoding.INT32)
    vals = [[5, -7, 9], [100, 200, -300], [-1, -1, -1]]
    sums = exact_sums(spec, vals)
    u = [update(spec, w, 1, vals[w], exponent=120) for w in range(3)]
    v = Vector("retransmit_before_completion_is_consumed", (spec,))
    v.steps = [
        Step(PORT, src(spec, 0), u[0], D.FIRST),
        Step(PORT, src(spec, 0), u[0], D.DROP_DUPLICATE,
             registers=tuple(slot_regs(spec, 1, 0, 0b001, 1, 120, 0, vals[0]))),
        Step(PORT, src(spec, 1), u[1], D.AGGREGATE),
        Step(PORT, src(spec, 1), u[1], D.DROP_DUPLICATE),
        Step(PORT, src(spec, 0), u[0], D.DROP_DUPLICATE),
        Step(PORT, src(spec, 2), u[2], D.COMPLETE, results(spec, 1, 0, 3, 0, 120, sums)),
    ]
    v.registers = slot_regs(spec, 1, 0, 0b111, 3, 120, 0, sums[:3])
    return v


def v_retransmit_after_completion() -> Vector:
    spec = make_job(4, 2, Encoding.NAT8)
    vals = [[0, 1, 2, 0x83], [0x80, 1, 0x7F, 3]]
    sums = exact_sums(spec, vals)
    u = [update(spec, w, 3, vals[w], ver=1, exponent=110 + w, offset=99) for w in range(2)]
    v = Vector("retransmit_after_completion_unicasts_to_that_worker", (spec,))
    v.steps = [
        Step(PORT, src(spec, 0), u[0], D.FIRST),
        Step(PORT, src(spec, 1), u[1], D.COMPLETE, results(spec, 3, 1, 4, 99, 111, sums)),
        Step(PORT, src(spec, 1), u[1], D.RETRANSMIT_REPLY,
             results(spec, 3, 1, 4, 99, 111, sums, to=[1])),
        Step(PORT, src(spec, 0), u[0], D.RETRANSMIT_REPLY,
             results(spec, 3, 1, 4, 99, 111, sums, to=[0])),
    ]
    v.registers = slot_regs(spec, 3, 1, 0b11, 2, 111, 99, sums[:4])
    return v


def v_retransmit_after_other_worker_moved_on() -> Vector:
    spec = make_job(5, 2, Encoding.INT32)
    r1 = [[1, 2], [10, 20]]
    r2 = [[3, 4], [30, 40]]
    s1, s2 = exact_sums(spec, r1), exact_sums(spec, r2)
    v = Vector("retransmit_of_v_after_slot_moved_to_other_version", (spec,))
    v.steps = [
        Step(PORT, src(spec, 0), update(spec, 0, 0, r1[0]), D.FIRST),
        Step(PORT, src(spec, 1), update(spec, 1, 0, r1[1]), D.COMPLETE,
             results(spec, 0, 0, 2, 0, 120, s1)),
        # worker 1 got its result and starts round 2 on version 1
        Step(PORT, src(spec, 1), update(spec, 1, 0, r2[1], ver=1, offset=2), D.FIRST),
        # worker 0 lost its copy and retransmits round 1: still answered, round-1 sums
        Step(PORT, src(spec, 0), update(spec, 0, 0, r1[0]), D.RETRANSMIT_REPLY,
             results(spec, 0, 0, 2, 0, 120, s1, to=[0])),
        Step(PORT, src(spec, 0), update(spec, 0, 0, r2[0], ver=1, offset=2), D.COMPLETE,
             results(spec, 0, 1, 2, 2, 120, s2)),
    ]
    v.registers = (slot_regs(spec, 0, 0, 0, 2, 120, 0, s1[:2]) +
                   slot_regs(spec, 0, 1, 0b11, 2, 120, 2, s2[:2]))
    return v


def v_stale_duplicate() -> Vector:
    spec = make_job(6, 2, Encoding.INT32)
    r1 = [[1, 1], [2, 2]]
    r2 = [[40, 50], [60, 70]]
    s1, s2 = exact_sums(spec, r1), exact_sums(spec, r2)
    old = update(spec, 0, 2, r1[0])
    v = Vector("stale_duplicate_of_previous_round_is_dropped", (spec,))
    v.steps = [
        Step(PORT, src(spec, 0), old, D.FIRST),
        Step(PORT, src(spec, 1), update(spec, 1, 2, r1[1]), D.COMPLETE,
             results(spec, 2, 0, 2, 0, 120, s1)),
        Step(PORT, src(spec, 0), update(spec, 0, 2, r2[0], ver=1, offset=64), D.FIRST),
        # a delayed copy of worker 0's round-1 packet: worker 0 is mid-round on version 1
        Step(PORT, src(spec, 0), old, D.DROP_DUPLICATE,
             registers=tuple(slot_regs(spec, 2, 0, 0b10, 2, 120, 0, s1[:2]) +
                             slot_regs(spec, 2, 1, 0b01, 1, 120, 64, r2[0]))),
        Step(PORT, src(spec, 1), update(spec, 1, 2, r2[1], ver=1, offset=64), D.COMPLETE,
             results(spec, 2, 1, 2, 64, 120, s2)),
    ]
    v.registers = (slot_regs(spec, 2, 0, 0, 2, 120, 0, s1[:2]) +
                   slot_regs(spec, 2, 1, 0b11, 2, 120, 64, s2[:2]))
    return v


def v_copy_delayed_past_a_round() -> Vector:
    """A copy held back until both workers finished the next round: the version it names is
    idle again (empty bitmap), but its round is not the successor of that version's last round,
    so it must not open a round with stale data (one version bit alone could not tell)."""
    spec = make_job(9, 2, Encoding.INT32)
    r = [[[1, 1], [2, 2]], [[3, 3], [4, 4]], [[5, 6], [7, 8]]]
    s = [exact_sums(spec, x) for x in r]
    old = update(spec, 0, 0, r[0][0])
    v = Vector("copy_delayed_past_a_whole_round_is_dropped", (spec,))
    v.steps = [
        Step(PORT, src(spec, 0), old, D.FIRST),
        Step(PORT, src(spec, 1), update(spec, 1, 0, r[0][1]), D.COMPLETE,
             results(spec, 0, 0, 2, 0, 120, s[0])),
        Step(PORT, src(spec, 0), update(spec, 0, 0, r[1][0], ver=1, offset=2), D.FIRST),
        Step(PORT, src(spec, 1), update(spec, 1, 0, r[1][1], ver=1, offset=2), D.COMPLETE,
             results(spec, 0, 1, 2, 2, 120, s[1])),
        # round 0's copy of worker 0 arrives now: version 0 is idle, the copy is two rounds old
        Step(PORT, src(spec, 0), old, D.DROP_DUPLICATE),
        # round 2 opens version 0 as usual and sums only round-2 values
        Step(PORT, src(spec, 1), update(spec, 1, 0, r[2][1], ver=2, offset=4), D.FIRST),
        Step(PORT, src(spec, 0), update(spec, 0, 0, r[2][0], ver=2, offset=4), D.COMPLETE,
             results(spec, 0, 2, 2, 4, 120, s[2])),
    ]
    v.registers = (slot_regs(spec, 0, 0, 0b11, 2, 120, 4, s[2][:2]) +
                   slot_regs(spec, 0, 1, 0, 2, 120, 2, s[1][:2]))
    return v


def v_reinstalled_job_drops_earlier_copy() -> Vector:
    """Issue 16 item 1: job 20 completes round 0 (1 + 100), is removed and installed again
    with the same id, slots and worker addresses; a held-back copy of the old worker 1 packet
    arrives first. The install reports round 2 as the slot's first round (round 0 was its last),
    so the old round-0 copy is stale and the new round sums only new values (2 + 200)."""
    spec = make_job(20, 2, Encoding.INT32, slot_base=4, slot_count=2)
    old = [update(spec, w, 0, [x]) for w, x in ((0, 1), (1, 100))]
    new = [update(spec, w, 0, [x], ver=2, offset=7) for w, x in ((0, 2), (1, 200))]
    v = Vector("reinstalled_job_drops_copy_of_earlier_installation", (spec,))
    v.steps = [
        Step(PORT, src(spec, 0), old[0], D.FIRST),
        Step(PORT, src(spec, 1), old[1], D.COMPLETE, results(spec, 0, 0, 1, 0, 120, [101])),
        # slot 1 saw no update: the first install admitted rounds 0 and 1 there, so the
        # second one starts it past them, at round 1 (version 1) and 2 (version 0)
        Reinstall(spec, ((0, 2), (1, 1))),
        Step(PORT, src(spec, 1), old[1], D.DROP_DUPLICATE, note="copy of the old installation"),
        Step(PORT, src(spec, 0), new[0], D.FIRST),
        Step(PORT, src(spec, 1), new[1], D.COMPLETE, results(spec, 0, 2, 1, 7, 120, [202])),
        Step(PORT, src(spec, 1), old[1], D.DROP_DUPLICATE, note="the copy again"),
    ]
    v.registers = slot_regs(spec, 0, 0, 0b11, 2, 120, 7, [202])
    return v


def v_slot_reuse() -> Vector:
    spec = make_job(7, 3, Encoding.NAT8, slot_base=2, slot_count=2)
    rng = np.random.default_rng(11)
    v = Vector("slot_reuse_alternating_versions_overwrites", (spec,))
    sums = []
    for r in range(4):
        vals = [payload_values(spec, rng, 256) for _ in range(3)]
        sums.append(exact_sums(spec, vals))
        order = [(r + k) % 3 for k in range(3)]   # a different first contributor each round
        for k, w in enumerate(order):
            v.steps.append(Step(
                PORT, src(spec, w), update(spec, w, 1, vals[w], ver=r, exponent=100 + r,
                                           offset=1000 * r),
                D.COMPLETE if k == 2 else (D.FIRST if k == 0 else D.AGGREGATE),
                results(spec, 1, r, 256, 1000 * r, 100 + r, sums[r]) if k == 2 else ()))
    v.registers = (slot_regs(spec, 1, 0, 0, 3, 102, 2000, sums[2][:8]) +
                   slot_regs(spec, 1, 1, 0b111, 3, 103, 3000, sums[3][:8]))
    return v


def v_cm() -> Vector:
    spec = make_job(8, 3, Encoding.NAT8, cm=True)
    rng = np.random.default_rng(13)
    vals = [payload_values(spec, rng, 256) for _ in range(3)]
    sums = exact_sums(spec, vals)
    u = [update(spec, w, 0, vals[w], exponent=117 + w, offset=7) for w in range(3)]
    S = spec.shift
    # slot 1: sums that are powers of two or zero, so C_M is deterministic and exact
    det = [[1, 0, 3, 0x81, 0x7F], [1, 0x80, 0x7F, 0x81, 0x7F], [0x7F, 0x7F, 0x7F, 0x7F, 0x7F]]
    det_sums = exact_sums(spec, det)
    assert det_sums[:5] == [1 << S, 0, 1 << (S - 3), -(1 << S), 0]
    det_codes = [S, NAT8_ZERO, S - 3, NAT8_SIGN | S, NAT8_ZERO]
    v = Vector("cm_codes_bracket_sums_and_retransmission_repeats_them", (spec,))
    v.steps = [
        Step(PORT, src(spec, 0), u[0], D.FIRST),
        Step(PORT, src(spec, 1), u[1], D.AGGREGATE),
        Step(PORT, src(spec, 2), u[2], D.COMPLETE,
             cm_results(spec, 0, 0, 256, 7, 119, sums, label="cm_round")),
        Step(PORT, src(spec, 1), u[1], D.RETRANSMIT_REPLY,
             cm_results(spec, 0, 0, 256, 7, 119, sums, label="cm_reply", to=[1],
                        same_as="cm_round")),
        Step(PORT, src(spec, 0), u[0], D.RETRANSMIT_REPLY,
             cm_results(spec, 0, 0, 256, 7, 119, sums, label="cm_reply0", to=[0],
                        same_as="cm_round")),
    ]
    for w in range(3):
        k = w == 2
        exp = tuple(Expected(PORT, src(spec, x), data=pack_packet(
            result_header(spec, x, 1, 0, 5, 0, 120), np.array(det_codes, np.uint8)))
            for x in range(3)) if k else ()
        v.steps.append(Step(PORT, src(spec, w), update(spec, w, 1, det[w]),
                            D.COMPLETE if k else (D.FIRST if w == 0 else D.AGGREGATE), exp))
    # C_M values are written back into the accumulators
    v.registers = slot_regs(spec, 1, 0, 0b111, 3, 120, 0, det_sums[:5])
    return v


def v_two_jobs() -> Vector:
    a = make_job(10, 2, Encoding.NAT8, slot_base=0, slot_count=4)
    b = make_job(11, 3, Encoding.INT32, slot_base=4, slot_count=4)
    rng = np.random.default_rng(17)
    va = [payload_values(a, rng, 256) for _ in range(2)]
    vb = [payload_values(b, rng, 64) for _ in range(3)]
    sa, sb = exact_sums(a, va), exact_sums(b, vb)
    v = Vector("two_jobs_disjoint_slot_ranges", (a, b))
    v.steps = [
        Step(PORT, src(b, 2), update(b, 2, 1, vb[2], exponent=90), D.FIRST),
        Step(PORT, src(a, 0), update(a, 0, 1, va[0], exponent=100), D.FIRST),
        Step(PORT, src(b, 0), update(b, 0, 1, vb[0], exponent=91), D.AGGREGATE),
        Step(PORT, src(a, 1), update(a, 1, 1, va[1], exponent=99), D.COMPLETE,
             results(a, 1, 0, 256, 0, 100, sa)),
        Step(PORT, src(b, 1), update(b, 1, 1, vb[1], exponent=92), D.COMPLETE,
             results(b, 1, 0, 64, 0, 92, sb)),
    ]
    v.registers = (slot_regs(a, 1, 0, 0b11, 2, 100, 0, sa[:4]) +
                   slot_regs(b, 1, 0, 0b111, 3, 92, 0, sb[:4]))
    return v


def v_drop(reason: str) -> Vector:
    """Worker 0 opens slot 1; the bad packet changes nothing; worker 1 completes the round."""
    nat = make_job(20, 2, Encoding.NAT8, slot_base=4, slot_count=4)
    i32 = make_job(21, 2, Encoding.INT32, slot_base=8, slot_count=4)
    spec = i32 if reason.endswith("int32") else nat
    vals = [[0, 2, 0x81], [1, 0x7F, 0x83]] if spec is nat else [[7, -8, 9], [70, 80, -90]]
    sums = exact_sums(spec, vals)
    good1 = update(spec, 1, 1, vals[1], exponent=101)
    hdr = dict(job=spec.job_id, worker=1, slot=1, count=3, exponent=101,
               encoding=int(spec.encoding))
    w1 = src(spec, 1)
    bad = {
        "unknown_job": (w1, update(make_job(99, 2, spec.encoding), 1, 1, vals[1]),
                        D.DROP_UNKNOWN_JOB),
        "unregistered_source_port": ((w1[0], w1[1] + 1000), good1, D.DROP_UNREGISTERED),
        "unregistered_worker_id_for_source": (w1, update(spec, 0, 1, vals[1]),
                                              D.DROP_UNREGISTERED),
        "worker_id_ge_n": (w1, raw_update(**{**hdr, "worker": 2}), D.DROP_BAD_WORKER),
        "worker_id_31": (w1, raw_update(**{**hdr, "worker": 31}), D.DROP_BAD_WORKER),
        "slot_out_of_range": (w1, raw_update(**{**hdr, "slot": 4}), D.DROP_BAD_SLOT),
        "truncated_header": (w1, good1[:10], D.DROP_MALFORMED),
        "truncated_payload": (w1, good1[:-1], D.DROP_MALFORMED),
        "over_long_payload": (w1, good1 + b"\x7f", D.DROP_MALFORMED),
        "empty_datagram": (w1, b"", D.DROP_MALFORMED),
        "bad_element_count": (w1, raw_update(**{**hdr, "count": 257}), D.DROP_BAD_COUNT),
        "bad_element_count_int32": (w1, raw_update(**{**hdr, "count": 65}), D.DROP_BAD_COUNT),
        "bad_version": (w1, raw_update(**{**hdr, "version": 2}), D.DROP_BAD_VERSION),
        "bad_version_zero": (w1, raw_update(**{**hdr, "version": 0}), D.DROP_BAD_VERSION),
        "bad_msg_type_result": (w1, raw_update(**{**hdr, "msg_type": 2}), D.DROP_BAD_TYPE),
        "bad_msg_type_unknown": (w1, raw_update(**{**hdr, "msg_type": 9}), D.DROP_BAD_TYPE),
        "encoding_not_the_jobs": (w1, raw_update(**{**hdr, "encoding": 0}),
                                  D.DROP_BAD_ENCODING),
        "encoding_unknown": (w1, raw_update(**{**hdr, "encoding": 5}), D.DROP_BAD_ENCODING),
    }[reason]
    where, data, decision = bad
    v = Vector(f"drop_{reason}", (nat, i32))
    opened = tuple(slot_regs(spec, 1, 0, 0b01, 1, 120, 0, exact_sums(spec, [vals[0]])[:4]))
    v.steps = [
        Step(PORT, src(spec, 0), update(spec, 0, 1, vals[0]), D.FIRST),
        Step(PORT, where, data, decision, registers=opened, note=reason),
        Step(PORT, w1, good1, D.COMPLETE, results(spec, 1, 0, 3, 0, 120, sums)),
    ]
    v.registers = slot_regs(spec, 1, 0, 0b11, 2, 120, 0, sums[:4])
    return v


DROP_REASONS = ("unknown_job", "unregistered_source_port", "unregistered_worker_id_for_source",
                "worker_id_ge_n", "worker_id_31", "slot_out_of_range", "truncated_header",
                "truncated_payload", "over_long_payload", "empty_datagram",
                "bad_element_count", "bad_element_count_int32", "bad_version",
                "bad_version_zero", "bad_msg_type_result", "bad_msg_type_unknown",
                "encoding_not_the_jobs", "encoding_unknown")


def v_headroom(enc: Encoding) -> Vector:
    spec = make_job(30 + int(enc), 32, enc, slot_count=2)
    S = spec.shift
    assert S == 25
    if enc == Encoding.NAT8:
        pos, neg = [0] * 256, [NAT8_SIGN] * 256            # +-2^S from every worker
    else:
        pos, neg = [1 << S] * 64, [-(1 << S)] * 64
    v = Vector(f"headroom_n32_max_magnitude_{enc.name}", (spec,))
    for slot, vals, total in ((0, pos, 1 << 30), (1, neg, -(1 << 30))):
        sums = exact_sums(spec, [vals] * 32)
        assert sums == [total] * CAP[enc] and 32 * (1 << S) == 1 << 30
        for w in range(32):
            last = w == 31
            v.steps.append(Step(PORT, src(spec, w), update(spec, w, slot, vals),
                                D.COMPLETE if last else (D.FIRST if w == 0 else D.AGGREGATE),
                                results(spec, slot, 0, CAP[enc], 0, 120, sums) if last else ()))
        v.registers += slot_regs(spec, slot, 0, 0xFFFFFFFF, 32, 120, 0, sums[:4])
    return v


def v_priming(enc: Encoding) -> Vector:
    spec = make_job(40 + int(enc), 3, enc)
    exps = [90, 130, 110]
    v = Vector(f"priming_round_returns_max_exponent_{enc.name}", (spec,))
    for slot in range(2):
        for w in range(3):
            last = w == 2
            v.steps.append(Step(
                PORT, src(spec, w), update(spec, w, slot, [], exponent=exps[(w + slot) % 3],
                                           offset=CAP[enc] * slot),
                D.COMPLETE if last else (D.FIRST if w == 0 else D.AGGREGATE),
                results(spec, slot, 0, 0, CAP[enc] * slot, 130, [0] * CAP[enc])
                if last else ()))
    v.registers = slot_regs(spec, 0, 0, 0b111, 3, 130, 0, [0, 0])
    return v


def v_single_worker() -> Vector:
    spec = make_job(50, 1, Encoding.NAT8)
    sums = exact_sums(spec, [[0, 5, 0x85]])
    v = Vector("single_worker_job_completes_on_first", (spec,))
    v.steps = [Step(PORT, src(spec, 0), update(spec, 0, 0, [0, 5, 0x85]), D.COMPLETE,
                    results(spec, 0, 0, 3, 0, 120, sums)),
               Step(PORT, src(spec, 0), update(spec, 0, 0, [0, 5, 0x85]), D.RETRANSMIT_REPLY,
                    results(spec, 0, 0, 3, 0, 120, sums))]
    return v


def v_result_part_boundary() -> Vector:
    """NAT8 results without C_M come in parts of RESULT_PART_SUMS sums: a chunk of exactly one
    part's count has one result packet per worker (no empty second part), one element more
    has two; a retransmission reply repeats exactly those parts."""
    spec = make_job(51, 2, Encoding.NAT8, slot_count=4)
    rng = np.random.default_rng(51)
    v = Vector("nat8_result_parts_at_the_part_boundary", (spec,))
    for slot, count in enumerate((RESULT_PART_SUMS - 1, RESULT_PART_SUMS, RESULT_PART_SUMS + 1)):
        vals = [payload_values(spec, rng, count) for _ in range(2)]
        sums = exact_sums(spec, vals)
        off = 256 * slot
        v.steps += [Step(PORT, src(spec, 0), update(spec, 0, slot, vals[0], offset=off),
                         D.FIRST),
                    Step(PORT, src(spec, 1), update(spec, 1, slot, vals[1], offset=off),
                         D.COMPLETE, results(spec, slot, 0, count, off, 120, sums)),
                    Step(PORT, src(spec, 0), update(spec, 0, slot, vals[0], offset=off),
                         D.RETRANSMIT_REPLY, results(spec, slot, 0, count, off, 120, sums,
                                                     to=[0]))]
        assert len(v.steps[-2].expect) == 2 * (1 if count <= RESULT_PART_SUMS else 2)
    return v


def all_vectors() -> list[Vector]:
    vs = [v_full_aggregation(e, n) for e in (Encoding.INT32, Encoding.NAT8) for n in (2, 3, 4)]
    vs += [v_out_of_order(), v_retransmit_before_completion(), v_retransmit_after_completion(),
           v_retransmit_after_other_worker_moved_on(), v_stale_duplicate(),
           v_copy_delayed_past_a_round(), v_reinstalled_job_drops_earlier_copy(), v_slot_reuse(),
           v_cm(), v_two_jobs(), v_single_worker(), v_result_part_boundary()]
    vs += [v_drop(r) for r in DROP_REASONS]
    vs += [v_headroom(e) for e in (Encoding.NAT8, Encoding.INT32)]
    vs += [v_priming(e) for e in (Encoding.INT32, Encoding.NAT8)]
    names = [v.name for v in vs]
    assert len(set(names)) == len(names)
    return vs


VECTORS = all_vectors()
