"""The embedded NINA data plane: switch state and the per-packet algorithm of docs/protocol.md.

State mirrors the P4 program object for object (names from nina.p4spec): the per-(slot, version)
registers, the `decisions` counter, the exact-match tables (switch.tables.TableStore) and the
multicast groups. `process()` takes one packet (the UDP payload plus where it came from) and
returns the packets to send; it never raises on packet bytes: anything malformed is counted
under its Decision and dropped.

Speed matters (this runs per packet in Python), hence: registers that are read per packet live
in array.array buffers (fast int indexing) exposed as numpy views, accumulator rows are cached
views of one 2-D int32 array, NAT8 addends come from a 256-entry table per shift, the header is
one struct unpack, and the packet bytes are read through numpy views of a fixed receive buffer
(`rx_buffer`) that the I/O loop receives into directly (`process_rx`).
"""
from __future__ import annotations

import struct
import time
from array import array
from typing import NamedTuple

import numpy as np

from nina import p4spec
from nina.config import JobSpec, slots_overlap
from nina.decisions import N_DECISIONS, Decision
from nina.install_rounds import install_cells, install_rounds
from nina.wire import (ROUND_MOD, ELEMENTS_INT32, ELEMENTS_NAT8, FLAG_CM, FLAG_VER, HEADER_DTYPE,
                       HEADER_LEN, MAX_WORKERS, RESULT_PART_SUMS, RID_PART_SHIFT, UDP_PORT, VERSION,
                       Encoding, MsgType, cm_codes_to_int, int_to_cm_codes, nat8_to_int,
                       result_parts)
from switch.tables import P4Error, TableStore

ETH_IP_UDP_LEN = 14 + 20 + 8   # frame bytes around a UDP payload (local mode has no frame)
UPDATE_LEN = HEADER_LEN + 256  # every UPDATE is 16 + 256 bytes, INT32 and NAT8 alike
RX_BUFFER_SIZE = 65536         # any UDP datagram fits, so over-long ones are seen as such

# The header as one struct (same layout as nina.wire.HEADER_DTYPE, checked below).
_HDR = struct.Struct(">BBBBHBBHHI")
assert _HDR.size == HEADER_DTYPE.itemsize == HEADER_LEN
assert tuple(HEADER_DTYPE.names) == ("version", "msg_type", "encoding", "flags", "job", "worker",
                                     "exponent", "slot", "count", "offset")
assert array("I").itemsize == 4 and array("Q").itemsize == 8

# Plain ints: IntEnum attribute lookups cost more than the work they name on the fast path.
D_FIRST, D_AGGREGATE, D_COMPLETE = int(Decision.FIRST), int(Decision.AGGREGATE), \
    int(Decision.COMPLETE)
D_REPLY, D_DUP = int(Decision.RETRANSMIT_REPLY), int(Decision.DROP_DUPLICATE)
D_MALFORMED, D_BAD_VERSION = int(Decision.DROP_MALFORMED), int(Decision.DROP_BAD_VERSION)
D_BAD_TYPE, D_BAD_ENCODING = int(Decision.DROP_BAD_TYPE), int(Decision.DROP_BAD_ENCODING)
D_BAD_COUNT, D_UNKNOWN_JOB = int(Decision.DROP_BAD_COUNT), int(Decision.DROP_UNKNOWN_JOB)
D_BAD_WORKER, D_UNREGISTERED = int(Decision.DROP_BAD_WORKER), int(Decision.DROP_UNREGISTERED)
D_BAD_SLOT, D_INJECTED = int(Decision.DROP_BAD_SLOT), int(Decision.DROP_INJECTED)
D_FORWARDED = int(Decision.FORWARDED)
_UPDATE, _RESULT = int(MsgType.UPDATE), int(MsgType.RESULT)
_INT32, _NAT8 = int(Encoding.INT32), int(Encoding.NAT8)
_CAPACITY = (ELEMENTS_INT32, ELEMENTS_NAT8)   # indexed by encoding
_I32BE = np.dtype(">i4")
_PART_BYTES = RESULT_PART_SUMS * _I32BE.itemsize
_RID_WORKER = (1 << RID_PART_SHIFT) - 1   # replica id = part << RID_PART_SHIFT | worker
_WORKER_BYTE = HEADER_DTYPE.fields["worker"][1]   # rewritten per result copy
_MASK32 = 0xFFFFFFFF
_ROUND_FLAGS = 0xFD   # every flags bit but CM: the version bit and the round's high bits

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


_LUTS: dict[int, np.ndarray] = {}


def nat8_lut(shift: int) -> np.ndarray:
    """code -> int32 addend for this shift (nina.wire.nat8_to_int of all 256 codes)."""
    lut = _LUTS.get(shift)
    if lut is None:
        lut = _LUTS[shift] = np.ascontiguousarray(
            nat8_to_int(np.arange(256, dtype=np.uint8), shift), np.int32)
    return lut


class _Job:
    """A job_table entry, decoded once, with what the fast path needs precomputed."""
    __slots__ = ("job", "n", "wlimit", "slot_base", "slot_count", "base2", "shift", "encoding",
                 "cm", "flag_cm", "parts", "mcast_grp", "loss_q16", "lut", "replicas", "addr")

    def __init__(self, job: int, params: tuple, pool_slots: int):
        (n, slot_base, slot_count, shift, encoding, cm, mcast_grp, loss_q16) = params
        self.job, self.n = job, n
        self.wlimit = min(n, MAX_WORKERS)         # the bitmap has 32 bits whatever n says
        self.slot_base = slot_base
        # Slots past the end of the pool do not exist: they drop as BAD_SLOT.
        self.slot_count = max(0, min(slot_count, pool_slots - slot_base))
        self.base2 = 2 * slot_base
        self.shift, self.encoding = shift, encoding
        self.cm = bool(cm) and encoding == _NAT8  # C_M is defined on NAT8 jobs only
        self.flag_cm = FLAG_CM if self.cm else 0
        self.parts = result_parts(encoding, self.flag_cm)
        self.mcast_grp, self.loss_q16 = mcast_grp, loss_q16
        self.lut = nat8_lut(shift) if encoding == _NAT8 else None
        self.replicas: list[tuple] = []   # (egress port, rid, dmac, dip, dport, smac, sip)
        self.addr: dict[int, tuple] = {}  # wid -> (dmac, dip, dport, smac, sip)


class Pipeline:
    """Registers, counters, tables and multicast groups of one switch, and the algorithm."""

    def __init__(self, pool_slots: int = p4spec.POOL_SLOTS, seed: int | None = None,
                 trace=None):
        if not 1 <= pool_slots <= 1 << 16:
            raise ValueError(f"pool_slots must be in 1..65536, got {pool_slots}")
        self.pool_slots = pool_slots
        self.register_size = size = 2 * pool_slots
        self.rng = np.random.default_rng(seed)
        self.trace = trace

        # Per-packet registers: array.array storage (fast scalar access), numpy views outside.
        self._bitmap = array("I", bytes(4 * size))
        self._count = array("B", bytes(size))
        self._max_exp = array("B", bytes(size))
        self._offset = array("I", bytes(4 * size))
        self._round = array("B", bytes(size))
        self.acc = np.zeros((size, p4spec.N_ACCUMULATORS), np.int32)
        self.registers: dict[str, np.ndarray] = {
            p4spec.REG_BITMAP: np.frombuffer(self._bitmap, np.uint32),
            p4spec.REG_COUNT: np.frombuffer(self._count, np.uint8),
            p4spec.REG_MAX_EXP: np.frombuffer(self._max_exp, np.uint8),
            p4spec.REG_OFFSET: np.frombuffer(self._offset, np.uint32),
            p4spec.REG_ROUND: np.frombuffer(self._round, np.uint8),
            **{p4spec.reg_acc(i): self.acc[:, i] for i in range(p4spec.N_ACCUMULATORS)},
        }
        assert set(self.registers) == set(p4spec.REGISTERS)
        self._rows = list(self.acc)                        # row views, one per (slot, ver)
        self._rows64 = [r[:ELEMENTS_INT32] for r in self._rows]

        self._ctr_pkts = array("Q", bytes(8 * N_DECISIONS))
        self._ctr_bytes = array("Q", bytes(8 * N_DECISIONS))
        self.counters_packets = np.frombuffer(self._ctr_pkts, np.uint64)
        self.counters_bytes = np.frombuffer(self._ctr_bytes, np.uint64)

        self.tables = TableStore(p4spec.TABLES)
        self.tables.add_listener(self._on_table_change)
        self._admit = self.tables.entries(_WORKER_T)       # live dict: key -> ()
        self._l2 = self.tables.entries(_L2_T)
        self.mcast_groups: dict[int, list[tuple[int, int]]] = {}
        self._jobs: dict[int, _Job] = {}
        self._dirty = False

        # The I/O loop receives straight into this buffer; the views below read it in place.
        self.rx_buffer = bytearray(RX_BUFFER_SIZE)
        self._rx_codes = np.frombuffer(self.rx_buffer, np.uint8, ELEMENTS_NAT8, HEADER_LEN)
        self._rx_i32 = np.frombuffer(self.rx_buffer, _I32BE, ELEMENTS_INT32, HEADER_LEN)
        self._loss_draws: list[int] = []
        self._loss_i = 0

    # ------------------------------------------------------------------ data plane

    def process(self, pkt: PacketIn) -> list[PacketOut]:
        """Run one packet through the pipeline; returns the packets to send (maybe none)."""
        payload = pkt.payload
        n = len(payload)
        m = min(n, UPDATE_LEN)   # the rest only matters through its length
        self.rx_buffer[:m] = memoryview(payload)[:m]
        return self.process_rx(n, pkt.ingress_port, pkt.src_ip, pkt.src_udp_port,
                               pkt.frame_len or n + ETH_IP_UDP_LEN)

    def process_rx(self, nbytes: int, ingress_port: int, src_ip: int, src_udp_port: int,
                   frame_len: int = 0) -> list[PacketOut]:
        """process() for a packet already in rx_buffer[:nbytes] (the I/O loops' fast path)."""
        if self._dirty:
            self._rebuild_jobs()
        if not frame_len:
            frame_len = nbytes + ETH_IP_UDP_LEN
        buf = self.rx_buffer
        # 1. parse and validate, in the order of docs/protocol.md
        if nbytes != UPDATE_LEN:
            return self._drop(D_MALFORMED, ingress_port, frame_len,
                              _HDR.unpack_from(buf) if nbytes >= HEADER_LEN else None)
        h = _HDR.unpack_from(buf)
        version, mtype, enc, flags, job, w, exp, slot, count, offset = h
        if version != VERSION:
            return self._drop(D_BAD_VERSION, ingress_port, frame_len, h)
        if mtype != _UPDATE:
            return self._drop(D_BAD_TYPE, ingress_port, frame_len, h)
        j = self._jobs.get(job)
        if enc > 1 or (j is not None and enc != j.encoding):
            return self._drop(D_BAD_ENCODING, ingress_port, frame_len, h)
        if count > _CAPACITY[enc]:
            return self._drop(D_BAD_COUNT, ingress_port, frame_len, h)
        if j is None:
            return self._drop(D_UNKNOWN_JOB, ingress_port, frame_len, h)
        if w >= j.wlimit:
            return self._drop(D_BAD_WORKER, ingress_port, frame_len, h)
        if (job, w, ingress_port, src_ip, src_udp_port) not in self._admit:
            return self._drop(D_UNREGISTERED, ingress_port, frame_len, h)
        if slot >= j.slot_count:
            return self._drop(D_BAD_SLOT, ingress_port, frame_len, h)
        if j.loss_q16 and self._loss_draw() < j.loss_q16:
            return self._drop(D_INJECTED, ingress_port, frame_len, h)

        v = flags & FLAG_VER
        rnd = (flags & FLAG_VER) | ((flags & 0xFC) >> 1)   # nina.wire.round_of, inlined
        idx = j.base2 + 2 * slot + v
        oidx = idx ^ 1
        bit = 1 << w
        n = j.n
        bitmap, counts, max_exp, rounds = self._bitmap, self._count, self._max_exp, self._round
        b = bitmap[idx]
        out: list[PacketOut] = []
        if b & bit:
            # 2. w already contributed to (slot, v): a retransmission of this round is answered
            # when complete, else consumed; a packet of another round is stale. Never add twice.
            if rounds[idx] == rnd and counts[idx] == n:
                decision = D_REPLY
                out = self._result_copies(j, idx, enc, flags, slot, count, offset, False, w)
            else:
                decision = D_DUP
        elif (b and (rounds[idx] != rnd or counts[idx] >= n)) or \
                (not b and counts[idx] and rnd != (rounds[idx] + 2) % ROUND_MOD):
            # 3. stale: joins only the open round of v; a new round only once every worker has
            # left v's last round, and only as its successor (round + 2)
            decision = D_DUP
        else:
            # 4. first arrival of w: claim the bit in v, release it in 1 - v
            bitmap[oidx] &= ~bit & _MASK32
            if b == 0:
                c = 1
                bitmap[idx] = bit
                counts[idx] = 1
                max_exp[idx] = exp
                rounds[idx] = rnd
                self._offset[idx] = offset
                if enc == _NAT8:
                    np.copyto(self._rows[idx], j.lut.take(self._rx_codes))
                else:
                    np.copyto(self._rows64[idx], self._rx_i32)
                decision = D_FIRST
            else:
                c = (counts[idx] + 1) & 0xFF
                bitmap[idx] = b | bit
                counts[idx] = c
                if exp > max_exp[idx]:
                    max_exp[idx] = exp
                if enc == _NAT8:
                    row = self._rows[idx]
                    np.add(row, j.lut.take(self._rx_codes), out=row)
                else:
                    row = self._rows64[idx]
                    np.add(row, self._rx_i32, out=row)
                decision = D_AGGREGATE
            if c == n:
                decision = D_COMPLETE
                out = self._result_copies(j, idx, enc, flags, slot, count, offset, True, None)
        self._ctr_pkts[decision] += 1
        self._ctr_bytes[decision] += frame_len
        if self.trace is not None:
            self.trace.emit(time.time_ns(), ingress_port, job, slot, w, decision, v,
                            max_exp[idx], counts[idx], bitmap[idx], offset, count)
        return out

    def _result_copies(self, j: _Job, idx: int, enc: int, flags: int, slot: int, count: int,
                       offset: int, completing: bool, only: int | None) -> list[PacketOut]:
        """The result of (slot, ver) idx, one copy per replica of the job's group: replica
        (port, part << 8 | wid) carries result part `part` to worker wid; a part the result
        does not have is not sent. only: just worker `only`'s copies (a retransmission reply)."""
        flags = (flags & _ROUND_FLAGS) | j.flag_cm
        body = self._result_body(j, idx, completing)
        head = (VERSION, _RESULT, enc, flags, j.job, 0, self._max_exp[idx], slot)
        if j.parts == 1:
            parts = [bytearray(_HDR.pack(*head, count, offset) + body)]
        else:   # nina.wire.result_part_count, inlined: part p only if the chunk reaches it
            parts = []
            for p in range(j.parts):
                a = p * RESULT_PART_SUMS
                if p and count <= a:
                    break
                parts.append(bytearray(_HDR.pack(*head, min(RESULT_PART_SUMS, count - a),
                                                 offset + a)
                                       + body[p * _PART_BYTES:(p + 1) * _PART_BYTES]))
        out = []
        for port, rid, dmac, dip, dport, smac, sip in j.replicas:
            w, p = rid & _RID_WORKER, rid >> RID_PART_SHIFT
            if (only is not None and w != only) or p >= len(parts):
                continue
            pkt = parts[p]
            pkt[_WORKER_BYTE] = w   # one packet per part, its worker byte patched per copy
            out.append(PacketOut(port, dmac, dip, dport, smac, sip, UDP_PORT, bytes(pkt)))
        return out

    def _result_body(self, j: _Job, idx: int, completing: bool) -> bytes:
        """The result payload of (slot, ver) idx; on completion C_M also rewrites the sums."""
        if j.encoding == _INT32:
            return self._rows64[idx].astype(_I32BE).tobytes()
        row = self._rows[idx]
        if not j.cm:
            return row.astype(_I32BE).tobytes()
        codes = int_to_cm_codes(row, self.rng.integers(0, 1 << 32, row.size, np.uint32))
        if completing:
            # Write the compressed values back so a retransmission reply re-encodes the same
            # powers of two (C_M of a power of two is deterministic).
            np.copyto(row, cm_codes_to_int(codes), casting="unsafe")
        return codes.tobytes()

    def _drop(self, decision: int, ingress_port: int, frame_len: int,
              h: tuple | None) -> list[PacketOut]:
        self._ctr_pkts[decision] += 1
        self._ctr_bytes[decision] += frame_len
        if self.trace is not None:
            if h is None:
                self.trace.emit(time.time_ns(), ingress_port, 0, 0, 0, decision, 0, 0, 0, 0, 0,
                                0)
            else:
                _, _, _, flags, job, w, exp, slot, count, offset = h
                self.trace.emit(time.time_ns(), ingress_port, job, slot, w, decision,
                                flags & FLAG_VER, exp, 0, 0, offset, count)
        return []

    def drop_malformed(self, ingress_port: int, frame_len: int) -> None:
        """Count a frame addressed to the NINA port whose IPv4/UDP framing is broken."""
        self._drop(D_MALFORMED, ingress_port, frame_len, None)

    def _loss_draw(self) -> int:
        i = self._loss_i
        if i >= len(self._loss_draws):
            self._loss_draws = self.rng.integers(0, 1 << 16, 4096).tolist()
            i = 0
        self._loss_i = i + 1
        return self._loss_draws[i]

    def forward(self, ingress_port: int, dst_mac: int, frame_len: int) -> int | None:
        """Non-NINA traffic: egress port from l2_forward by destination MAC (None: no entry)."""
        self._ctr_pkts[D_FORWARDED] += 1
        self._ctr_bytes[D_FORWARDED] += frame_len
        if self.trace is not None:
            self.trace.emit(time.time_ns(), ingress_port, 0, 0, 0, D_FORWARDED, 0, 0, 0, 0, 0, 0)
        entry = self._l2.get((dst_mac,))
        return None if entry is None else entry[0]

    # ------------------------------------------------------------------ job cache

    def _on_table_change(self, table: str, op: str, key: tuple, params) -> None:
        if table in (_JOB_T, _ADDR_T):
            self._dirty = True

    def _rebuild_jobs(self) -> None:
        self._dirty = False   # first, so a write racing with the rebuild marks it dirty again
        jobs = {}
        addrs = self.tables.entries(_ADDR_T).copy()
        for (job,), params in self.tables.entries(_JOB_T).copy().items():
            jobs[job] = _Job(job, params, self.pool_slots)
        for (job, wid), a in addrs.items():
            if job in jobs:
                jobs[job].addr[wid] = a
        for j in jobs.values():
            for port, rid in self.mcast_groups.get(j.mcast_grp, ()) if j.mcast_grp else ():
                a = j.addr.get(rid & _RID_WORKER)
                if a is not None:   # a replica with no egress rewrite entry is dropped
                    j.replicas.append((port, rid) + tuple(a))
        self._jobs = jobs

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
