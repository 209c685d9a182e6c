"""The embedded NINA data plane: switch state, tables and control plane around the algorithm.

State mirrors the P4 program object for object (names from nina.p4spec): the per-(slot, version)
registers, the `decisions` counter, the exact-match tables (switch.tables.TableStore) and the
multicast groups. The per-packet algorithm of docs/protocol.md is switch.kernel.process_batch,
compiled once and run over these very numpy arrays, a batch of packets per call; the tables
reach it as a compiled image (`_TableImage`) rebuilt whenever an entry changes.

`process_batch()` is what the I/O loops call (packets already in their receive rows; results
go to a send callback in batches); `process()` runs one PacketIn and returns PacketOuts (tests,
in-process use). Neither raises on packet bytes: anything malformed is counted under its
Decision and dropped. Trace records land in a preallocated array, handed to the trace sink in
bulk after each batch.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from nina import p4spec
from nina.config import JobSpec, slots_overlap
from nina.decisions import N_DECISIONS, TRACE_DTYPE, Decision
from nina.install_rounds import install_cells, install_rounds
from nina.jit import seed_state
from nina.wire import (ELEMENTS_NAT8, FLAG_CM, FRAME_OVERHEAD, MAX_WORKERS, RID_PART_SHIFT,
                       UDP_PORT, Encoding, result_parts)
from switch import kernel as K
from switch.kernel import OUT_ROW, UPDATE_LEN
from switch.tables import P4Error, TableStore

ETH_IP_UDP_LEN = FRAME_OVERHEAD   # frame bytes around a UDP payload (local mode has no frame)
BATCH = 256                    # packets per I/O batch of the raw-interface loop (io_raw)
KERNEL_BATCH = 1024            # packets per kernel call at most: a GRO receive brings more
                               # than BATCH, and results gathered over more updates leave in
                               # fewer, longer segmented sends (one per worker and call)
OUT_ROWS = 4096                # result packets the output buffer holds (>= 64 replicas)
D_MALFORMED, D_FORWARDED = int(Decision.DROP_MALFORMED), int(Decision.FORWARDED)
_NAT8 = int(Encoding.NAT8)
_RID_WORKER = (1 << RID_PART_SHIFT) - 1   # replica id = part << RID_PART_SHIFT | worker

_JOB_T, _WORKER_T, _ADDR_T, _L2_T = (p4spec.JOB_TABLE.name, p4spec.WORKER_TABLE.name,
                                     p4spec.WORKER_ADDR.name, p4spec.L2_FORWARD.name)


class PacketIn(NamedTuple):
    """A packet arriving at the switch: the UDP payload and the addresses it came with."""
    ingress_port: int
    src_ip: int
    src_udp_port: int
    payload: bytes
    src_mac: int = 0
    dst_mac: int = 0
    dst_ip: int = 0
    dst_udp_port: int = UDP_PORT
    frame_len: int = 0   # bytes on the wire; 0 = len(payload) + Ethernet/IPv4/UDP headers


class PacketOut(NamedTuple):
    """A packet the switch sends: UDP payload plus the rewritten addresses."""
    egress_port: int
    dst_mac: int
    dst_ip: int
    dst_udp_port: int
    src_mac: int
    src_ip: int
    src_udp_port: int
    payload: bytes


class _Rows:
    """A batch of receive rows with the per-packet metadata process_batch takes."""

    def __init__(self, n: int, width: int):
        self.rx = np.zeros((n, width), np.uint8)
        self.rx_off = np.zeros(n, np.int64)
        self.rx_len = np.zeros(n, np.int64)
        self.rx_port = np.zeros(n, np.int64)
        self.rx_ip = np.zeros(n, np.int64)
        self.rx_udp = np.zeros(n, np.int64)
        self.frame_len = np.zeros(n, np.int64)


class _TableImage(NamedTuple):
    """The tables as the kernel reads them (see switch.kernel's column names)."""
    jobmap: np.ndarray     # job id -> row of jobs, -1 if no entry
    jobs: np.ndarray       # (jobs, N_JOB_COLS) int64
    admit_ptr: np.ndarray  # row J_ADM + w .. + 1 of it: admit rows of (job, worker w)
    admit: np.ndarray      # (entries, 3) int64: ingress port, source IP, source UDP port
    replicas: np.ndarray   # (replicas, N_REP_COLS) int64, grouped per job
    max_replicas: int


def build_image(tables: TableStore, mcast_groups: dict, pool_slots: int) -> _TableImage:
    """Compile job_table, worker_table, worker_addr and the multicast groups for the kernel."""
    job_entries = sorted(tables.entries(_JOB_T).copy().items())
    addrs = tables.entries(_ADDR_T).copy()
    admits: dict[tuple[int, int], list] = {}
    for (job, wid, port, ip, udp) in list(tables.entries(_WORKER_T).copy()):
        admits.setdefault((job, wid), []).append((port, ip, udp))
    jobmap = np.full(1 << 16, -1, np.int32)
    jobs = np.zeros((len(job_entries), K.N_JOB_COLS), np.int64)
    admit_ptr = [0]
    admit_rows: list = []
    reps: list = []
    for jx, ((job,), params) in enumerate(job_entries):
        (n, slot_base, slot_count, shift, encoding, cm, mcast_grp, loss_q16) = params
        cm = bool(cm) and encoding == _NAT8   # C_M is defined on NAT8 jobs only
        r = jobs[jx]
        r[K.J_ID], r[K.J_N], r[K.J_WLIMIT] = job, n, min(n, MAX_WORKERS)
        # Slots past the end of the pool do not exist: they drop as BAD_SLOT.
        r[K.J_SLOT_BASE] = slot_base
        r[K.J_SLOT_COUNT] = max(0, min(slot_count, pool_slots - slot_base))
        r[K.J_SHIFT], r[K.J_ENC], r[K.J_CM] = shift, encoding, cm
        r[K.J_PARTS] = result_parts(encoding, FLAG_CM if cm else 0)
        r[K.J_LOSS] = loss_q16
        r[K.J_ADM] = len(admit_ptr) - 1
        for w in range(MAX_WORKERS):
            admit_rows += admits.get((job, w), [])
            admit_ptr.append(len(admit_rows))
        r[K.J_REP_LO] = len(reps)
        for port, rid in mcast_groups.get(mcast_grp, ()) if mcast_grp else ():
            a = addrs.get((job, rid & _RID_WORKER))
            if a is not None:   # a replica with no egress rewrite entry is dropped
                reps.append((port, rid & _RID_WORKER, rid >> RID_PART_SHIFT) + tuple(a))
        r[K.J_REP_HI] = len(reps)
        jobmap[job] = jx
    per_job = jobs[:, K.J_REP_HI] - jobs[:, K.J_REP_LO]
    return _TableImage(jobmap, jobs, np.array(admit_ptr, np.int64),
                       np.array(admit_rows, np.int64).reshape(-1, 3),
                       np.array(reps, np.int64).reshape(-1, K.N_REP_COLS),
                       int(per_job.max()) if len(per_job) else 0)


# A send callback: (out rows, their lengths, their replica rows, count, the table image).
SendFn = Callable[[np.ndarray, np.ndarray, np.ndarray, int, _TableImage], None]


class Pipeline:
    """Registers, counters, tables and multicast groups of one switch, and the algorithm."""

    def __init__(self, pool_slots: int = p4spec.POOL_SLOTS, seed: int | None = None,
                 trace=None):
        if not 1 <= pool_slots <= 1 << 16:
            raise ValueError(f"pool_slots must be in 1..65536, got {pool_slots}")
        self.pool_slots = pool_slots
        self.register_size = size = 2 * pool_slots
        self.rng = np.random.default_rng(seed)
        # the data plane's random source (C_M rounding, the loss simulator): xorshift64*
        self._rng_state = seed_state(self.rng)
        self.trace = trace

        self._bitmap = np.zeros(size, np.uint32)
        self._count = np.zeros(size, np.uint8)
        self._max_exp = np.zeros(size, np.uint8)
        self._offset = np.zeros(size, np.uint32)
        self._round = np.zeros(size, np.uint8)
        self.acc = np.zeros((size, p4spec.N_ACCUMULATORS), np.int32)
        self.registers: dict[str, np.ndarray] = {
            p4spec.REG_BITMAP: self._bitmap,
            p4spec.REG_COUNT: self._count,
            p4spec.REG_MAX_EXP: self._max_exp,
            p4spec.REG_OFFSET: self._offset,
            p4spec.REG_ROUND: self._round,
            **{p4spec.reg_acc(i): self.acc[:, i] for i in range(p4spec.N_ACCUMULATORS)},
        }
        assert set(self.registers) == set(p4spec.REGISTERS)

        self.counters_packets = self._ctr_pkts = np.zeros(N_DECISIONS, np.uint64)
        self.counters_bytes = self._ctr_bytes = np.zeros(N_DECISIONS, np.uint64)

        self.tables = TableStore(p4spec.TABLES)
        self.tables.add_listener(self._on_table_change)
        self._l2 = self.tables.entries(_L2_T)
        self.mcast_groups: dict[int, list[tuple[int, int]]] = {}
        self._image = build_image(self.tables, self.mcast_groups, pool_slots)
        self._dirty = False

        # kernel output and scratch buffers, allocated once
        self.out = np.zeros((OUT_ROWS, OUT_ROW), np.uint8)
        self.out_len = np.zeros(OUT_ROWS, np.int64)
        self.out_rep = np.zeros(OUT_ROWS, np.int64)
        self._body = np.zeros(4 * ELEMENTS_NAT8, np.uint8)
        self._trace_buf = np.zeros(KERNEL_BATCH, TRACE_DTYPE)
        self._one = _Rows(1, UPDATE_LEN)   # process()'s batch of one

    # ------------------------------------------------------------------ data plane

    @property
    def image(self) -> _TableImage:
        """The current compiled table image (rebuilt here after a table change)."""
        if self._dirty:
            self._dirty = False   # first, so a write racing with the rebuild marks it again
            self._image = build_image(self.tables, self.mcast_groups, self.pool_slots)
            if self._image.max_replicas > len(self.out):   # one packet's copies must fit
                rows = self._image.max_replicas
                self.out = np.zeros((rows, OUT_ROW), np.uint8)
                self.out_len = np.zeros(rows, np.int64)
                self.out_rep = np.zeros(rows, np.int64)
        return self._image

    def process_batch(self, rx: np.ndarray, rx_off: np.ndarray, rx_len: np.ndarray,
                      rx_port: np.ndarray, rx_ip: np.ndarray, rx_udp: np.ndarray,
                      frame_len: np.ndarray, n: int, send: SendFn) -> None:
        """Run n received packets (row i of rx holds packet i's UDP payload at rx_off[i], of
        rx_len[i] bytes, from rx_port/rx_ip/rx_udp, frame_len[i] bytes on the wire) through the
        pipeline; `send` gets the results in batches (at least once per call if any)."""
        start = 0
        while start < n:
            img = self.image
            m = min(n - start, KERNEL_BATCH)
            end = start + m
            sink = self.trace
            tracing = sink is not None
            # the records go straight into the sink's buffer (a copy per batch cost more
            # than the records); a sink without room for a whole batch gets them copied
            tr = sink.reserve(m) if tracing else None
            direct = tr is not None
            if not direct:
                tr = self._trace_buf
            done, n_out = K.process_batch(
                rx[start:end], rx_off[start:end], rx_len[start:end], rx_port[start:end],
                rx_ip[start:end], rx_udp[start:end], frame_len[start:end], m,
                img.jobmap, img.jobs, img.admit_ptr, img.admit, img.replicas,
                self._bitmap, self._count, self._max_exp, self._offset, self._round, self.acc,
                self._ctr_pkts, self._ctr_bytes, self._rng_state,
                self.out, self.out_len, self.out_rep, self._body, tr, tracing,
                time.time_ns())
            if tracing and done:
                if direct:
                    sink.commit(done)
                else:
                    sink.write(tr[:done])
            if n_out:
                send(self.out, self.out_len, self.out_rep, n_out, img)
            start += done

    def process(self, pkt: PacketIn) -> list[PacketOut]:
        """Run one packet through the pipeline; returns the packets to send (maybe none)."""
        one = self._one
        payload = memoryview(pkt.payload)
        n = len(payload)
        m = min(n, UPDATE_LEN)   # the rest only matters through its length
        one.rx[0, :m] = np.frombuffer(payload[:m], np.uint8)
        one.rx_len[0], one.rx_port[0] = n, pkt.ingress_port
        one.rx_ip[0], one.rx_udp[0] = pkt.src_ip, pkt.src_udp_port
        one.frame_len[0] = pkt.frame_len or n + ETH_IP_UDP_LEN
        outs: list[PacketOut] = []

        def collect(out, out_len, out_rep, k, img):
            for i in range(k):
                r = img.replicas[out_rep[i]]
                outs.append(PacketOut(int(r[K.R_PORT]), int(r[K.R_DMAC]), int(r[K.R_DIP]),
                                      int(r[K.R_DPORT]), int(r[K.R_SMAC]), int(r[K.R_SIP]),
                                      UDP_PORT, out[i, :out_len[i]].tobytes()))

        self.process_batch(one.rx, one.rx_off, one.rx_len, one.rx_port, one.rx_ip, one.rx_udp,
                           one.frame_len, 1, collect)
        return outs

    def _emit(self, ingress_port: int, decision: int) -> None:
        self._ctr_pkts[decision] += 1
        if self.trace is not None:
            self.trace.emit(time.time_ns(), ingress_port, 0, 0, 0, decision, 0, 0, 0, 0, 0, 0)

    def drop_malformed(self, ingress_port: int, frame_len: int) -> None:
        """Count a frame addressed to the NINA port whose IPv4/UDP framing is broken."""
        self._ctr_bytes[D_MALFORMED] += frame_len
        self._emit(ingress_port, D_MALFORMED)

    def forward(self, ingress_port: int, dst_mac: int, frame_len: int) -> int | None:
        """Non-NINA traffic: egress port from l2_forward by destination MAC (None: no entry)."""
        self._ctr_bytes[D_FORWARDED] += frame_len
        self._emit(ingress_port, D_FORWARDED)
        entry = self._l2.get((dst_mac,))
        return None if entry is None else entry[0]

    def _on_table_change(self, table: str, op: str, key: tuple, params) -> None:
        if table in (_JOB_T, _ADDR_T, _WORKER_T):
            self._dirty = True

    # ------------------------------------------------------------------ control plane

    def write_mcast_group(self, gid: int, replicas) -> None:
        """Create or replace multicast group gid: [(egress port, instance = worker id)]."""
        if not isinstance(gid, int) or not 1 <= gid < 1 << 16:
            raise P4Error("INVALID_ARGUMENT", f"multicast group id {gid!r} must be in 1..65535")
        reps = []
        for r in replicas:
            port, rid = r
            if not (isinstance(port, int) and 0 <= port < 1 << 9):
                raise P4Error("INVALID_ARGUMENT", f"replica egress port {port!r} "
                                                  f"does not fit 9 bits")
            if not (isinstance(rid, int) and 0 <= rid < 1 << 16):
                raise P4Error("INVALID_ARGUMENT", f"replica instance {rid!r} "
                                                  f"does not fit 16 bits")
            reps.append((port, rid))
        if len(set(reps)) != len(reps):
            raise P4Error("INVALID_ARGUMENT", f"multicast group {gid}: duplicate replica")
        self.mcast_groups[gid] = reps
        self._dirty = True

    def delete_mcast_group(self, gid: int) -> None:
        if gid not in self.mcast_groups:
            raise P4Error("NOT_FOUND", f"multicast group {gid} does not exist")
        del self.mcast_groups[gid]
        self._dirty = True

    def _register(self, name: str, index: int) -> np.ndarray:
        arr = self.registers.get(name)
        if arr is None:
            raise P4Error("NOT_FOUND", f"unknown register '{name}'")
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.register_size:
            raise P4Error("OUT_OF_RANGE", f"register '{name}' index {index!r} outside "
                                          f"0..{self.register_size - 1}")
        return arr

    def read_register(self, name: str, index: int) -> int:
        """One register cell; accumulators read as signed int32, the others unsigned."""
        return int(self._register(name, index)[index])

    def write_register(self, name: str, index: int, value: int) -> None:
        """Store value (signed or unsigned, must fit the register's width) modulo 2^width."""
        arr = self._register(name, index)
        bits = p4spec.REGISTERS[name]
        if not isinstance(value, (int, np.integer)) or \
                not -(1 << (bits - 1)) <= value < (1 << bits):
            raise P4Error("INVALID_ARGUMENT", f"register '{name}' value {value!r} "
                                              f"does not fit {bits} bits")
        value = int(value) & ((1 << bits) - 1)
        if arr.dtype.kind == "i" and value >= 1 << (bits - 1):
            value -= 1 << bits
        arr[index] = value

    def reset_registers(self, name: str | None = None) -> None:
        """Zero one register array, or all of them."""
        if name is None:
            for arr in (self.registers[p4spec.REG_BITMAP], self.registers[p4spec.REG_COUNT],
                        self.registers[p4spec.REG_MAX_EXP], self.registers[p4spec.REG_OFFSET],
                        self.registers[p4spec.REG_ROUND],
                        self.acc):
                arr[...] = 0
        else:
            self._register(name, 0)[...] = 0

    def reset_job_state(self, slot_base: int, slot_count: int) -> None:
        """Zero every register of slots [slot_base, slot_base + slot_count), both versions."""
        lo = 2 * max(0, slot_base)
        hi = 2 * min(self.pool_slots, slot_base + slot_count)
        if hi <= lo:
            return
        for name in (p4spec.REG_BITMAP, p4spec.REG_COUNT, p4spec.REG_MAX_EXP,
                     p4spec.REG_OFFSET, p4spec.REG_ROUND):
            self.registers[name][lo:hi] = 0
        self.acc[lo:hi] = 0

    def read_counter(self, name: str, index: int) -> tuple[int, int]:
        """(packets, bytes) of one counter cell."""
        self._counter(name, index)
        return int(self._ctr_pkts[index]), int(self._ctr_bytes[index])

    def write_counter(self, name: str, index: int, packets: int, nbytes: int) -> None:
        self._counter(name, index)
        self._ctr_pkts[index], self._ctr_bytes[index] = packets, nbytes

    def reset_counters(self) -> None:
        self.counters_packets[:] = 0
        self.counters_bytes[:] = 0

    def _counter(self, name: str, index: int) -> None:
        if name not in p4spec.COUNTERS:
            raise P4Error("NOT_FOUND", f"unknown counter '{name}'")
        if not isinstance(index, (int, np.integer)) or not 0 <= index < p4spec.COUNTERS[name]:
            raise P4Error("OUT_OF_RANGE", f"counter '{name}' index {index!r} outside "
                                          f"0..{p4spec.COUNTERS[name] - 1}")

    # ------------------------------------------------------------------ in-process helpers

    def install_job(self, spec: JobSpec) -> list[int]:
        """What the controller does for a job: tables, multicast group, slot state; returns
        the first round of each of the job's slots (nina.install_rounds). Everything is
        checked before anything is written, so a refused job leaves no trace."""
        try:
            spec.validate()
        except ValueError as e:
            raise P4Error("INVALID_ARGUMENT", f"job {spec.job_id}: {e}") from None
        if spec.slot_base + spec.slot_count > self.pool_slots:
            raise P4Error("INVALID_ARGUMENT",
                          f"job {spec.job_id}: slots [{spec.slot_base}, "
                          f"{spec.slot_base + spec.slot_count}) outside this switch's pool of "
                          f"{self.pool_slots}")
        if len(spec.workers) != spec.n_workers:
            raise P4Error("INVALID_ARGUMENT", f"job {spec.job_id}: {spec.n_workers} workers "
                                              f"but {len(spec.workers)} worker addresses")
        why = slots_overlap(spec, self.installed_jobs())
        if why is not None:
            raise P4Error("ALREADY_EXISTS", why)
        if spec.mcast_grp in self.mcast_groups:
            raise P4Error("ALREADY_EXISTS", f"job {spec.job_id}: multicast group "
                                            f"{spec.mcast_grp} is already in use")
        t = self.tables
        *admission, (job_t, job_key, job_params) = spec.table_entries()
        done: list[tuple[str, tuple]] = []
        self.write_mcast_group(spec.mcast_grp, spec.replicas())
        try:
            for table, key, params in admission:
                t.insert(table.name, key, params or None)
                done.append((table.name, key))
            firsts = self._install_slot_state(spec.slot_base, spec.slot_count)
            t.insert(job_t.name, job_key, job_params)   # last: the entry that makes the job live
        except BaseException:
            for table, key in reversed(done):   # roll back: a refused job leaves no trace
                t.delete(table, key)
            self.delete_mcast_group(spec.mcast_grp)
            raise
        return firsts

    def installed_jobs(self) -> list[JobSpec]:
        """The installed jobs' ids and slot ranges (as JobSpecs without workers)."""
        out = []
        for (job,), params in self.tables.entries(_JOB_T).copy().items():
            n, base, count = params[0], params[1], params[2]
            out.append(JobSpec(job, max(1, n), slot_base=base, slot_count=count))
        return out

    def _install_slot_state(self, slot_base: int, slot_count: int) -> list[int]:
        """Slot state of a new installation (nina.install_rounds): bitmaps, offsets,
        exponents and accumulators zeroed, round/count left admitting only each slot's
        first round of the new installation. Returns those first rounds."""
        lo, hi = 2 * slot_base, 2 * (slot_base + slot_count)
        firsts = install_rounds(self.registers[p4spec.REG_COUNT][lo:hi].tolist(),
                                self.registers[p4spec.REG_ROUND][lo:hi].tolist())
        rounds, counts = install_cells(firsts)
        self.reset_job_state(slot_base, slot_count)
        self.registers[p4spec.REG_ROUND][lo:hi] = rounds
        self.registers[p4spec.REG_COUNT][lo:hi] = counts
        return firsts

    def remove_job(self, job_id: int) -> None:
        """Undo install_job: the job entry, its workers' entries and its multicast group."""
        t = self.tables
        params = t.read(_JOB_T, (job_id,))[0][1]
        t.delete(_JOB_T, (job_id,))
        for table in (_WORKER_T, _ADDR_T):
            for key in [k for k in t.entries(table) if k[0] == job_id]:
                t.delete(table, key)
        if params["mcast_grp"] in self.mcast_groups:
            self.delete_mcast_group(params["mcast_grp"])

    def counter_dict(self) -> dict[str, tuple[int, int]]:
        """{decision name: (packets, bytes)} for the non-zero cells (for printing)."""
        return {d.name: (int(self._ctr_pkts[d]), int(self._ctr_bytes[d]))
                for d in Decision if self._ctr_pkts[d]}


def _warm() -> None:
    """Load (on a machine's first run: compile) the kernel at import, so a switch's first
    packet is not held up by the compiler."""
    Pipeline(pool_slots=1).process(PacketIn(0, 0, 0, bytes(UPDATE_LEN)))


_warm()
