"""The NINA controller: one P4Runtime control plane for BMv2 and the embedded switch.

Everything that P4Runtime can say goes through p4runtime-shell (pipeline config, forwarding,
job tables, multicast groups, the trace clone session, counters). Registers are the exception:
BMv2's P4Runtime server answers register reads with UNIMPLEMENTED and p4runtime-shell 0.0.6 has
no register entity, so register access goes through a `RegisterReader`: raw P4Runtime
RegisterEntry requests on the embedded switch, BMv2's thrift runtime service on BMv2.

p4runtime-shell keeps one client in module globals, so one process holds at most one open
Controller at a time; close it (or use it as a context manager) before opening another.
"""
from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np
from google.protobuf import text_format
from google.rpc import code_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4rt
from p4.v1 import p4runtime_pb2_grpc

from nina import p4spec
from nina.config import (SWITCH_MAC, JobSpec, WorkerAddr, int_to_mac,
                         mac_to_int, slots_overlap)
from nina.decisions import Decision
from nina.install_rounds import install_cells, install_rounds
from nina.wire import CAPACITY, Encoding
from switch.controller_errors import ControllerError, grpc_error_text
from switch.registers import (AutoRegisterReader, P4RuntimeRegisterReader, RegisterReader,
                              ThriftRegisterReader)

CONNECT_TIMEOUT = 3.0     # seconds to wait for the switch's gRPC port
SLOT_STATE_REGISTERS = (p4spec.REG_BITMAP, p4spec.REG_COUNT, p4spec.REG_MAX_EXP,
                        p4spec.REG_OFFSET, p4spec.REG_ROUND)


# ---- what the controller reports ----

@dataclass(frozen=True)
class SlotState:
    """One (slot, version) of a job as the switch registers hold it."""
    job: int
    slot: int
    ver: int
    index: int              # register index (slot_base + slot) * 2 + ver
    bitmap: int
    count: int
    max_exp: int
    offset: int
    round: int              # 7-bit round number of the (slot, ver)'s current round
    acc: np.ndarray         # int32 accumulators acc_0..acc_{k-1}

    @property
    def workers(self) -> list[int]:
        return [w for w in range(32) if self.bitmap >> w & 1]


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >> 31 else v


# ---- the controller ----

_shell_lock = threading.Lock()
_shell_owner: "Controller | None" = None


class Controller:
    """Pushes the pipeline and manages forwarding, jobs, counters and registers of a switch.

    `push` decides the SetForwardingPipelineConfig: "auto" pushes when the switch has no
    pipeline or a different P4Info (pushing wipes the switch's tables), "always", "never".
    """

    def __init__(self, grpc_addr: str, p4info_path: str, bmv2_json_path: str | None,
                 device_id: int = 0, election_id: tuple[int, int] = (0, 1),
                 thrift_port: int | None = None, push: str = "auto",
                 connect_timeout: float = CONNECT_TIMEOUT):
        global _shell_owner
        from p4runtime_sh import shell as sh
        self.sh = sh
        self.grpc_addr = grpc_addr
        self.device_id = device_id
        self.election_id = tuple(election_id)
        self.thrift_port = thrift_port
        self._registers: RegisterReader | None = None
        self._stream_log = _ShellLogCatch()
        self._p4info = _load_p4info(p4info_path)
        with _shell_lock:
            if _shell_owner is not None:
                raise ControllerError("another Controller is open in this process "
                                      "(p4runtime-shell has one client): close it first")
            need_push = self._needs_push(push, connect_timeout)
            config = None
            if need_push:
                json_path = bmv2_json_path if bmv2_json_path else os.devnull
                if not os.path.exists(json_path):
                    raise ControllerError(f"BMv2 JSON {json_path} not found")
                config = sh.FwdPipeConfig(p4info_path, json_path)
            self._setup(config)
            _shell_owner = self
        self.pushed = need_push

    # -- connection --

    def _needs_push(self, mode: str, timeout: float) -> bool:
        if mode not in ("auto", "always", "never"):
            raise ValueError(f"push must be auto, always or never, not {mode!r}")
        channel = grpc.insecure_channel(self.grpc_addr)
        try:
            try:
                grpc.channel_ready_future(channel).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                raise ControllerError(f"no P4Runtime switch reachable at {self.grpc_addr} "
                                      f"(waited {timeout:g} s)") from None
            if mode == "always":
                return True
            req = p4rt.GetForwardingPipelineConfigRequest(
                device_id=self.device_id,
                response_type=p4rt.GetForwardingPipelineConfigRequest.P4INFO_AND_COOKIE)
            try:
                rep = p4runtime_pb2_grpc.P4RuntimeStub(channel).GetForwardingPipelineConfig(
                    req, timeout=timeout)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:   # no pipeline yet
                    if mode == "never":
                        raise ControllerError(f"the switch at {self.grpc_addr} has no pipeline "
                                              f"config yet") from None
                    return True
                raise ControllerError(f"switch at {self.grpc_addr}: "
                                      f"{grpc_error_text(e)}") from None
            return mode == "auto" and rep.config.p4info != self._p4info
        finally:
            channel.close()

    def _setup(self, config) -> None:
        sh = self.sh
        said = io.StringIO()    # p4runtime-shell prints (not logs) that it is a backup
        with _capture_shell_log() as messages, contextlib.redirect_stdout(said):
            try:
                sh.setup(device_id=self.device_id, grpc_addr=self.grpc_addr,
                         election_id=self.election_id, config=config, verbose=False)
            except SystemExit:
                # p4runtime-shell exits after logging why; it leaves a torn-down client behind.
                sh.client = None
                why = "; ".join(m for m in messages if m) or "connection failed"
                if "Election id already exists" in why:
                    why = (f"another controller is connected with election id "
                           f"{self.election_id[0]},{self.election_id[1]} (choose another: --election-id)")
                raise ControllerError(f"P4Runtime setup with {self.grpc_addr} failed: "
                                      f"{why}") from None
        self.primary = "not the primary" not in said.getvalue()
        sh.global_options.set_option(_shell_option("verbose"), False)
        # While connected, p4runtime-shell's stream thread logs a switch that went away as
        # two CRITICAL lines on the root logger; keep them (the caller says what happened)
        self._stream_log = _ShellLogCatch()
        logging.getLogger().addFilter(self._stream_log)

    @property
    def stream_errors(self) -> list[str]:
        """What p4runtime-shell logged since connecting (e.g. its stream to a dead switch)."""
        return list(self._stream_log.messages)

    def close(self) -> None:
        global _shell_owner
        with _shell_lock:
            if _shell_owner is not self:
                return
            if self._registers is not None:
                self._registers.close()
                self._registers = None
            try:
                if self.sh.client is not None:
                    self.sh.teardown()
            finally:
                _shell_owner = None
                logging.getLogger().removeFilter(self._stream_log)

    def __enter__(self) -> "Controller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def p4info(self) -> p4info_pb2.P4Info:
        return self.sh.context.p4info

    # -- p4runtime-shell calls with errors turned into ControllerError --

    @contextlib.contextmanager
    def _errors(self, what: str):
        from p4runtime_sh.p4runtime import P4RuntimeException, P4RuntimeWriteException
        from p4runtime_sh.utils import UserError
        try:
            yield
        except P4RuntimeWriteException as e:
            text = "; ".join(f"{code_pb2.Code.Name(err.canonical_code)}: {err.message}"
                             for _, err in e.errors)
            raise ControllerError(f"{what}: the switch rejected it: {text}") from None
        except P4RuntimeException as e:
            raise ControllerError(f"{what}: {grpc_error_text(e.grpc_error)}") from None
        except grpc.RpcError as e:
            raise ControllerError(f"{what}: {grpc_error_text(e)}") from None
        except UserError as e:
            raise ControllerError(f"{what}: {e}") from None

    def _entry(self, table: p4spec.Table, key: Sequence[int], params: Sequence[int] | None):
        te = self.sh.TableEntry(table.name)
        for (field, _), v in zip(table.keys, key):
            te.match[field] = str(int(v))
        if params is not None:
            te.action = self.sh.Action(table.action)
            for p, v in zip(table.params, params):
                te.action[p.name] = str(int(v))
        return te

    def _insert(self, table, key, params) -> None:
        with self._errors(f"insert into {table.name} {tuple(key)}"):
            self._entry(table, key, params).insert()

    def _delete(self, table, key) -> None:
        with self._errors(f"delete from {table.name} {tuple(key)}"):
            self._entry(table, key, None).delete()

    def _read_table(self, table: p4spec.Table) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """All entries of a table as (key, params) int tuples in p4spec order."""
        info = next((t for t in self.p4info.tables if t.preamble.name == table.name), None)
        if info is None:
            raise ControllerError(f"the switch's P4Info has no table {table.name}")
        fields = {f.id: f.name for f in info.match_fields}
        pnames = {p.id: p.name for a in self.p4info.actions
                  if a.preamble.name == table.action for p in a.params}
        out = []
        with self._errors(f"read {table.name}"):
            for te in self.sh.TableEntry(table.name).read():
                msg = te.msg()
                match = {fields[m.field_id]: int.from_bytes(m.exact.value, "big")
                         for m in msg.match}
                params = {pnames.get(p.param_id): int.from_bytes(p.value, "big")
                          for p in msg.action.action.params}
                out.append((tuple(match.get(f, 0) for f, _ in table.keys),
                            tuple(params.get(p.name, 0) for p in table.params)))
        return sorted(out)

    def _groups(self) -> dict[int, list[tuple[int, int]]]:
        """Multicast group id -> [(port, instance)] (a wildcard read: PI answers NOT_FOUND
        for a single missing group)."""
        out = {}
        with self._errors("read multicast groups"):
            for g in self.sh.MulticastGroupEntry(0).read():
                out[g.group_id] = [(r.egress_port, r.instance) for r in g.replicas]
        return out

    # -- forwarding --

    def set_forward(self, mac: str, port: int) -> None:
        """Plain traffic to `mac` leaves on `port` (insert or replace)."""
        key = (mac_to_int(mac),)
        with self._errors(f"forward {mac} -> port {port}"):
            te = self._entry(p4spec.L2_FORWARD, key, (port,))
            if key in dict(self._read_table(p4spec.L2_FORWARD)):
                te.modify()
            else:
                te.insert()

    def remove_forward(self, mac: str) -> None:
        self._delete(p4spec.L2_FORWARD, (mac_to_int(mac),))

    def show_forwards(self) -> dict[str, int]:
        return {int_to_mac(k[0]): p[0] for k, p in self._read_table(p4spec.L2_FORWARD)}

    def set_monitor_port(self, port: int | None) -> None:
        """Trace records are cloned to `port` (None: remove the trace clone session)."""
        sid = p4spec.TRACE_CLONE_SESSION
        with self._errors(f"trace clone session {sid}"):
            exists = any(s.session_id == sid for s in self.sh.CloneSessionEntry(0).read())
            entry = self.sh.CloneSessionEntry(sid)
            if port is None:
                if exists:
                    entry.delete()
            elif exists:
                entry.add(port).modify()
            else:
                entry.add(port).insert()

    # -- jobs --

    def install_job(self, spec: JobSpec) -> list[int]:
        """Install a job: slot state, multicast group, egress rewrite, admission, and last the
        job entry that makes it live; returns the first round of each of the job's slots
        (nina.install_rounds: an update of an earlier installation of the job can never open
        one). Everything is checked before anything is written; on a failure while writing,
        what was written is removed again."""
        try:
            spec.validate()
        except ValueError as e:
            raise ControllerError(f"job {spec.job_id}: {e}") from None
        if len(spec.workers) != spec.n_workers:
            raise ControllerError(f"job {spec.job_id}: {spec.n_workers} workers but "
                                  f"{len(spec.workers)} worker addresses")
        why = slots_overlap(spec, self.show_jobs())
        if why is not None:
            raise ControllerError(why)
        if spec.mcast_grp in self._groups():
            raise ControllerError(f"job {spec.job_id}: multicast group {spec.mcast_grp} "
                                  f"is already in use")
        done: list[tuple[p4spec.Table, tuple[int, ...]]] = []
        group_done = False
        try:
            firsts = self._install_slot_state(spec)
            with self._errors(f"job {spec.job_id}: multicast group {spec.mcast_grp}"):
                group = self.sh.MulticastGroupEntry(spec.mcast_grp)
                for port, rid in sorted(spec.replicas(), key=lambda r: r[1]):
                    group.add(port, rid)
                group.insert()
                group_done = True
            *admission, (job_t, job_key, job_params) = spec.table_entries()
            for table, key, params in admission:
                self._insert(table, key, params)
                done.append((table, key))
            self._insert(job_t, job_key, job_params)    # last: the entry that makes it live
        except BaseException:
            with contextlib.suppress(Exception):
                for table, key in reversed(done):
                    self._delete(table, key)
                if group_done:
                    with self._errors("rollback"):
                        self.sh.MulticastGroupEntry(spec.mcast_grp).delete()
            raise
        return firsts

    def _install_slot_state(self, spec: JobSpec) -> list[int]:
        """Bitmaps zeroed (stale ones would make the first packets look like
        retransmissions), round/count set so that each slot admits only the new
        installation's first round (nina.install_rounds); accumulators, offsets and
        exponents need no reset (the first contributor overwrites them)."""
        start, end = spec.slot_base * 2, (spec.slot_base + spec.slot_count) * 2
        regs = self.registers()
        cells = range(start, end)
        counts = regs.read([(p4spec.REG_COUNT, i) for i in cells])
        rounds = regs.read([(p4spec.REG_ROUND, i) for i in cells])
        firsts = install_rounds(counts, rounds)
        new_rounds, new_counts = install_cells(firsts)
        regs.zero([p4spec.REG_BITMAP], start, end)
        regs.write(p4spec.REG_ROUND, start, new_rounds)
        regs.write(p4spec.REG_COUNT, start, new_counts)
        return firsts

    def remove_job(self, job_id: int) -> None:
        """Remove a job: its job entry first (its packets stop being aggregated), then the
        admission and egress entries and its multicast group."""
        jobs = {j.job_id: j for j in self.show_jobs()}
        if job_id not in jobs:
            raise ControllerError(f"no job {job_id} on the switch")
        self._delete(p4spec.JOB_TABLE, (job_id,))
        for table in (p4spec.WORKER_TABLE, p4spec.WORKER_ADDR):
            for key, _ in self._read_table(table):
                if key[0] == job_id:
                    self._delete(table, key)
        gid = jobs[job_id].mcast_grp
        if gid in self._groups():
            with self._errors(f"delete multicast group {gid}"):
                self.sh.MulticastGroupEntry(gid).delete()

    def show_jobs(self) -> list[JobSpec]:
        """The jobs installed on the switch, rebuilt from its tables."""
        admitted: dict[int, list[tuple[int, ...]]] = {}
        for key, _ in self._read_table(p4spec.WORKER_TABLE):
            admitted.setdefault(key[0], []).append(key)
        egress = dict(self._read_table(p4spec.WORKER_ADDR))
        jobs = []
        for (job,), params in self._read_table(p4spec.JOB_TABLE):
            n, base, count, _shift, enc, cm, _grp, loss_q16 = params
            workers, smac, sip = [], SWITCH_MAC, None
            for _, wid, port, ip, udp in sorted(admitted.get(job, [])):
                dmac, _dip, _dport, smac_i, sip_i = egress.get((job, wid), (0, 0, 0, 0, 0))
                if (job, wid) in egress:
                    smac, sip = int_to_mac(smac_i), str(ipaddress.IPv4Address(sip_i))
                workers.append(WorkerAddr(wid, str(ipaddress.IPv4Address(ip)), udp, port,
                                          int_to_mac(dmac)))
            extra = {"switch_ip": sip} if sip is not None else {}
            jobs.append(JobSpec(job, n, Encoding(enc), bool(cm), base, count,
                                loss_q16 / 65536, tuple(workers), switch_mac=smac, **extra))
        return jobs

    # -- counters and registers --

    def read_counters(self) -> dict[str, tuple[int, int]]:
        """Decision name -> (packets, bytes) of the switch's decisions counter."""
        out = {d.name: (0, 0) for d in Decision}
        with self._errors(f"read counter {p4spec.CTR_DECISIONS}"):
            for c in self.sh.CounterEntry(p4spec.CTR_DECISIONS).read():
                msg = c.msg()
                if msg.index.index < len(Decision):
                    out[Decision(msg.index.index).name] = (msg.data.packet_count,
                                                           msg.data.byte_count)
        return out

    def registers(self) -> RegisterReader:
        """The register side channel: thrift when a thrift port was given, else P4Runtime
        with a fall-back to thrift on the default port when P4Runtime says UNIMPLEMENTED."""
        if self._registers is None:
            if self.thrift_port is not None:
                host = self.grpc_addr.rsplit(":", 1)[0]
                self._registers = ThriftRegisterReader(host, self.thrift_port)
            else:
                self._registers = AutoRegisterReader(P4RuntimeRegisterReader(
                    self.sh.client.stub, self.p4info, self.device_id, self.election_id),
                    self.grpc_addr.rsplit(":", 1)[0])
        return self._registers

    def read_slot(self, job_id: int, slot: int, ver: int | None = None,
                  n_acc: int | None = None, known: dict | None = None) -> list[SlotState]:
        """The registers of `slot` of a job, for version `ver` or both; `n_acc`
        accumulators (default: the job's elements per packet). A job no longer installed is
        read from `known` (job id -> (slot_base, slot_count, encoding), e.g. a rack's record):
        its registers keep the last round until a later job reuses the range."""
        job = next((j for j in self.show_jobs() if j.job_id == job_id), None)
        if job is not None:
            base, count, enc = job.slot_base, job.slot_count, job.encoding
        elif known and job_id in known:
            base, count, enc = known[job_id]
        else:
            raise ControllerError(f"no job {job_id} on the switch" +
                                  (" or in the rack's record" if known is not None else ""))
        if not 0 <= slot < count:
            raise ControllerError(f"slot {slot} outside job {job_id}'s {count} slots")
        if ver not in (None, 0, 1):
            raise ControllerError(f"version must be 0 or 1, not {ver}")
        k = CAPACITY[enc] if n_acc is None else min(n_acc, p4spec.N_ACCUMULATORS)
        names = list(SLOT_STATE_REGISTERS) + [p4spec.reg_acc(i) for i in range(k)]
        states = []
        for v in ([0, 1] if ver is None else [ver]):
            index = (base + slot) * 2 + v
            vals = self.registers().read([(name, index) for name in names])
            ns = len(SLOT_STATE_REGISTERS)
            acc = np.array([_signed32(x) for x in vals[ns:]], np.int32)
            states.append(SlotState(job_id, slot, v, index, *vals[:ns], acc))
        return states


# ---- helpers ----

def _load_p4info(path: str) -> p4info_pb2.P4Info:
    info = p4info_pb2.P4Info()
    try:
        with open(path) as f:
            text_format.Merge(f.read(), info, allow_unknown_field=True)
    except OSError as e:
        raise ControllerError(f"cannot read P4Info {path}: {e.strerror}") from None
    except text_format.ParseError as e:
        raise ControllerError(f"P4Info {path} is not a text P4Info: {e}") from None
    return info


def _shell_option(name: str):
    from p4runtime_sh.global_options import Options
    return Options[name]


class _ShellLogCatch(logging.Filter):
    """Keeps (instead of printing) the records p4runtime-shell logs on the root logger."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record):
        if "p4runtime_sh" in record.pathname:
            self.messages.append(record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _capture_shell_log():
    """Collect (instead of printing) what p4runtime-shell logs while it connects: it logs the
    reason of a failure and then calls sys.exit."""
    root = logging.getLogger()
    catch = _ShellLogCatch()
    root.addFilter(catch)
    try:
        yield catch.messages
    finally:
        root.removeFilter(catch)
