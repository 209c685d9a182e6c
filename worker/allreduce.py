"""The all-reduce client: a float tensor in, the sum over the job's workers out, via the switch.

One call (see docs/protocol.md):
1. The tensor is cut into chunks of k elements (64 for INT32 jobs, 256 for NAT8 jobs); chunk i
   uses slot i mod W (W = window).
2. Priming: for each slot of the first window an UPDATE with count 0 carries this worker's max
   exponent byte of that slot's first chunk; the results return the agreed (max) exponents.
3. Self-clocked rounds: a result for chunk i frees its slot; the slot's version bit flips and
   chunk i + W goes out, encoded against the exponent agreed in that result (which every update
   carries one window ahead). Results are decoded with the chunk's agreed exponent.
4. An outstanding round is retransmitted unchanged when its timer expires (timer doubled each
   time, up to a ceiling); the switch never adds a retransmission twice and answers it with the
   result once the slot is complete. A round that stays incomplete for `peer_timeout` seconds
   ends the call with an error naming the slot and, if a slot reader is given, the workers
   missing from its bitmap.

Version bits persist across calls in the client: every worker of a job performs the same rounds
on every slot, so their versions stay in step without any exchange. After an error the client
is out of step with the switch and refuses further calls.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nina.config import DEFAULT_WINDOW, JobSpec
from nina.wire import (ROUND_MOD, CAPACITY, FLAG_CM, FLAG_VER, Encoding, MsgType, WireError,
                       batch_dtype, empty_batch, nat8_to_int, pack_batch, parse_packet,
                       payload_layout, result_parts, unpack_batch)
from worker import switch_encoding as se

MAX_OFFSET = 0xFFFFFFFF  # the header's u32 chunk offset


class AllReduceError(RuntimeError):
    """The call could not complete; the message says why and what to check."""


class SwitchSilent(AllReduceError):
    """Nothing came back from the switch for this job during the call."""


class SlotStalled(AllReduceError):
    """A slot never completed: some worker's contribution never reached the switch."""

    def __init__(self, message: str, slot: int, ver: int, offset: int,
                 missing: list[int] | None):
        super().__init__(message)
        self.slot, self.ver, self.offset, self.missing = slot, ver, offset, missing


class Aborted(AllReduceError):
    """The job was aborted from outside (the coordinator) while the call waited."""


def check_size(n_elements: int, encoding: Encoding) -> int:
    """Number of chunks for a tensor; a clear error when offsets would not fit the header."""
    k = CAPACITY[Encoding(encoding)]
    chunks = -(-n_elements // k)
    if chunks and (chunks - 1) * k > MAX_OFFSET:
        raise ValueError(f"tensor of {n_elements} elements is too large for one all-reduce: "
                         f"chunk offsets must fit the 32-bit header field (at most "
                         f"{MAX_OFFSET + k} elements); split it into several calls")
    return chunks


@dataclass
class CallStats:
    """What one call (or, summed, many calls) did on the wire."""
    elements: int = 0
    chunks: int = 0
    packets_out: int = 0
    packets_in: int = 0
    bytes_out: int = 0        # UDP payload bytes sent (NINA header + payload), retransmissions too
    bytes_in: int = 0         # UDP payload bytes of accepted and ignored results
    priming_packets: int = 0
    retransmissions: int = 0
    ignored: int = 0          # duplicate, stale or foreign results
    seconds: float = 0.0

    def add(self, other: "CallStats") -> None:
        for f in self.__dataclass_fields__:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass
class Result:
    values: np.ndarray                     # float32 sum over workers, same shape as the input
    stats: CallStats
    exponents: np.ndarray | None = None    # agreed exponent byte per chunk
    sent: np.ndarray | None = None         # (chunks, k) wire elements this worker sent (codes/ints)
    contribution: np.ndarray | None = None  # what this worker's sent elements mean, as floats


class AllReduceClient:
    """All-reduce over the switch for worker `wid` of job `spec` through `transport`.

    rounding: "stochastic" (unbiased; the default) or "nearest" for INT32 jobs; NAT8 jobs always
    apply natural compression. slot_reader(slot, ver) -> bitmap lets a stall error name the
    missing workers (e.g. the controller's register read). abort_check() -> str | None is polled
    while waiting; a message ends the call with Aborted. first_rounds: the first round of each
    of the job's slots, as the job's install returned it (default 0: a fresh switch).
    """

    def __init__(self, spec: JobSpec, wid: int, transport, window: int = DEFAULT_WINDOW,
                 seed: int | None = None, rounding: str = "stochastic",
                 rto: float = 0.2, rto_min: float = 0.05, rto_max: float = 1.0,
                 peer_timeout: float = 10.0,
                 slot_reader: Callable[[int, int], int | None] | None = None,
                 abort_check: Callable[[], str | None] | None = None,
                 first_rounds: Sequence[int] | None = None):
        if not 0 <= wid < spec.n_workers:
            raise ValueError(f"worker id {wid} outside the job's 0..{spec.n_workers - 1}")
        if rounding not in ("stochastic", "nearest"):
            raise ValueError(f"rounding must be 'stochastic' or 'nearest', not {rounding!r}")
        self.spec, self.wid, self.transport = spec, wid, transport
        self.encoding = Encoding(spec.encoding)
        self.k = CAPACITY[self.encoding]
        self.window = max(1, min(window, spec.slot_count))
        # next round number per slot (mod 128; its low bit is the version), kept across calls;
        # it starts where the job's installation says (nina.install_rounds; 0 on a fresh switch)
        self.round = np.zeros(self.window, np.uint8)
        if first_rounds is not None:
            if len(first_rounds) < self.window:
                raise ValueError(f"{len(first_rounds)} first rounds for a window of "
                                 f"{self.window} slots")
            self.round[:] = np.asarray(first_rounds[:self.window]) % ROUND_MOD
        self.rng = np.random.default_rng(seed)
        self.rounding = rounding
        self.rto0, self.rto_min, self.rto_max = rto, rto_min, rto_max
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.peer_timeout = peer_timeout
        self.slot_reader, self.abort_check = slot_reader, abort_check
        self.result_flags = FLAG_CM if spec.cm else 0
        self.total = CallStats()
        self.calls = 0
        self.results_seen = 0   # results accepted over the client's life
        self.broken: str | None = None
        self._n = 0
        self._res_size = batch_dtype(MsgType.RESULT, self.encoding, self.result_flags).itemsize
        # A result may come in parts (NAT8 without C_M: two packets of 128 sums), each with its
        # own offset and count; a slot is done when every part of its chunk has arrived.
        self.parts = result_parts(self.encoding, self.result_flags)
        self.part_k = payload_layout(MsgType.RESULT, self.encoding, self.result_flags).capacity

    # ---- encoding ----------------------------------------------------------------------------

    def _encode(self, rows: np.ndarray, exps: np.ndarray) -> np.ndarray:
        s = self.spec.shift
        if self.encoding == Encoding.NAT8:
            return se.nat8_encode(rows, exps, s, self.rng)
        return se.int32_encode(rows, exps, s, self.rng if self.rounding == "stochastic" else None)

    def _meaning(self, sent: np.ndarray, exps: np.ndarray) -> np.ndarray:
        s = self.spec.shift
        ints = nat8_to_int(sent, s) if self.encoding == Encoding.NAT8 else sent
        return se.decode_sums(ints, exps, s)

    def _decode(self, payload: np.ndarray, exps: np.ndarray) -> np.ndarray:
        if self.spec.cm:
            return se.decode_cm(payload, exps, self.spec.shift)
        return se.decode_sums(payload, exps, self.spec.shift)

    # ---- the call ----------------------------------------------------------------------------

    def allreduce(self, tensor: np.ndarray, record: bool = False) -> Result:
        """Sum `tensor` over the job's workers. record=True also returns the sent elements."""
        if self.broken:
            raise AllReduceError(f"all-reduce client of worker {self.wid} is out of step with "
                                 f"the switch after an earlier error ({self.broken})")
        x = np.asarray(tensor)
        n = int(x.size)
        chunks = check_size(n, self.encoding)
        x = np.ascontiguousarray(x, np.float32).ravel()
        se.check_finite(x, "tensor")
        try:
            return self._run(x, n, chunks, np.shape(tensor), record)
        except AllReduceError as e:
            self.broken = str(e)[:160]
            raise

    def _run(self, x, n, chunks, shape, record) -> Result:
        t0 = time.monotonic()
        k, W = self.k, self.window
        stats = CallStats(elements=n, chunks=chunks)
        self._n = n   # element count of the call in flight: results must echo their counts
        c0 = (self.transport.counters.packets_out, self.transport.counters.bytes_out,
              self.transport.counters.packets_in, self.transport.counters.bytes_in)
        X = np.zeros((chunks, k), np.float32)
        X.ravel()[:n] = x
        own_exp = se.exponent_bytes(X) if chunks else np.zeros(0, np.uint8)
        agreed = np.zeros(chunks, np.uint8)
        out = np.zeros((chunks, k), np.float32)
        sent = np.zeros((chunks, k), np.uint8 if self.encoding == Encoding.NAT8 else np.int32) \
            if record else None
        self.transport.recv(0.0)  # stale results of an earlier call are never outstanding now

        # Outstanding state per slot: chunk (-1 free), priming?, version, timers, packet.
        o_chunk = np.full(W, -1, np.int64)
        o_prime = np.zeros(W, bool)
        o_ver = np.zeros(W, np.uint8)
        o_first = np.zeros(W)
        o_deadline = np.full(W, np.inf)
        o_rto = np.zeros(W)
        o_retx = np.zeros(W, bool)
        o_parts = np.zeros(W, np.uint8)   # bitmask of the result parts received
        o_pkt: list[bytes | None] = [None] * W
        remaining = chunks

        def send(slots: np.ndarray, chunk_ids: np.ndarray, prime: bool) -> None:
            m = len(slots)
            if not m:
                return
            batch = empty_batch(m, MsgType.UPDATE, self.encoding, 0)
            h = batch["hdr"]
            vers = self.round[slots]
            h["flags"] = (vers & FLAG_VER) | ((vers >> 1) << 2)   # nina.wire.round_flags
            h["job"], h["worker"], h["slot"] = self.spec.job_id, self.wid, slots
            h["offset"] = chunk_ids * k
            if prime:
                h["exponent"] = own_exp[chunk_ids]
                h["count"] = 0
            else:
                ahead = chunk_ids + W
                h["exponent"] = np.where(ahead < chunks, own_exp[np.minimum(ahead, chunks - 1)], 0)
                h["count"] = np.minimum(k, n - chunk_ids * k)
                try:
                    vals = self._encode(X[chunk_ids], agreed[chunk_ids])
                except ValueError:
                    bad = chunk_ids[own_exp[chunk_ids] > agreed[chunk_ids]]
                    raise AllReduceError(
                        f"exponent agreement broken on worker {self.wid}: chunk(s) "
                        f"{bad[:4].tolist()} (slots {(bad[:4] % W).tolist()}) have own exponent "
                        f"bytes {own_exp[bad[:4]].tolist()} above the agreed "
                        f"{agreed[bad[:4]].tolist()} (call {self.calls})") from None
                batch["payload"] = vals
                if sent is not None:
                    sent[chunk_ids] = vals
            pkts = pack_batch(batch)
            now = time.monotonic()
            rto = self._rto()
            for j, s in enumerate(slots.tolist()):
                o_pkt[s] = pkts[j]
            o_chunk[slots], o_prime[slots], o_ver[slots] = chunk_ids, prime, vers
            o_first[slots], o_deadline[slots], o_rto[slots] = now, now + rto, rto
            o_retx[slots] = False
            o_parts[slots] = 0
            self.transport.send(pkts)
            if prime:
                stats.priming_packets += m

        first = np.arange(min(W, chunks))
        send(first, first, prime=True)
        last_abort_poll = time.monotonic()
        while remaining:
            now = time.monotonic()
            wait = min(0.05, max(0.0, float(o_deadline.min()) - now))
            bufs = self.transport.recv(wait)
            if bufs:
                remaining -= self._accept(bufs, stats, o_chunk, o_prime, o_ver, o_first,
                                          o_retx, o_deadline, o_parts, agreed, out, chunks,
                                          send)
            now = time.monotonic()
            late = np.flatnonzero(o_deadline <= now)
            if len(late):
                self._retransmit(late, now, stats, o_chunk, o_prime, o_ver, o_first, o_rto,
                                 o_retx, o_deadline, o_pkt)
            if self.abort_check and now - last_abort_poll > 0.2:
                last_abort_poll = now
                msg = self.abort_check()
                if msg:
                    raise Aborted(f"aborted: {msg}")

        c1 = self.transport.counters
        stats.packets_out, stats.bytes_out = c1.packets_out - c0[0], c1.bytes_out - c0[1]
        stats.packets_in, stats.bytes_in = c1.packets_in - c0[2], c1.bytes_in - c0[3]
        stats.seconds = time.monotonic() - t0
        self.total.add(stats)
        self.calls += 1
        values = out.ravel()[:n].reshape(shape)
        res = Result(values, stats)
        if record:
            res.exponents, res.sent = agreed, sent
            res.contribution = self._meaning(sent, agreed).ravel()[:n].reshape(shape)
        return res

    # ---- results -----------------------------------------------------------------------------

    def _parse(self, bufs: list[bytes], stats: CallStats) -> np.ndarray | None:
        good = [b for b in bufs if len(b) == self._res_size]
        stats.ignored += len(bufs) - len(good)
        if not good:
            return None
        try:
            return unpack_batch(good, MsgType.RESULT, self.encoding, self.result_flags)
        except WireError:
            keep = []
            for b in good:   # one bad packet must not cost the good ones
                try:
                    parse_packet(b)
                    keep.append(b)
                except WireError:
                    stats.ignored += 1
            if not keep:
                return None
            try:
                return unpack_batch(keep, MsgType.RESULT, self.encoding, self.result_flags)
            except WireError:
                stats.ignored += len(keep)
                return None

    def _accept(self, bufs, stats, o_chunk, o_prime, o_ver, o_first, o_retx, o_deadline,
                o_parts, agreed, out, chunks, send) -> int:
        batch = self._parse(bufs, stats)
        if batch is None:
            return 0
        h = batch["hdr"]
        W, k, pk = self.window, self.k, self.part_k
        slot = h["slot"].astype(np.int64)
        ok = (h["job"] == self.spec.job_id) & (h["worker"] == self.wid) & (slot < W)
        s = np.minimum(slot, W - 1)
        ch = o_chunk[s]
        prime = o_prime[s]
        ver = ((h["flags"] & FLAG_VER) | ((h["flags"] & 0xFC) >> 1)).astype(np.uint8)  # round
        # which part of the chunk's result this packet is, and the count it must then carry
        # (nina.wire.result_part_count): part p holds elements [p * pk, (p + 1) * pk)
        rel = h["offset"].astype(np.int64) - ch * k
        part = np.clip(rel // pk, 0, self.parts - 1)
        chunk_count = np.where(prime, 0, np.clip(self._n - ch * k, 0, k))
        part_count = np.clip(chunk_count - part * pk, 0, pk)
        ok &= (ch >= 0) & (ver == o_ver[s]) & (rel == part * pk) & (h["count"] == part_count)
        ok &= ((part == 0) | (part_count > 0)) & ((o_parts[s] >> part) & 1 == 0)
        idx = np.flatnonzero(ok)
        if len(idx):
            _, first_of = np.unique(s[idx] * self.parts + part[idx], return_index=True)
            idx = idx[first_of]   # one copy per (slot, part)
        stats.ignored += len(bufs) - len(idx)
        if not len(idx):
            return 0
        # data parts: decode with the chunk's agreed exponent into their place
        d = idx[~prime[idx]]
        if len(d):
            dc = ch[d]
            vals = self._decode(batch["payload"][d], agreed[dc])
            bad = ~np.isfinite(vals).all(axis=1)
            if bad.any():
                c = int(dc[np.argmax(bad)])
                raise AllReduceError(
                    f"the sum of chunk {c} (elements {c * k}..{(c + 1) * k - 1}) exceeds float32's "
                    f"range (|x| > 3.4e38): the workers' values are too large to sum in float32")
            cols = part[d][:, None] * pk + np.arange(pk)
            out[dc[:, None], cols] = vals
        np.bitwise_or.at(o_parts, s[idx], (1 << part[idx]).astype(np.uint8))
        # a slot is done once every part is in: a priming result is one part, a chunk of c
        # elements ceil(c / pk); every part carries the same exponent
        n_parts = np.where(prime[idx], 1, -(-chunk_count[idx] // pk))
        done = idx[o_parts[s[idx]] == (1 << n_parts) - 1]
        slots, first_of = np.unique(s[done], return_index=True)
        return self._complete(slots, h["exponent"][done[first_of]], o_chunk, o_prime,
                              o_first, o_retx, o_deadline, agreed, chunks, send)

    def _complete(self, slots, exps, o_chunk, o_prime, o_first, o_retx, o_deadline, agreed,
                  chunks, send) -> int:
        """Finish the rounds of `slots` (their results are in, carrying exponents `exps`):
        timing, next chunk out."""
        if not len(slots):
            return 0
        W = self.window
        now = time.monotonic()
        chs, prime = o_chunk[slots], o_prime[slots]
        fresh = ~o_retx[slots]  # Karn: time only rounds that were never retransmitted
        if fresh.any():
            rtt = float(np.max(now - o_first[slots[fresh]]))
            if self.srtt is None:
                self.srtt, self.rttvar = rtt, rtt / 2
            else:   # RFC 6298 smoothing
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
                self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.results_seen += len(slots)
        self.round[slots] = (self.round[slots] + 1) % ROUND_MOD
        o_chunk[slots] = -1
        o_deadline[slots] = np.inf
        # priming results: the agreed exponents of the first window; the chunk goes out next
        p = prime
        agreed[chs[p]] = exps[p]
        # data results: decode with the chunk's agreed exponent; the result carries chunk+W's
        d = ~prime
        done = 0
        if d.any():
            dc = chs[d]
            done = len(dc)
            ahead = dc + W
            has = ahead < chunks
            agreed[ahead[has]] = exps[d][has]
        nxt_slots = np.concatenate([slots[p], slots[d][(chs[d] + W) < chunks]])
        nxt_chunks = np.concatenate([chs[p], chs[d][(chs[d] + W) < chunks] + W])
        send(nxt_slots, nxt_chunks, prime=False)
        return done

    def _retransmit(self, late, now, stats, o_chunk, o_prime, o_ver, o_first, o_rto, o_retx,
                    o_deadline, o_pkt) -> None:
        stuck = late[now - o_first[late] > self.peer_timeout]
        if len(stuck):
            self._stall(int(stuck[0]), int(o_ver[stuck[0]]) & 1, int(o_chunk[stuck[0]]),
                        bool(o_prime[stuck[0]]), now - o_first[stuck[0]])
        o_rto[late] = np.minimum(o_rto[late] * 2, self.rto_max)
        o_deadline[late] = now + o_rto[late]
        o_retx[late] = True
        stats.retransmissions += len(late)
        self.transport.send([o_pkt[s] for s in late.tolist()])

    def _rto(self) -> float:
        if self.srtt is None:
            return self.rto0
        return min(self.rto_max, max(self.rto_min, self.srtt + 4 * self.rttvar))

    def _stall(self, slot: int, ver: int, chunk: int, prime: bool, waited: float):
        what = (f"slot {slot} (version {ver}, "
                + ("priming round" if prime else f"chunk offset {chunk * self.k}") + ")")
        job = f"job {self.spec.job_id}"
        if self.results_seen == 0:
            raise SwitchSilent(
                f"no answer from the switch at {self.transport.switch[0]}:"
                f"{self.transport.switch[1]} for {job} within {waited:.1f} s "
                f"(worker {self.wid}, {what}): the switch is not running, the job is not "
                f"installed, this worker's address is not admitted, or another worker of the "
                f"job never sent")
        missing = None
        if self.slot_reader is not None:
            try:
                bitmap = self.slot_reader(slot, ver)
            except Exception:   # diagnosis only: the stall itself is the error to report
                bitmap = None
            if bitmap is not None:
                missing = [w for w in range(self.spec.n_workers) if not (bitmap >> w) & 1]
        if missing is not None:
            who = (f"workers missing from its bitmap: {missing}" if missing else
                   "its bitmap is full, but the result never reached this worker")
        else:
            others = [w for w in range(self.spec.n_workers) if w != self.wid]
            who = (f"its result never came, so at least one of workers {others} did not "
                   f"contribute (no slot reader to name them)")
        raise SlotStalled(f"{job}: {what} did not complete within {waited:.1f} s on worker "
                          f"{self.wid}: {who}", slot, ver, chunk * self.k, missing)
