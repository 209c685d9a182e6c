"""The all-reduce client's window: per-slot state in one object, and its compiled step.

A Window holds, for each of the W slots a worker keeps in flight, what the client must know
about the round outstanding there (chunk, priming or data, round number, result parts seen,
timers, whether it was retransmitted) and the update packet itself (kept for
retransmission, and sent straight from its row). `accept` is the client's whole per-packet
work, compiled (nina.jit): validate each result against the slot it names, decode it into
place, and when a slot's result is complete, take the agreed exponent it carries, encode the
slot's next chunk into its packet row and list the slot for sending. The Python side
(worker/allreduce.py) only moves batches: one recvmmsg in, one accept call, one sendmmsg out.

Checks a result must pass to count (else it is ignored): the result size of the job's
encoding; version, RESULT type, encoding, C_M flag, worker id and count within the wire's
limits; this job and worker; a slot of the window with a round outstanding; that round's
number; the offset and count of one of that chunk's result parts (nina.wire.result_part_count)
not seen before.
"""
from __future__ import annotations

import math

import numpy as np

from nina.jit import njit, rd32, wr16, wr32
from nina.wire import (CAPACITY, FLAG_CM, FLAG_VER, HEADER_LEN, MAX_WORKERS, NAT8_ZERO,
                       ROUND_MOD, VERSION, Encoding, MsgType)
from worker.switch_encoding import SwitchCodec, int32_value, nat8_row, result_value

UPDATE_LEN = HEADER_LEN + 256   # INT32 and NAT8 updates alike

# cfg columns (one int64 array per client, see Window.cfg)
C_JOB, C_WID, C_W, C_K, C_PK, C_PARTS, C_N, C_CHUNKS, C_ENC, C_CM, C_SHIFT, C_STOCH, \
    C_RES_SIZE, C_RECORD = range(14)
# out columns of `accept` (int64 array): how many slots to send, results ignored, data chunks
# completed, results accepted, error kind and its chunk
O_SEND, O_IGNORED, O_DONE, O_SEEN, O_ERR, O_ERR_CHUNK = range(6)
# timing entries of `accept` (float64 array): the largest fresh RTT sample (-1: none), and the
# earliest retransmission deadline after the call (inf: none outstanding), so the client's
# loop makes no numpy pass over the deadlines per batch (two of them were 11 % of its time)
T_RTT, T_DUE = range(2)
ERR_NONE, ERR_EXCEEDS, ERR_NONFINITE = 0, 1, 2

_UPDATE, _RESULT, _NAT8, _INT32 = int(MsgType.UPDATE), int(MsgType.RESULT), \
    int(Encoding.NAT8), int(Encoding.INT32)
_CAP_NAT8, _CAP_INT32 = CAPACITY[Encoding.NAT8], CAPACITY[Encoding.INT32]
_VERSION, _HLEN, _FLAG_VER, _FLAG_CM, _RMOD, _ZERO = VERSION, HEADER_LEN, FLAG_VER, FLAG_CM, \
    ROUND_MOD, NAT8_ZERO
_MAXW = MAX_WORKERS


class Window:
    """Per-slot state of W slots (kept across calls: `rnd`, the next round number of each
    slot, is how the worker stays in step with the switch's shadow copies)."""

    def __init__(self, W: int, codec: SwitchCodec, job: int, wid: int, res_size: int):
        self.W = W
        self.rnd = np.zeros(W, np.uint8)       # next round per slot (mod 128), across calls
        self.chunk = np.full(W, -1, np.int64)  # outstanding chunk, -1: slot free
        self.prime = np.zeros(W, np.uint8)     # outstanding round is a priming exchange
        self.ver = np.zeros(W, np.uint8)       # round number of the outstanding packet
        self.parts = np.zeros(W, np.uint8)     # bitmask of the result parts received
        self.retx = np.zeros(W, np.uint8)      # retransmitted (Karn: no RTT sample)
        self.first = np.zeros(W)               # when the round was first sent
        self.deadline = np.full(W, np.inf)     # retransmission timer
        self.rto = np.zeros(W)
        self.pkts = np.zeros((W, UPDATE_LEN), np.uint8)   # the update packet of each slot
        self.send_list = np.zeros(W, np.int64)
        self.out = np.zeros(6, np.int64)
        self.timing = np.zeros(2)              # T_RTT, T_DUE of the last accept
        self.cfg = np.zeros(14, np.int64)
        c = self.cfg
        c[C_JOB], c[C_WID], c[C_W] = job, wid, W
        c[C_K], c[C_PK], c[C_PARTS] = codec.k, codec.part_k, codec.parts
        c[C_ENC], c[C_CM], c[C_SHIFT] = int(codec.encoding), codec.cm, codec.shift
        c[C_STOCH], c[C_RES_SIZE] = codec.stochastic, res_size

    def reset(self) -> None:
        """Start of a call: no round outstanding."""
        self.chunk[:] = -1
        self.deadline[:] = np.inf
        self.parts[:] = 0
        self.retx[:] = 0

    def arrays(self) -> tuple:
        return (self.cfg, self.rnd, self.chunk, self.prime, self.ver, self.parts, self.retx,
                self.first, self.deadline, self.rto, self.pkts)


@njit
def start_round(slot, c, prime, now, rto, cfg, rnd, chunk, prime_a, ver, parts, retx, first,
                deadline, rto_a, pkts, X, XB, own_exp, agreed, sent8, sent32, state):
    """Write the update for chunk c (priming: count 0, own exponent of c) into slot's packet
    row and mark it outstanding. Returns -1, or c if a value exceeds its agreed exponent."""
    W, k, n, chunks = cfg[C_W], cfg[C_K], cfg[C_N], cfg[C_CHUNKS]
    enc, shift = cfg[C_ENC], cfg[C_SHIFT]
    row = pkts[slot]
    r = np.int64(rnd[slot])
    row[0] = _VERSION
    row[1] = _UPDATE
    row[2] = enc
    row[3] = (r & 1) | ((r >> 1) << 2)   # nina.wire.round_flags
    wr16(row, 4, cfg[C_JOB])
    row[6] = cfg[C_WID]
    wr16(row, 8, slot)
    wr32(row, 12, c * k)
    if prime:
        row[7] = own_exp[c]
        wr16(row, 10, 0)
        fill = _ZERO if enc == _NAT8 else 0
        for e in range(_HLEN, UPDATE_LEN):
            row[e] = fill
    else:
        ahead = c + W
        row[7] = own_exp[ahead] if ahead < chunks else 0
        wr16(row, 10, min(k, n - c * k))
        eb = np.int64(agreed[c])
        if enc == _NAT8:
            codes = row[_HLEN:]
            if nat8_row(XB[c], eb, shift, state, codes) >= 0:
                return c
            if cfg[C_RECORD]:
                sent8[c, :] = codes
        else:
            inv = math.ldexp(1.0, shift - (eb - 126))   # 1 / nina.wire.integer_scale
            for e in range(_CAP_INT32):
                q = int32_value(X[c, e], inv, cfg[C_STOCH], state)
                wr32(row, _HLEN + 4 * e, np.int64(q) & 0xFFFFFFFF)
                if cfg[C_RECORD]:
                    sent32[c, e] = q
    chunk[slot] = c
    prime_a[slot] = prime
    ver[slot] = r
    parts[slot] = 0
    retx[slot] = 0
    first[slot] = now
    deadline[slot] = now + rto
    rto_a[slot] = rto
    return -1


@njit
def _decode_part(b, pk, cm, scale, dst):
    """The pk elements of result packet b (C_M codes or big-endian int32 sums) as floats into
    dst; False if one is beyond float32's range. C_M codes are a loop over a view from 0 with
    the range check summed, not a return inside it, so it vectorises."""
    ok = True
    if cm:
        src = b[_HLEN:_HLEN + pk]
        for e in range(min(pk, dst.size)):
            f = result_value(np.int64(src[e]), cm, scale)
            ok &= np.isfinite(f)
            dst[e] = f
    else:
        for e in range(min(pk, dst.size)):
            v = rd32(b, _HLEN + 4 * e)
            f = result_value(v - 4294967296 if v >= 2147483648 else v, cm, scale)
            ok &= np.isfinite(f)
            dst[e] = f
    return ok


@njit
def accept(rows, lens, m, now, rto, cfg, rnd, chunk, prime, ver, parts, retx, first, deadline,
           rto_a, pkts, X, XB, own_exp, agreed, result, sent8, sent32, state, send_list, out,
           timing):
    """Take received results rows[0..m-1] (see the module docstring); fills send_list with the
    slots whose next update is ready (out[O_SEND] of them), the counts in out, and timing."""
    job, wid, W, k, pk = cfg[C_JOB], cfg[C_WID], cfg[C_W], cfg[C_K], cfg[C_PK]
    nparts, n, chunks, enc, cm = cfg[C_PARTS], cfg[C_N], cfg[C_CHUNKS], cfg[C_ENC], cfg[C_CM]
    shift, res_size = cfg[C_SHIFT], cfg[C_RES_SIZE]
    cap = _CAP_NAT8 if enc == _NAT8 else _CAP_INT32
    n_send = ignored = done = seen = 0
    timing[T_RTT] = -1.0
    out[O_ERR] = ERR_NONE
    for i in range(m):
        b = rows[i]
        if lens[i] != res_size:
            ignored += 1
            continue
        flags = np.int64(b[3])
        count = (np.int64(b[10]) << 8) | np.int64(b[11])
        if b[0] != _VERSION or b[1] != _RESULT or b[2] != enc or \
                (flags & _FLAG_CM) != (_FLAG_CM if cm else 0) or b[6] >= _MAXW or count > cap:
            ignored += 1
            continue
        pjob = (np.int64(b[4]) << 8) | np.int64(b[5])
        slot = (np.int64(b[8]) << 8) | np.int64(b[9])
        if pjob != job or b[6] != wid or slot >= W:
            ignored += 1
            continue
        ch = chunk[slot]
        rnd_pkt = (flags & _FLAG_VER) | ((flags & 0xFC) >> 1)   # nina.wire.round_of
        if ch < 0 or rnd_pkt != ver[slot]:
            ignored += 1
            continue
        pr = prime[slot]
        rel = rd32(b, 12) - ch * k
        part = min(max(rel // pk, 0), nparts - 1)
        chunk_count = 0 if pr else min(max(n - ch * k, 0), k)
        part_count = min(max(chunk_count - part * pk, 0), pk)
        if rel != part * pk or count != part_count or (part and part_count == 0) or \
                (parts[slot] >> part) & 1:
            ignored += 1
            continue
        if not pr:   # decode the part into place with the chunk's agreed exponent
            scale = math.ldexp(1.0, np.int64(agreed[ch]) - 126 - shift)
            col = part * pk
            if not _decode_part(b, pk, cm, scale, result[ch, col:col + pk]):
                out[O_ERR], out[O_ERR_CHUNK] = ERR_NONFINITE, ch
                return
        parts[slot] |= np.uint8(1 << part)
        need = 1 if pr else (chunk_count + pk - 1) // pk
        if parts[slot] != (1 << need) - 1:
            continue
        # the slot's round is complete: its exponent is agreed for the chunk it names
        seen += 1
        if not retx[slot]:
            timing[T_RTT] = max(timing[T_RTT], now - first[slot])
        rnd[slot] = (np.int64(rnd[slot]) + 1) % _RMOD
        chunk[slot] = -1
        deadline[slot] = np.inf
        exp = b[7]
        if pr:
            agreed[ch] = exp
            nxt = ch
        else:
            done += 1
            nxt = ch + W
            if nxt < chunks:
                agreed[nxt] = exp
            else:
                nxt = -1
        if nxt >= 0:
            bad = start_round(slot, nxt, 0, now, rto, cfg, rnd, chunk, prime, ver, parts, retx,
                              first, deadline, rto_a, pkts, X, XB, own_exp, agreed, sent8,
                              sent32, state)
            if bad >= 0:
                out[O_ERR], out[O_ERR_CHUNK] = ERR_EXCEEDS, bad
                return
            send_list[n_send] = slot
            n_send += 1
    out[O_SEND], out[O_IGNORED], out[O_DONE], out[O_SEEN] = n_send, ignored, done, seen
    due = np.inf
    for sl in range(W):
        due = min(due, deadline[sl])
    timing[T_DUE] = due


def _warm() -> None:
    """Load (on a machine's first run: compile) the step at import, before any timer runs:
    a compile inside a call would look like a silent switch to the retransmission timers."""
    codec = SwitchCodec("NAT8", Encoding.NAT8, False, 20)
    win = Window(1, codec, 0, 0, 0)
    X = np.zeros((1, codec.k), np.float32)
    calls = (X, X.view(np.uint32), np.zeros(1, np.uint8), np.zeros(1, np.uint8))
    sent8, sent32 = np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.int32)
    state = np.ones(1, np.uint64)
    start_round(0, 0, 1, 0.0, 1.0, *win.arrays(), *calls, sent8, sent32, state)
    # the transport's receive rows and lengths (nina.udp_batch.BatchRx), as accept gets them
    rows, lengths = np.zeros((1, 64), np.uint8), np.zeros(1, np.int64)
    accept(rows, lengths, 0, 0.0, 1.0, *win.arrays(), *calls, X, sent8, sent32,
           state, win.send_list, win.out, win.timing)


_warm()
