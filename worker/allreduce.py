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

The per-slot state is one worker.window.Window; the per-packet work (check a result, decode
it into place, encode the slot's next chunk into its packet row) is its compiled step, and
packets move a batch per system call (UdpTransport.send_rows / recv_rows). This module keeps
what happens per batch: timers, retransmissions, the RTT estimate, errors.
"""
from __future__ import annotations

import time
from functools import cached_property
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from nina.config import DEFAULT_WINDOW, JobSpec
from nina.jit import seed_state
from nina.wire import CAPACITY, ROUND_MOD, Encoding, MsgType, batch_dtype
from worker import switch_encoding as se
from worker import window as wn

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
    receives: int = 0         # receive calls that returned datagrams (packets_in / receives:
                              # the mean batch, which the per-call overheads are spread over)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the worker process's CPU time in the call (all its threads)

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
    meaning: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @cached_property
    def contribution(self) -> np.ndarray | None:
        """What this worker's sent elements mean, as floats (record=True calls). Decoded on
        first use: a tensor-sized int64 pass that only error feedback needs, and that a job
        recording for its exact check would otherwise pay after every call."""
        return None if self.meaning is None else self.meaning()


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
        self.rng = np.random.default_rng(seed)
        self._state = seed_state(self.rng)   # the compiled encoders' random source
        self.rounding = rounding
        self.codec = se.codec_for(self.encoding, spec.cm, spec.shift, rounding)
        self.rto0, self.rto_min, self.rto_max = rto, rto_min, rto_max
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.peer_timeout = peer_timeout
        self.slot_reader, self.abort_check = slot_reader, abort_check
        self.total = CallStats()
        self.calls = 0
        self.results_seen = 0   # results accepted over the client's life
        self.broken: str | None = None
        res_size = batch_dtype(MsgType.RESULT, self.encoding, self.codec.result_flags).itemsize
        self.win = wn.Window(self.window, self.codec, spec.job_id, wid, res_size)
        # the next round per slot starts where the job's installation says
        # (nina.install_rounds; 0 on a fresh switch)
        if first_rounds is not None:
            if len(first_rounds) < self.window:
                raise ValueError(f"{len(first_rounds)} first rounds for a window of "
                                 f"{self.window} slots")
            self.win.rnd[:] = np.asarray(first_rounds[:self.window]) % ROUND_MOD

    @property
    def round(self) -> np.ndarray:
        """Next round number per slot (mod 128; its low bit is the version), across calls."""
        return self.win.rnd

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
        t0, cpu0 = time.monotonic(), time.process_time()
        k, W, win, tr = self.k, self.window, self.win, self.transport
        stats = CallStats(elements=n, chunks=chunks)
        c0 = (tr.counters.packets_out, tr.counters.bytes_out, tr.counters.packets_in,
              tr.counters.bytes_in)
        if n == chunks * k:   # whole chunks: the input itself (the window only reads it)
            X = x.reshape(chunks, k)
        else:
            X = np.zeros((chunks, k), np.float32)
            X.ravel()[:n] = x
        XB = X.view(np.uint32)
        own_exp = se.exponent_bytes(X) if chunks else np.zeros(0, np.uint8)
        agreed = np.zeros(chunks, np.uint8)
        out = np.zeros((chunks, k), np.float32)
        nat8 = self.encoding == Encoding.NAT8
        sent8 = np.zeros((chunks, k) if record and nat8 else (0, 0), np.uint8)
        sent32 = np.zeros((chunks, k) if record and not nat8 else (0, 0), np.int32)
        while tr.recv_rows(0.0):   # stale results of an earlier call are never outstanding now
            pass
        win.reset()
        win.cfg[wn.C_N], win.cfg[wn.C_CHUNKS], win.cfg[wn.C_RECORD] = n, chunks, record
        state = win.arrays()
        calls = (X, XB, own_exp, agreed)

        now = time.monotonic()
        first = min(W, chunks)
        rto = self._rto()
        for s in range(first):
            wn.start_round(s, s, 1, now, rto, *state, *calls, sent8, sent32, self._state)
        tr.send_rows(win.pkts, wn.UPDATE_LEN, np.arange(first), first)
        stats.priming_packets += first
        remaining = chunks
        last_abort_poll = now
        rx = tr.rx
        timing = win.timing
        due = float(win.deadline.min())   # the earliest timer (from here on, accept's)
        while remaining:
            now = time.monotonic()
            m = tr.recv_rows(min(0.05, max(0.0, due - now)))
            if m:
                stats.receives += 1
                now = time.monotonic()
                wn.accept(rx.rows, rx.lengths, m, now, self._rto(), *state, *calls, out,
                          sent8, sent32, self._state, win.send_list, win.out, timing)
                o = win.out
                if o[wn.O_ERR]:
                    self._raise(int(o[wn.O_ERR]), int(o[wn.O_ERR_CHUNK]), own_exp, agreed)
                stats.ignored += int(o[wn.O_IGNORED])
                remaining -= int(o[wn.O_DONE])
                self.results_seen += int(o[wn.O_SEEN])
                if timing[wn.T_RTT] >= 0:
                    self._sample(float(timing[wn.T_RTT]))
                due = float(timing[wn.T_DUE])
                tr.send_rows(win.pkts, wn.UPDATE_LEN, win.send_list, int(o[wn.O_SEND]))
            now = time.monotonic()
            if due <= now:
                self._retransmit(np.flatnonzero(win.deadline <= now), now, stats)
                due = float(win.deadline.min())
            if self.abort_check and now - last_abort_poll > 0.2:
                last_abort_poll = now
                msg = self.abort_check()
                if msg:
                    raise Aborted(f"aborted: {msg}")

        c1 = tr.counters
        stats.packets_out, stats.bytes_out = c1.packets_out - c0[0], c1.bytes_out - c0[1]
        stats.packets_in, stats.bytes_in = c1.packets_in - c0[2], c1.bytes_in - c0[3]
        stats.seconds = time.monotonic() - t0
        stats.cpu_seconds = time.process_time() - cpu0
        self.total.add(stats)
        self.calls += 1
        values = out.ravel()[:n].reshape(shape)
        res = Result(values, stats)
        if record:
            sent = sent8 if nat8 else sent32
            res.exponents, res.sent = agreed, sent
            res.meaning = lambda: self.codec.meaning(sent, agreed).ravel()[:n].reshape(shape)
        return res

    def _raise(self, err: int, c: int, own_exp, agreed) -> None:
        k = self.k
        if err == wn.ERR_NONFINITE:
            raise AllReduceError(
                f"the sum of chunk {c} (elements {c * k}..{(c + 1) * k - 1}) exceeds float32's "
                f"range (|x| > 3.4e38): the workers' values are too large to sum in float32")
        raise AllReduceError(
            f"exponent agreement broken on worker {self.wid}: chunk(s) [{c}] (slots "
            f"[{c % self.window}]) have own exponent bytes [{int(own_exp[c])}] above the "
            f"agreed [{int(agreed[c])}] (call {self.calls})")

    def _sample(self, rtt: float) -> None:
        """One RTT sample (Karn: only rounds never retransmitted), RFC 6298 smoothing."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _retransmit(self, late, now, stats) -> None:
        win = self.win
        stuck = late[now - win.first[late] > self.peer_timeout]
        if len(stuck):
            s = int(stuck[0])
            self._stall(s, int(win.ver[s]) & 1, int(win.chunk[s]), bool(win.prime[s]),
                        now - win.first[s])
        win.rto[late] = np.minimum(win.rto[late] * 2, self.rto_max)
        win.deadline[late] = now + win.rto[late]
        win.retx[late] = 1
        stats.retransmissions += len(late)
        self.transport.send_rows(win.pkts, wn.UPDATE_LEN, late, len(late))

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
