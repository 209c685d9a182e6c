"""The embedded switch's per-packet algorithm (docs/protocol.md), compiled once by numba.

This is the only implementation of the data plane's decisions; switch.pipeline owns the state
and the control plane and calls `process_batch` on a batch of received packets. Every array
passed in is state the P4Runtime server reads too (the P4-named registers and the decisions
counter are the very numpy arrays of Pipeline.registers / counters_*), or a compiled image of
the tables (`JobTables`, rebuilt by the pipeline when an entry changes).

A batch: row i of `rx` holds packet i, its UDP payload at rx_off[i] with rx_len[i] bytes
(rx_len may exceed what the row holds: only the first UPDATE_LEN bytes are read, the rest
matters through its length). Outputs are written as whole packets into rows of `out`
(`out_len` bytes each) with `out_rep` naming the replica row (egress port and address
rewrite) they go to. Trace records go into `trace` (TRACE_DTYPE), one per packet.

Numbers in the loops are kept int64 (numba promotes mixed unsigned/signed arithmetic to
float otherwise); the random source is nina.jit's xorshift64* over a state per pipeline
(the loss draws, and a key per C_M result, whose elements take counter-based draws under it).

No row views per packet: each view (`acc[idx]`, a payload slice, an output row) costs an
atomic increment and decrement of its array's reference count, and those took 30 % of the
kernel's time (perf: lock incq/decq in NRT_incref/decref). The 2-D arrays are flattened once
per batch and indexed at a row's base offset. Element loops index with uint64 (`ub + U(e)`):
numba fixes up every signed index that might be negative, and that select per element kept
the loops from vectorising; unsigned indices skip it.
"""
from __future__ import annotations

import numpy as np

from nina.decisions import Decision
from nina.jit import (draw32_from, draw_base, leading_zeros, njit, rand_u32, rd16, rd32, rd32u,
                      wr16, wr32)
from nina.wire import (ELEMENTS_INT32, ELEMENTS_NAT8, FLAG_CM, FLAG_VER, HEADER_LEN, NAT8_MAG,
                       NAT8_SIGN, NAT8_ZERO, RESULT_PART_SUMS, RID_PART_SHIFT, ROUND_MOD, VERSION,
                       Encoding, MsgType)

UPDATE_LEN = HEADER_LEN + 256   # every UPDATE is 16 + 256 bytes, INT32 and NAT8 alike
OUT_ROW = HEADER_LEN + 4 * RESULT_PART_SUMS   # the largest result packet (512-byte sums part)

# Columns of JobTables.jobs (one row per installed job).
J_ID, J_N, J_WLIMIT, J_SLOT_BASE, J_SLOT_COUNT, J_SHIFT, J_ENC, J_CM, J_PARTS, J_LOSS, \
    J_REP_LO, J_REP_HI, J_ADM = range(13)
N_JOB_COLS = 13
# Columns of JobTables.replicas: egress port, worker id, result part, then the worker_addr
# rewrite (destination MAC, IP, UDP port; switch MAC, IP).
R_PORT, R_WID, R_PART, R_DMAC, R_DIP, R_DPORT, R_SMAC, R_SIP = range(8)
N_REP_COLS = 8
# Columns of JobTables.admit: ingress port, source IP, source UDP port of an admitted worker.
A_PORT, A_IP, A_UDP = range(3)

D_FIRST, D_AGGREGATE, D_COMPLETE = int(Decision.FIRST), int(Decision.AGGREGATE), \
    int(Decision.COMPLETE)
D_REPLY, D_DUP = int(Decision.RETRANSMIT_REPLY), int(Decision.DROP_DUPLICATE)
D_MALFORMED, D_BAD_VERSION = int(Decision.DROP_MALFORMED), int(Decision.DROP_BAD_VERSION)
D_BAD_TYPE, D_BAD_ENCODING = int(Decision.DROP_BAD_TYPE), int(Decision.DROP_BAD_ENCODING)
D_BAD_COUNT, D_UNKNOWN_JOB = int(Decision.DROP_BAD_COUNT), int(Decision.DROP_UNKNOWN_JOB)
D_BAD_WORKER, D_UNREGISTERED = int(Decision.DROP_BAD_WORKER), int(Decision.DROP_UNREGISTERED)
D_BAD_SLOT, D_INJECTED = int(Decision.DROP_BAD_SLOT), int(Decision.DROP_INJECTED)
_UPDATE, _RESULT = int(MsgType.UPDATE), int(MsgType.RESULT)
_INT32, _NAT8 = int(Encoding.INT32), int(Encoding.NAT8)
_MAX_ENC = max(int(e) for e in Encoding)
_CAP_INT32, _CAP_NAT8 = ELEMENTS_INT32, ELEMENTS_NAT8
_PART = RESULT_PART_SUMS
_RID_WORKER = (1 << RID_PART_SHIFT) - 1
_ROUND_FLAGS = 0xFD   # every flags bit but CM: the version bit and the round's high bits
_FLAG_VER, _FLAG_CM, _VERSION, _HLEN, _ULEN = FLAG_VER, FLAG_CM, VERSION, HEADER_LEN, UPDATE_LEN
_SIGN, _MAG, _ZERO, _RMOD = NAT8_SIGN, NAT8_MAG, NAT8_ZERO, ROUND_MOD
U = np.uint64   # element loop indices (see the module docstring)
U32 = np.uint32


@njit
def nat8_addend(c, shift):
    """The int32 addend of uplink NAT8 code c at the job's shift (uint32, 0..255: the table's
    8-bit parameter), as p4/src/aggregate.p4's add_nat8 computes it (nina.wire.nat8_to_int):
    +-(1 << (shift - o)) for o = c & MAG, 0 when o > shift or the shift passes 31. In uint32
    arithmetic, each result cast back: numba widens every integer operation to 64 bits, and
    64-bit lanes halve what a vector instruction holds (this loop in 32-bit lanes: 88 -> 53 ns
    a packet, against the lookup table it replaces)."""
    o = U32(U32(c) & U32(_MAG))
    d = U32((np.int64(shift) - np.int64(o)) & 0xFFFFFFFF)   # o > shift wraps past 31: 0 too
    m = U32(U32(1) << U32(d & U32(31))) if d < U32(32) else U32(0)
    return np.int32(-np.int64(m)) if U32(c) >= U32(_SIGN) else np.int32(m)


@njit
def cm_code(x, u):
    """C_M of one int32 sum x with uniform uint32 u (nina.wire.int_to_cm_codes, per element):
    p = top set bit of |x|, up to p + 1 when (u mod 2^p) < |x| - 2^p. uint32 arithmetic,
    selects rather than early returns, so the element loop vectorises in 32-bit lanes (with
    cm_value: 221 -> 137 ns a result against the int64 form)."""
    neg = x < 0
    m = U32(-np.int64(x)) if neg else U32(x)   # |x|; |-2^31| = 2^31 fits
    p = U32(U32(31) - U32(leading_zeros(U32(m | U32(1)))))   # m = 0 is ZERO, below
    top = U32(U32(1) << p)
    up = U32(1) if U32(u & U32(top - U32(1))) < U32(m ^ top) else U32(0)
    c = U32(U32(p + up) | (U32(_SIGN) if neg else U32(0)))
    return np.uint8(_ZERO) if m == U32(0) else np.uint8(c)


@njit
def cm_value(c):
    """What C_M code c stands for, as the int32 accumulator keeps it: +-(1 << p) (p <= 31;
    2^31 wraps to -2^31 as numpy's int32 copy does), 0 for ZERO (nina.wire.cm_codes_to_int)."""
    v = U32(U32(1) << U32(U32(c) & U32(31))) if U32(c) != U32(_ZERO) else U32(0)
    return np.int32(-np.int64(v)) if U32(c) >= U32(_SIGN) else np.int32(v)


@njit
def process_batch(rx, rx_off, rx_len, rx_port, rx_ip, rx_udp, frame_len, n_rx,
                  jobmap, jobs, admit_ptr, admit, replicas,
                  bitmap, counts, max_exp, offsets, rounds, acc, ctr_pkts, ctr_bytes,
                  rng, out, out_len, out_rep, body, trace, tracing, now_ns):
    """Run packets 0..n_rx-1 through the pipeline. Stops early when `out` could not hold the
    next packet's results; returns (packets consumed, packets written to out).

    One function, with no compiled helper taking an array: a compiled call (inlined or not)
    increments and decrements the reference count of each array argument, nine of them per
    result, which cost more than writing it. So a packet's result and its trace record are
    each written at one place in the loop, reached from every path that needs it."""
    n_out = 0
    cap_out = out.shape[0]
    # flat views, once per batch (see the module docstring)
    rxw, orow, nacc = rx.shape[1], out.shape[1], acc.shape[1]
    rxf, outf, accf = rx.reshape(-1), out.reshape(-1), acc.reshape(-1)
    for i in range(n_rx):
        port = rx_port[i]
        fl = frame_len[i]
        nb = rx_len[i]
        o0 = rx_off[i]
        have_hdr = nb >= _HLEN
        if have_hdr and o0 + min(nb, _ULEN) > rxw:
            raise ValueError("process_batch: a row holds less than its packet's first bytes")
        o0 += i * rxw   # the packet's payload in rxf
        version = mtype = enc = flags = job = w = exp = slot = count = offset = 0
        if have_hdr:
            version = np.int64(rxf[o0])
            mtype = np.int64(rxf[o0 + 1])
            enc = np.int64(rxf[o0 + 2])
            flags = np.int64(rxf[o0 + 3])
            job = rd16(rxf, o0 + 4)
            w = np.int64(rxf[o0 + 6])
            exp = np.int64(rxf[o0 + 7])
            slot = rd16(rxf, o0 + 8)
            count = rd16(rxf, o0 + 10)
            offset = rd32(rxf, o0 + 12)
        v = flags & _FLAG_VER
        jx = jobmap[job] if have_hdr else -1
        # 1. parse and validate, in the order of docs/protocol.md
        decision = -1
        if nb != _ULEN:
            decision = D_MALFORMED
        elif version != _VERSION:
            decision = D_BAD_VERSION
        elif mtype != _UPDATE:
            decision = D_BAD_TYPE
        elif enc > _MAX_ENC or (jx >= 0 and enc != jobs[jx, J_ENC]):
            decision = D_BAD_ENCODING
        elif count > (_CAP_INT32 if enc == _INT32 else _CAP_NAT8):
            decision = D_BAD_COUNT
        elif jx < 0:
            decision = D_UNKNOWN_JOB
        elif w >= jobs[jx, J_WLIMIT]:
            decision = D_BAD_WORKER
        else:
            admitted = False
            a0 = admit_ptr[jobs[jx, J_ADM] + w]
            a1 = admit_ptr[jobs[jx, J_ADM] + w + 1]
            for a in range(a0, a1):
                if admit[a, A_PORT] == port and admit[a, A_IP] == rx_ip[i] and \
                        admit[a, A_UDP] == rx_udp[i]:
                    admitted = True
                    break
            if not admitted:
                decision = D_UNREGISTERED
            elif slot >= jobs[jx, J_SLOT_COUNT]:
                decision = D_BAD_SLOT
            elif jobs[jx, J_LOSS] and (rand_u32(rng) >> 16) < jobs[jx, J_LOSS]:
                decision = D_INJECTED
        # what the trace record says besides the header: for a drop, the header as read
        t_exp, t_count, t_bitmap = exp, 0, 0
        if decision < 0:
            if n_out + (jobs[jx, J_REP_HI] - jobs[jx, J_REP_LO]) > cap_out:
                return i, n_out   # no room for this packet's results: the caller sends, resumes

            rnd = (flags & _FLAG_VER) | ((flags & 0xFC) >> 1)   # nina.wire.round_of
            idx = 2 * (jobs[jx, J_SLOT_BASE] + slot) + v
            oidx = idx ^ 1
            bit = np.int64(1) << w
            n = jobs[jx, J_N]
            bm = np.int64(bitmap[idx])
            cnt = np.int64(counts[idx])
            rd = np.int64(rounds[idx])
            pb = U(o0 + _HLEN)   # the elements in rxf
            ab = U(idx * nacc)   # (slot, ver)'s sums in accf
            shift = U32(jobs[jx, J_SHIFT])   # NAT8's headroom shift
            only = -2   # the results to send: none (-2), all (-1), or worker `only`'s
            if bm & bit:
                # 2. w already contributed to (slot, v): a retransmission of this round is
                # answered when complete, else consumed; a packet of another round is stale.
                # Never add twice.
                if rd == rnd and cnt == n:
                    decision = D_REPLY
                    only = w
                else:
                    decision = D_DUP
            elif (bm and (rd != rnd or cnt >= n)) or \
                    (not bm and cnt and rnd != (rd + 2) % _RMOD):
                # 3. stale: joins only the open round of v; a new round only once every worker
                # has left v's last round, and only as its successor (round + 2)
                decision = D_DUP
            else:
                # 4. first arrival of w: claim the bit in v, release it in 1 - v
                bitmap[oidx] = np.int64(bitmap[oidx]) & ~bit & 0xFFFFFFFF
                if bm == 0:
                    c = 1
                    bitmap[idx] = bit
                    max_exp[idx] = exp
                    rounds[idx] = rnd
                    offsets[idx] = offset
                    if enc == _NAT8:
                        for e in range(_CAP_NAT8):
                            accf[ab + U(e)] = nat8_addend(rxf[pb + U(e)], shift)
                    else:
                        for e in range(_CAP_INT32):
                            accf[ab + U(e)] = np.int32(np.uint32(rd32u(rxf, pb + U(4 * e))))
                    decision = D_FIRST
                else:
                    c = (cnt + 1) & 0xFF
                    bitmap[idx] = bm | bit
                    if exp > max_exp[idx]:
                        max_exp[idx] = exp
                    if enc == _NAT8:
                        for e in range(_CAP_NAT8):
                            accf[ab + U(e)] += nat8_addend(rxf[pb + U(e)], shift)
                    else:
                        for e in range(_CAP_INT32):
                            accf[ab + U(e)] += np.int32(np.uint32(rd32u(rxf, pb + U(4 * e))))
                    decision = D_AGGREGATE
                counts[idx] = c
                if c == n:
                    decision = D_COMPLETE
                    only = -1
            if only >= -1:
                # 5. the result of (slot, v), one packet per replica of the job's group
                # (replica (port, part << 8 | wid) carries part `part` to worker wid; parts
                # the chunk does not reach are not sent); only >= 0: just that worker's
                # copies (a retransmission reply). On the completing packet C_M also writes
                # the compressed values back, so a reply re-encodes the same powers of two.
                cm = jobs[jx, J_CM]
                parts = jobs[jx, J_PARTS]
                # the payload, big-endian, once: int32 sums (NAT8 parts of 128, INT32 64) or
                # C_M codes
                if enc == _INT32:
                    for e in range(_CAP_INT32):
                        wr32(body, 4 * e, np.int64(accf[ab + U(e)]) & 0xFFFFFFFF)
                    nbody = 4 * _CAP_INT32
                elif cm:
                    # a counter-based draw per element under one key from the pipeline's
                    # stream (as the workers' C_nat, nina.jit.draw32): no chain through a
                    # generator state
                    base = draw_base(rand_u32(rng), 0)
                    for e in range(_CAP_NAT8):
                        cc = cm_code(accf[ab + U(e)], draw32_from(base, e))
                        body[U(e)] = cc
                        if only == -1:
                            accf[ab + U(e)] = cm_value(cc)
                    nbody = _CAP_NAT8
                else:
                    for e in range(_CAP_NAT8):
                        wr32(body, 4 * e, np.int64(accf[ab + U(e)]) & 0xFFFFFFFF)
                    nbody = 4 * _CAP_NAT8
                rflags = (flags & _ROUND_FLAGS) | (_FLAG_CM if cm else 0)
                rexp = np.int64(max_exp[idx])
                part_bytes = nbody // parts
                for rr in range(jobs[jx, J_REP_LO], jobs[jx, J_REP_HI]):
                    rw = replicas[rr, R_WID]
                    rp = replicas[rr, R_PART]
                    if (only >= 0 and rw != only) or rp >= parts:
                        continue
                    if parts > 1:   # nina.wire.result_part_count, inlined
                        pa = rp * _PART
                        if rp and count <= pa:
                            continue
                        pcount = min(_PART, count - pa)
                        poffset = offset + pa
                    else:
                        pcount = count
                        poffset = offset
                    o = n_out * orow   # the output row's start in outf
                    outf[o] = _VERSION
                    outf[o + 1] = _RESULT
                    outf[o + 2] = enc
                    outf[o + 3] = rflags
                    wr16(outf, o + 4, job)
                    outf[o + 6] = rw
                    outf[o + 7] = rexp
                    wr16(outf, o + 8, slot)
                    wr16(outf, o + 10, pcount)
                    wr32(outf, o + 12, poffset)
                    ob, sb = U(o + _HLEN), U(rp * part_bytes)
                    for e in range(part_bytes):
                        outf[ob + U(e)] = body[sb + U(e)]
                    out_len[n_out] = _HLEN + part_bytes
                    out_rep[n_out] = rr
                    n_out += 1
            t_exp, t_count, t_bitmap = max_exp[idx], counts[idx], bitmap[idx]
        ctr_pkts[decision] += 1
        ctr_bytes[decision] += fl
        if tracing:
            r = trace[i]
            r["time_ns"] = now_ns
            r["ingress_port"] = port
            r["job"] = job
            r["slot"] = slot
            r["worker"] = w
            r["decision"] = decision
            r["ver"] = v
            r["exponent"] = t_exp
            r["count"] = t_count
            r["bitmap"] = t_bitmap
            r["offset"] = offset
            r["elements"] = count
    return n_rx, n_out
