"""Fuzzing a running switch during a live job: 100,000 malformed or mutated packets.

The switch is a real `nina switch --mode local` process; a real 4-worker NAT8 job runs through
it (worker processes, the job runner) while this test sends it 100,000 bad packets from
sources that are not admitted workers of any job (among them a registered worker of another
job). The packets are generated vectorised (truncations, over-long packets, wrong versions and
types, unknown or mismatched encodings, huge element counts, unknown job ids, the live job's and
another job's ids, random header fields, bit flips, random bytes) and each one's expected
decision is computed by an independent oracle of the checks of docs/protocol.md.

Exactness of the bookkeeping: sending is paced on the switch socket's receive queue (from
/proc/net/udp) so the kernel drops nothing (its drop counter is checked); once everything is
sent, the test waits for the queue to drain and stops the switch, which prints the datagrams
it handled and its decisions counter. Then: counters sum to the datagrams handled, which equal
the datagrams sent (fuzz + workers); every drop reason equals the oracle's count; the
contributions equal exactly what the live job needs; the live job's result is exact.
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from faultnet import SwitchProcess, udp_socket_stats
from nina.config import JobSpec, WorkerAddr
from nina.decisions import Decision
from nina.wire import HEADER_DTYPE, Encoding
from jobs.check import check_allreduce
from jobs.runner import run_allreduce

N_FUZZ = 100_000
WIDTH = 300            # bytes per generated packet (272 is a well-formed update)
UPDATE_LEN = 272
LIVE_JOB, OTHER_JOB = 1, 2
N, SIZE, CALLS = 4, 20_000, 160   # enough calls that the job outlasts the fuzzing's start
CAP = np.array([64, 256])   # capacity per encoding INT32, NAT8


def make_fuzz(rng: np.random.Generator, n: int, jobs: dict[int, tuple[int, int]]):
    """(n, WIDTH) bytes and lengths: valid-looking updates, each mutated one way."""
    pk = rng.integers(0, 256, (n, WIDTH), dtype=np.uint8)
    h = pk[:, :16].view(HEADER_DTYPE).reshape(n)   # a view: writes go into pk
    job_ids = np.array(sorted(jobs))
    h["version"], h["msg_type"] = 1, 1
    h["job"] = rng.choice(job_ids, n)
    h["encoding"] = [jobs[j][0] for j in h["job"]]
    h["flags"] = rng.integers(0, 4, n)
    h["worker"] = rng.integers(0, 8, n)
    h["slot"] = rng.integers(0, 80, n)
    h["count"] = rng.integers(0, 257, n) % (CAP[h["encoding"]] + 1)
    length = np.full(n, UPDATE_LEN)
    kind = rng.integers(0, 11, n)

    def rows(k):
        return np.flatnonzero(kind == k)
    r = rows(0); length[r] = rng.integers(0, UPDATE_LEN, len(r))           # truncated
    r = rows(1); length[r] = rng.integers(UPDATE_LEN + 1, WIDTH + 1, len(r))  # over-long
    r = rows(2); h["version"][r] = rng.integers(2, 256, len(r)) * rng.integers(0, 2, len(r))
    r = rows(3); h["msg_type"][r] = rng.choice([0, 2, 3, 200], len(r))      # RESULT included
    r = rows(4); h["encoding"][r] = np.where(rng.random(len(r)) < .5,       # unknown / other's
                                             rng.integers(2, 256, len(r)), 1 - h["encoding"][r])
    r = rows(5); h["count"][r] = rng.integers(257, 65536, len(r))          # huge counts
    r = rows(6); h["job"][r] = rng.integers(3, 65536, len(r))              # unknown jobs
    r = rows(7); h["job"][r] = rng.choice(job_ids, len(r))                 # live/other ids
    h["worker"][r] = np.where(rng.random(len(r)) < .5, rng.integers(0, 4, len(r)),
                              rng.integers(0, 256, len(r)))
    r = rows(8); pk[r, :16] = rng.integers(0, 256, (len(r), 16), dtype=np.uint8)  # random hdr
    r = rows(9)                                                              # bit flips
    for _ in range(3):
        pos = rng.integers(0, 16 * 8, len(r))
        pk[r, pos // 8] ^= (1 << (pos % 8)).astype(np.uint8)
    r = rows(10); length[r] = rng.integers(0, WIDTH + 1, len(r))            # random bytes
    pk[r, :16] = rng.integers(0, 256, (len(r), 16), dtype=np.uint8)
    return pk, length, kind


def oracle(pk: np.ndarray, length: np.ndarray, jobs: dict[int, tuple[int, int]]) -> np.ndarray:
    """Expected Decision per packet from a source admitted for no (job, worker)."""
    n = len(pk)
    h = pk[:, :16].copy().view(HEADER_DTYPE).reshape(n)
    enc = h["encoding"].astype(np.int64)
    known = np.isin(h["job"], list(jobs))
    job_enc = np.array([jobs.get(int(j), (-1, 0))[0] for j in h["job"]])
    job_n = np.array([jobs.get(int(j), (0, 0))[1] for j in h["job"]])
    cap = np.where(enc == 0, 64, 256)
    conds = [   # in the switch's order; the first that holds decides
        (length != UPDATE_LEN, Decision.DROP_MALFORMED),
        (h["version"] != 1, Decision.DROP_BAD_VERSION),
        (h["msg_type"] != 1, Decision.DROP_BAD_TYPE),
        ((enc > 1) | (known & (enc != job_enc)), Decision.DROP_BAD_ENCODING),
        (h["count"] > cap, Decision.DROP_BAD_COUNT),
        (~known, Decision.DROP_UNKNOWN_JOB),
        (h["worker"] >= np.minimum(job_n, 32), Decision.DROP_BAD_WORKER),
    ]
    out = np.full(n, int(Decision.DROP_UNREGISTERED))
    for cond, d in reversed(conds):
        out[cond] = int(d)
    return out


def test_oracle_agrees_with_the_wire_module_on_what_is_well_formed():
    from nina.wire import WireError, parse_packet
    rng = np.random.default_rng(1)
    jobs = {LIVE_JOB: (1, N), OTHER_JOB: (0, 2)}
    pk, length, _ = make_fuzz(rng, 3000, jobs)
    dec = oracle(pk, length, jobs)
    accepted = 0
    for i in range(len(pk)):
        try:
            hdr, _ = parse_packet(pk[i, :length[i]].tobytes())
            ok = hdr.msg_type == 1
        except WireError:
            ok = False
        # an UPDATE the wire module accepts is never dropped for a format reason
        if ok:
            accepted += 1
            assert dec[i] in (Decision.DROP_BAD_ENCODING, Decision.DROP_UNKNOWN_JOB,
                              Decision.DROP_BAD_WORKER, Decision.DROP_UNREGISTERED), i
        # and what the oracle calls a format error the wire module refuses too
        if dec[i] in (Decision.DROP_MALFORMED, Decision.DROP_BAD_VERSION,
                      Decision.DROP_BAD_COUNT):
            assert not ok, i
    assert accepted > 300


def _wait_drained(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        st = udp_socket_stats(port)
        quiet = quiet + 1 if st is not None and st[0] == 0 else 0
        if quiet >= 5:
            return
        time.sleep(0.05)
    raise AssertionError("the switch did not drain its socket")


def test_100k_bad_packets_during_a_live_job(tmp_path):
    rng = np.random.default_rng(2024)
    sw = SwitchProcess(str(tmp_path))
    # another installed job whose worker 0 is one of the fuzzing sockets below
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    spare = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spare.bind(("127.0.0.1", 0))
    sw.jobs[OTHER_JOB] = JobSpec(
        job_id=OTHER_JOB, n_workers=2, encoding=Encoding.INT32, slot_base=1000,
        workers=(WorkerAddr(0, *other.getsockname()), WorkerAddr(1, *spare.getsockname())))
    jobs = {LIVE_JOB: (int(Encoding.NAT8), N), OTHER_JOB: (int(Encoding.INT32), 2)}
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    alien = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    alien.bind(("127.0.0.2", 0))                   # another host address
    sources = [stranger, alien, other]

    pk, length, kind = make_fuzz(rng, N_FUZZ, jobs)
    src = rng.integers(0, len(sources), N_FUZZ)
    # the other job's registered worker never sends for its own job (that would be admitted)
    h = pk[:, :16].view(HEADER_DTYPE).reshape(N_FUZZ)
    h["job"][(src == 2) & (h["job"] == OTHER_JOB)] = LIVE_JOB
    expect = oracle(pk, length, jobs)
    raw = pk.tobytes()
    packets = [raw[i * WIDTH:i * WIDTH + int(length[i])] for i in range(N_FUZZ)]

    result: dict = {}

    def job():
        try:
            result["out"] = run_allreduce(N, sw, size=SIZE, encoding=Encoding.NAT8,
                                          calls=CALLS, job_id=LIVE_JOB,
                                          run_dir=str(tmp_path / "job"), timeout=20.0,
                                          log=lambda *a: None)
        except Exception as e:    # reported below
            result["error"] = e
        result["end"] = time.monotonic()

    t = threading.Thread(target=job)
    t.start()
    try:
        assert sw.installed.wait(120)
        assert sw.wait_busy(ticks=2, timeout=30), "the live job never loaded the switch"
        t0 = time.monotonic()
        sent = 0
        for i in range(0, N_FUZZ, 500):            # paced on the switch's receive queue
            while (udp_socket_stats(sw.port) or (0, 0))[0] > 1 << 20:
                time.sleep(0.002)
            for j in range(i, min(i + 500, N_FUZZ)):
                sources[src[j]].sendto(packets[j], sw.data_addr)
            sent = min(i + 500, N_FUZZ)
        t_sent = time.monotonic()
        print(f"fuzz: {sent} packets sent in {t_sent - t0:.1f} s")
        t.join(300)
        assert not t.is_alive()
        _wait_drained(sw.port)
        rxq, kernel_drops = udp_socket_stats(sw.port)
        assert sw.alive(), "the switch died"
    finally:
        handled, counters = sw.stop() if sw.alive() else (-1, {})
        for s in sources + [spare]:
            s.close()
    assert "error" not in result, result.get("error")
    out = result["out"]
    print(f"live job overlapped the fuzzing for {min(result['end'], t_sent) - t0:.1f} s; "
          f"switch handled {handled}; counters {counters}")
    assert result["end"] > t0                       # the job was live while fuzzing
    assert kernel_drops == 0                        # nothing lost before the switch read it
    worker_pkts = sum(st["packets_out"] for cs in out.per_worker.values() for st in cs)
    assert handled == N_FUZZ + worker_pkts          # every datagram was read ...
    assert sum(counters.values()) == handled        # ... and counted exactly once
    want = np.bincount(expect, minlength=len(Decision))
    for d in Decision:
        if d.name.startswith("DROP_") and d != Decision.DROP_DUPLICATE:
            assert counters.get(d.name, 0) == want[d], (d.name, counters.get(d.name), want[d])
    assert (want > 1000).sum() >= 8                 # many reasons, each well exercised
    # nothing bad was added anywhere: contributions are exactly the live job's
    k, chunks = 256, -(-SIZE // 256)
    contrib = sum(counters.get(x, 0) for x in ("FIRST", "AGGREGATE", "COMPLETE"))
    assert contrib == N * CALLS * (chunks + min(32, chunks))
    assert check_allreduce(str(tmp_path / "job"), N, CALLS, out.config["shift"],
                           Encoding.NAT8, False, seed=0, size=SIZE) == []
