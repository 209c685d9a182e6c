"""The embedded switch's P4Runtime service: the subset of p4.v1.P4Runtime the controller uses.

The controller (switch/controller.py, through p4runtime-shell) drives BMv2's simple_switch_grpc
and the embedded data plane with the same calls; this module is what answers them on the
embedded side. It maps P4Info ids to the p4spec names the embedded `Pipeline` keeps its state
under and reports errors the way a real P4Runtime server (p4lang/PI) does: per-update
`p4.v1.Error`s packed in the grpc-status-details of a Write that fails with UNKNOWN, plain
status codes everywhere else.

Served: StreamChannel (primary/backup arbitration by election id), Set/GetForwardingPipeline
Config (the P4Info is kept and checked against nina/p4spec.py; the BMv2 JSON device config is
accepted and stored but unused), Write (table entries, multicast groups, clone sessions,
register cells), Read (table entries, counters, registers, multicast groups, clone sessions),
Capabilities. Not served (UNIMPLEMENTED): action profiles, meters, digests, packet I/O.

Bounded against abuse: at most MAX_STREAMS StreamChannels (a newer one closes the oldest
backup's), so idle connections cannot take every gRPC thread; a Read is streamed chunk by chunk
as it is built, stops when the client cancels, and may name at most MAX_READ_CELLS register
cells (a wildcard read of every register is refused before anything is built).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from importlib import metadata

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4rt
from p4.v1 import p4runtime_pb2_grpc

from nina import p4spec
from switch.tables import P4Error
from switch import p4rt_bytes

log = logging.getLogger(__name__)

Code = grpc.StatusCode
READ_CHUNK = 256            # entities per ReadResponse of a streamed Read (few alive at once)
MAX_STREAMS = 8             # open StreamChannels; a newer one closes the oldest backup's
MAX_WORKERS = 32            # gRPC threads: MAX_STREAMS for streams, the rest for requests
MAX_READ_CELLS = p4spec.REGISTER_SIZE   # register cells one Read may ask for: one whole
                            # register (a wildcard read of all 260 would be 2M entities; with
                            # pure-Python protobuf, ~1 ms each: refused, not built)
READ_PIECE = 128            # register cells built per piece; the data plane runs in between
MAX_MESSAGE = 64 << 20      # a full-pool register reset is one large Write
_SPEC_TABLES = {t.name: t for t in p4spec.TABLES}
_CONFIG = p4rt.SetForwardingPipelineConfigRequest
_GET_CONFIG = p4rt.GetForwardingPipelineConfigRequest


class P4RuntimeError(Exception):
    """A request the server refuses: a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _fail(code: grpc.StatusCode, message: str) -> P4RuntimeError:
    return P4RuntimeError(code, message)


# ---- P4Runtime bytestrings: switch/p4rt_bytes.py, with the server's refusal of a wide value ----

def bytes_to_int(data: bytes, bitwidth: int, what: str) -> int:
    """Decode a bytestring; a value wider than `bitwidth` is INVALID_ARGUMENT."""
    value = p4rt_bytes.bytes_to_int(data)
    if not p4rt_bytes.fits(value, bitwidth):
        raise _fail(Code.INVALID_ARGUMENT,
                    f"{what}: bytestring provided does not fit within {bitwidth} bits")
    return value


int_to_bytes = p4rt_bytes.int_to_bytes


# ---- the committed program: P4Info indexed by id, checked against nina/p4spec.py ----

@dataclass(frozen=True)
class _Field:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True)
class _Action:
    id: int
    name: str
    params: dict[int, _Field]


@dataclass(frozen=True)
class _Table:
    id: int
    name: str
    fields: dict[int, _Field]
    match_types: dict[int, int]
    actions: dict[int, int]              # action id -> ActionRef scope
    spec: p4spec.Table | None            # None: unknown to the embedded pipeline


@dataclass(frozen=True)
class _Array:
    """A counter or register array: its name, cell count and (registers) cell width."""
    id: int
    name: str
    size: int
    bitwidth: int = 0


class Program:
    """A P4Info as the server uses it. Objects the embedded pipeline does not implement are
    kept (reads of them answer empty, writes UNIMPLEMENTED); objects it implements must
    agree with nina/p4spec.py in every width, or the config is rejected."""

    def __init__(self, p4info: p4info_pb2.P4Info):
        self.p4info = p4info
        self.actions = {a.preamble.id: _Action(
            a.preamble.id, a.preamble.name,
            {p.id: _Field(p.id, p.name, p.bitwidth) for p in a.params}) for a in p4info.actions}
        self.tables: dict[int, _Table] = {}
        for t in p4info.tables:
            self.tables[t.preamble.id] = _Table(
                t.preamble.id, t.preamble.name,
                {f.id: _Field(f.id, f.name, f.bitwidth) for f in t.match_fields},
                {f.id: f.match_type for f in t.match_fields},
                {r.id: r.scope for r in t.action_refs}, _SPEC_TABLES.get(t.preamble.name))
        self.counters = {c.preamble.id: _Array(c.preamble.id, c.preamble.name, c.size)
                         for c in p4info.counters}
        self.registers = {r.preamble.id: _Array(r.preamble.id, r.preamble.name, r.size,
                                                _register_width(r))
                          for r in p4info.registers}
        self.table_ids = {t.name: t.id for t in self.tables.values()}
        self._check_against_spec()

    def _check_against_spec(self) -> None:
        def bad(msg: str) -> P4RuntimeError:
            return _fail(Code.INVALID_ARGUMENT,
                         f"P4Info does not match the embedded pipeline: {msg}")

        for t in self.tables.values():
            if t.spec is None:
                continue
            have = {f.name: f.bitwidth for f in t.fields.values()}
            if have != dict(t.spec.keys):
                raise bad(f"table {t.name} matches on {have}, expected {dict(t.spec.keys)}")
            if any(mt != p4info_pb2.MatchField.EXACT for mt in t.match_types.values()):
                raise bad(f"table {t.name} has a non-exact match field")
            action = self.action_by_name(t.spec.action)
            if action is None or action.id not in t.actions:
                raise bad(f"table {t.name} lacks action {t.spec.action}")
            params = {p.name: p.bitwidth for p in action.params.values()}
            want = {p.name: p.bits for p in t.spec.params}
            if params != want:
                raise bad(f"action {action.name} has parameters {params}, expected {want}")
        for r in self.registers.values():
            if r.name in p4spec.REGISTERS and (r.bitwidth != p4spec.REGISTERS[r.name]
                                               or r.size != p4spec.REGISTER_SIZE):
                raise bad(f"register {r.name} is bit<{r.bitwidth}>[{r.size}], expected "
                          f"bit<{p4spec.REGISTERS[r.name]}>[{p4spec.REGISTER_SIZE}]")
        for c in self.counters.values():
            if c.name in p4spec.COUNTERS and c.size != p4spec.COUNTERS[c.name]:
                raise bad(f"counter {c.name} has {c.size} cells, "
                          f"expected {p4spec.COUNTERS[c.name]}")

    def action_by_name(self, name: str) -> _Action | None:
        return next((a for a in self.actions.values() if a.name == name), None)

    def table(self, table_id: int) -> _Table:
        t = self.tables.get(table_id)
        if t is None:   # PI's wording and code (INVALID_ARGUMENT), with the id
            raise _fail(Code.INVALID_ARGUMENT, f"Invalid P4 id: no table with id {table_id}")
        return t


def _register_width(reg: p4info_pb2.Register) -> int:
    bs = reg.type_spec.bitstring
    kind = bs.WhichOneof("type_spec")
    return getattr(bs, kind).bitwidth if kind in ("bit", "int") else 0


# ---- arbitration: one primary per device, the connection with the highest election id ----

class _Connection:
    _ids = itertools.count(1)

    def __init__(self):
        self.id = next(self._ids)
        self.election_id: tuple[int, int] | None = None
        self.outbox: queue.Queue = queue.Queue()   # StreamMessageResponse, error, or None
        self.evicted = False


class P4RuntimeService(p4runtime_pb2_grpc.P4RuntimeServicer):
    """P4Runtime over an embedded `Pipeline` (switch/pipeline.py).

    All pipeline calls and server state changes happen under one lock, so concurrent
    clients see each Write applied whole and in order.
    """

    def __init__(self, pipeline, device_id: int = 0):
        self.pipeline = pipeline
        self.device_id = device_id
        self._lock = threading.RLock()
        self._program: Program | None = None
        self._saved: tuple[Program, p4rt.ForwardingPipelineConfig] | None = None
        self._config = p4rt.ForwardingPipelineConfig()
        self._clone: dict[int, p4rt.CloneSessionEntry] = {}
        self._connections: dict[int, _Connection] = {}

    # -- what a trace collector or test may ask the server directly --

    def clone_session(self, session_id: int) -> p4rt.CloneSessionEntry | None:
        with self._lock:
            return self._clone.get(session_id)

    def monitor_port(self) -> int | None:
        """Egress port of the trace clone session (None: not configured). BMv2 clones trace
        records there; the embedded switch keeps the session for reads and writes its trace
        records through its own sink."""
        s = self.clone_session(p4spec.TRACE_CLONE_SESSION)
        return s.replicas[0].egress_port if s is not None and s.replicas else None

    # -- common checks --

    def _check_device(self, device_id: int) -> None:
        if device_id != self.device_id:
            raise _fail(Code.NOT_FOUND, f"Unknown device id {device_id} "
                                        f"(this switch is device {self.device_id})")

    def _primary(self) -> _Connection | None:
        elected = [c for c in self._connections.values() if c.election_id is not None]
        return max(elected, key=lambda c: c.election_id, default=None)

    def _check_primary(self, election_id: p4rt.Uint128, has_id: bool) -> None:
        # As PI does: with no client connected, only requests without an election id pass.
        primary = self._primary()
        if primary is None:
            ok = not has_id
        else:
            ok = has_id and (election_id.high, election_id.low) == primary.election_id
        if not ok:
            raise _fail(Code.PERMISSION_DENIED, "Not primary")

    def _need_program(self) -> Program:
        if self._program is None:
            raise _fail(Code.FAILED_PRECONDITION,
                        "No forwarding pipeline config set for this device")
        return self._program

    @staticmethod
    def _run(context, fn, *args):
        try:
            return fn(*args)
        except P4RuntimeError as e:
            context.abort(e.code, e.message)

    # -- StreamChannel --

    def StreamChannel(self, request_iterator, context):
        """One controller connection. Each open stream holds a gRPC thread, so at most
        MAX_STREAMS are kept: a newer stream closes the oldest one that is not the primary
        (RESOURCE_EXHAUSTED), so idle backups can neither starve the primary's requests nor
        keep a new controller out."""
        conn = _Connection()
        with self._lock:
            self._connections[conn.id] = conn
            live = [c for c in self._connections.values() if not c.evicted]
            if len(live) > MAX_STREAMS:
                primary = self._primary()
                victim = next((c for c in sorted(live, key=lambda c: c.id)
                               if c is not primary and c is not conn), None)
                if victim is not None:
                    victim.evicted = True
                    victim.outbox.put(_fail(Code.RESOURCE_EXHAUSTED,
                                            f"more than {MAX_STREAMS} StreamChannels: the "
                                            f"oldest backup connection is closed"))
        context.add_callback(lambda: conn.outbox.put(None))

        def read_requests():
            try:
                for req in request_iterator:
                    if req.HasField("arbitration"):
                        try:
                            self._arbitrate(conn, req.arbitration)
                        except P4RuntimeError as e:
                            conn.outbox.put(e)
                            return
                    # packet-out, digest acks: no packet I/O on the embedded switch
            except Exception:     # the client went away (cancelled, reset)
                pass
            finally:
                conn.outbox.put(None)

        threading.Thread(target=read_requests, name=f"p4rt-stream-{conn.id}",
                         daemon=True).start()
        try:
            while True:
                msg = conn.outbox.get()
                if msg is None:
                    return
                if isinstance(msg, P4RuntimeError):
                    context.abort(msg.code, msg.message)
                yield msg
        finally:
            with self._lock:
                was_primary = self._primary() is conn
                del self._connections[conn.id]
                if was_primary:
                    self._notify_all()

    def _arbitrate(self, conn: _Connection, upd: p4rt.MasterArbitrationUpdate) -> None:
        self._check_device(upd.device_id)
        if upd.role.name or upd.role.id:
            raise _fail(Code.UNIMPLEMENTED, "Roles are not supported")
        new_id = (upd.election_id.high, upd.election_id.low)
        with self._lock:
            if any(c.election_id == new_id for c in self._connections.values() if c is not conn):
                raise _fail(Code.INVALID_ARGUMENT, "Election id already exists")
            before = self._primary()
            conn.election_id = new_id
            if self._primary() is not before:
                self._notify_all()
            else:
                self._notify(conn)

    def _notify_all(self) -> None:
        for c in self._connections.values():
            if c.election_id is not None:
                self._notify(c)

    def _notify(self, conn: _Connection) -> None:
        primary = self._primary()
        msg = p4rt.StreamMessageResponse()
        arb = msg.arbitration
        arb.device_id = self.device_id
        if primary is not None:
            arb.election_id.high, arb.election_id.low = primary.election_id
        if primary is conn:
            arb.status.code = code_pb2.OK
            arb.status.message = "Is primary"
        else:
            arb.status.code = code_pb2.ALREADY_EXISTS
            arb.status.message = "Is backup: a primary connection exists"
        conn.outbox.put(msg)

    # -- pipeline config --

    def SetForwardingPipelineConfig(self, request, context):
        self._run(context, self._set_config, request)
        return p4rt.SetForwardingPipelineConfigResponse()

    def _set_config(self, req) -> None:
        self._check_device(req.device_id)
        with self._lock:
            self._check_primary(req.election_id, req.HasField("election_id"))
            action = req.action
            if action == _CONFIG.COMMIT:
                if self._saved is None:
                    raise _fail(Code.FAILED_PRECONDITION, "No saved config to commit")
                program, config = self._saved
                self._commit(program, config, reconcile=False)
                return
            if action not in (_CONFIG.VERIFY, _CONFIG.VERIFY_AND_SAVE,
                              _CONFIG.VERIFY_AND_COMMIT, _CONFIG.RECONCILE_AND_COMMIT):
                raise _fail(Code.INVALID_ARGUMENT, "Invalid SetForwardingPipeline action")
            if not req.HasField("config") or not req.config.HasField("p4info"):
                raise _fail(Code.INVALID_ARGUMENT, "Missing P4Info in pipeline config")
            program = Program(req.config.p4info)
            if action == _CONFIG.VERIFY:
                return
            if action == _CONFIG.VERIFY_AND_SAVE:
                self._saved = (program, req.config)
                return
            self._commit(program, req.config, reconcile=action == _CONFIG.RECONCILE_AND_COMMIT)

    def _commit(self, program: Program, config, reconcile: bool) -> None:
        """A new program starts from empty state (as BMv2 does when it loads a new JSON);
        RECONCILE_AND_COMMIT keeps the state when the P4Info is the same."""
        same = self._program is not None and self._program.p4info == program.p4info
        if not (reconcile and same):
            with _pipeline_errors():
                self._clear_state()
        self._program = program
        self._config = p4rt.ForwardingPipelineConfig()
        self._config.CopyFrom(config)
        self._saved = None

    def _clear_state(self) -> None:
        self.pipeline.tables.clear()
        for gid in list(self.pipeline.mcast_groups):
            self.pipeline.delete_mcast_group(gid)
        self._clone.clear()
        self.pipeline.reset_registers()
        self.pipeline.reset_counters()

    def GetForwardingPipelineConfig(self, request, context):
        return self._run(context, self._get_config, request)

    def _get_config(self, req):
        self._check_device(req.device_id)
        with self._lock:
            self._need_program()
            rep = p4rt.GetForwardingPipelineConfigResponse()
            cfg, src = rep.config, self._config
            kind = req.response_type
            if kind not in _GET_CONFIG.ResponseType.values():
                raise _fail(Code.INVALID_ARGUMENT, "Invalid response_type")
            if kind in (_GET_CONFIG.ALL, _GET_CONFIG.P4INFO_AND_COOKIE):
                cfg.p4info.CopyFrom(src.p4info)
            if kind in (_GET_CONFIG.ALL, _GET_CONFIG.DEVICE_CONFIG_AND_COOKIE):
                cfg.p4_device_config = src.p4_device_config
            if src.HasField("cookie"):
                cfg.cookie.CopyFrom(src.cookie)
            return rep

    def Capabilities(self, request, context):
        return p4rt.CapabilitiesResponse(p4runtime_api_version=metadata.version("p4runtime"))

    # -- Write --

    def Write(self, request, context):
        results = self._run(context, self._write, request)
        if any(r is not None for r in results):
            _abort_with_errors(context, results)
        return p4rt.WriteResponse()

    def _write(self, req) -> list[P4RuntimeError | None]:
        self._check_device(req.device_id)
        with self._lock:
            self._check_primary(req.election_id, req.HasField("election_id"))
            program = self._need_program()
            if req.atomicity != p4rt.WriteRequest.CONTINUE_ON_ERROR:
                raise _fail(Code.UNIMPLEMENTED,
                            "Support for atomic write modes has not been implemented")
            results: list[P4RuntimeError | None] = []
            for update in req.updates:
                try:
                    with _pipeline_errors():
                        self._apply(program, update)
                    results.append(None)
                except P4RuntimeError as e:
                    results.append(e)
            return results

    def _apply(self, program: Program, update: p4rt.Update) -> None:
        if update.type not in (p4rt.Update.INSERT, p4rt.Update.MODIFY, p4rt.Update.DELETE):
            raise _fail(Code.INVALID_ARGUMENT, "Update type is not set")
        kind = update.entity.WhichOneof("entity")
        if kind == "table_entry":
            self._write_table(program, update.type, update.entity.table_entry)
        elif kind == "packet_replication_engine_entry":
            self._write_pre(update.type, update.entity.packet_replication_engine_entry)
        elif kind == "register_entry":
            self._write_register(program, update.type, update.entity.register_entry)
        elif kind is None:
            raise _fail(Code.INVALID_ARGUMENT, "Entity is not set")
        else:
            raise _fail(Code.UNIMPLEMENTED, f"{kind} writes are not supported")

    def _write_table(self, program: Program, kind: int, entry: p4rt.TableEntry) -> None:
        table = program.table(entry.table_id)
        if table.spec is None:
            raise _fail(Code.UNIMPLEMENTED,
                        f"Table {table.name} is not implemented by the embedded pipeline")
        if entry.is_default_action:
            raise _fail(Code.UNIMPLEMENTED, "Changing a table's default action is not supported")
        if entry.priority != 0:
            raise _fail(Code.INVALID_ARGUMENT, "Non-zero priority for exact-match table")
        key = _match_key(table, entry)
        name = table.name
        exists = _table_lookup(self.pipeline, name, key) is not None
        if kind == p4rt.Update.DELETE:
            if not exists:
                raise _fail(Code.NOT_FOUND, f"Cannot find match entry in {name}")
            self.pipeline.tables.delete(name, key)
            return
        params = _action_params(program, table, entry)
        if kind == p4rt.Update.INSERT:
            if exists:
                raise _fail(Code.ALREADY_EXISTS,
                            "Match entry exists, use MODIFY if you wish to change action")
            self.pipeline.tables.insert(name, key, params)
        else:
            if not exists:
                raise _fail(Code.NOT_FOUND, f"Cannot find match entry in {name}")
            self.pipeline.tables.modify(name, key, params)

    def _write_pre(self, kind: int, entry: p4rt.PacketReplicationEngineEntry) -> None:
        which = entry.WhichOneof("type")
        if which == "multicast_group_entry":
            group = entry.multicast_group_entry
            gid = group.multicast_group_id
            if gid == 0:
                raise _fail(Code.INVALID_ARGUMENT, "0 is not a valid group id")
            replicas = _replicas(group.replicas)
            groups = self.pipeline.mcast_groups
            if kind == p4rt.Update.INSERT and gid in groups:
                raise _fail(Code.ALREADY_EXISTS, f"Multicast group {gid} already exists")
            if kind != p4rt.Update.INSERT and gid not in groups:
                raise _fail(Code.NOT_FOUND, f"Multicast group {gid} does not exist")
            if kind == p4rt.Update.DELETE:
                self.pipeline.delete_mcast_group(gid)
            else:
                self.pipeline.write_mcast_group(gid, replicas)
        elif which == "clone_session_entry":
            session = entry.clone_session_entry
            sid = session.session_id
            if sid == 0:
                raise _fail(Code.INVALID_ARGUMENT, "0 is not a valid session id")
            replicas = _replicas(session.replicas)
            if kind == p4rt.Update.INSERT and sid in self._clone:
                raise _fail(Code.ALREADY_EXISTS, f"Clone session {sid} already exists")
            if kind != p4rt.Update.INSERT and sid not in self._clone:
                raise _fail(Code.NOT_FOUND, f"Clone session {sid} does not exist")
            if kind == p4rt.Update.DELETE:
                del self._clone[sid]
            else:
                stored = p4rt.CloneSessionEntry()
                stored.CopyFrom(session)
                self._clone[sid] = stored
        else:
            raise _fail(Code.INVALID_ARGUMENT, "Invalid PRE operation")

    def _write_register(self, program: Program, kind: int, entry: p4rt.RegisterEntry) -> None:
        if kind != p4rt.Update.MODIFY:
            raise _fail(Code.INVALID_ARGUMENT, "Registers can only be MODIFY'd")
        reg = _array(program.registers, entry.register_id, "register")
        if not entry.HasField("index"):
            raise _fail(Code.UNIMPLEMENTED, "Wildcard register writes are not supported")
        index = _index(reg, entry.index.index)
        if entry.data.WhichOneof("data") != "bitstring":
            raise _fail(Code.INVALID_ARGUMENT, f"Register {reg.name} holds a bitstring")
        value = bytes_to_int(entry.data.bitstring, reg.bitwidth, f"register {reg.name}")
        self.pipeline.write_register(reg.name, index, value)

    # -- Read --

    def Read(self, request, context):
        """Entities streamed in READ_CHUNK pieces, each built when it is sent (never the
        whole answer in memory); a read of more than MAX_READ_CELLS register cells is
        refused before anything is built, and a cancelled read stops building."""
        plan = self._run(context, self._read_plan, request)
        chunk: list[p4rt.Entity] = []
        sent = False
        for part in plan:
            with self._lock, _pipeline_errors():
                try:
                    part(chunk)
                except P4RuntimeError as e:
                    context.abort(e.code, e.message)
            time.sleep(0)   # hand the GIL over: the data plane shares this process
            while len(chunk) >= READ_CHUNK:
                if not context.is_active():
                    return
                yield p4rt.ReadResponse(entities=chunk[:READ_CHUNK])
                sent = True
                del chunk[:READ_CHUNK]
        if chunk or not sent:
            yield p4rt.ReadResponse(entities=chunk)

    def _read_plan(self, req) -> list:
        """Check a ReadRequest and turn it into parts, each a callable appending at most a
        chunk's worth of entities (register reads are split by cells)."""
        self._check_device(req.device_id)
        with self._lock, _pipeline_errors():
            program = self._need_program()
            parts: list = []
            cells = 0
            for entity in req.entities:
                kind = entity.WhichOneof("entity")
                if kind == "table_entry":
                    parts.append(lambda out, e=entity.table_entry:
                                 self._read_tables(program, e, out))
                elif kind == "counter_entry":
                    parts.append(lambda out, e=entity.counter_entry:
                                 self._read_counters(program, e, out))
                elif kind == "register_entry":
                    for reg, indices in self._register_cells(program, entity.register_entry):
                        cells += len(indices)
                        if cells > MAX_READ_CELLS:
                            raise _fail(Code.RESOURCE_EXHAUSTED,
                                        f"Read of more than {MAX_READ_CELLS} register cells "
                                        f"(read one register, or index ranges, at a time)")
                        for i in range(0, len(indices), READ_PIECE):
                            parts.append(lambda out, r=reg, ix=indices[i:i + READ_PIECE]:
                                         self._read_register_cells(r, ix, out))
                elif kind == "packet_replication_engine_entry":
                    parts.append(lambda out, e=entity.packet_replication_engine_entry:
                                 self._read_pre(e, out))
                else:
                    raise _fail(Code.UNIMPLEMENTED, f"Reading {kind} is not supported")
            return parts

    def _read_tables(self, program: Program, want: p4rt.TableEntry, out: list) -> None:
        tables = [program.table(want.table_id)] if want.table_id else list(program.tables.values())
        for table in tables:
            if table.spec is None:
                continue
            if want.table_id and want.match:
                key = _match_key(table, want)
                params = _table_lookup(self.pipeline, table.name, key)
                found = [] if params is None else [(key, params)]
            else:
                found = _table_entries(self.pipeline, table.name)
            for key, params in found:
                out.append(p4rt.Entity(table_entry=_table_entry_msg(program, table, key, params)))

    def _read_counters(self, program: Program, want: p4rt.CounterEntry, out: list) -> None:
        arrays = [_array(program.counters, want.counter_id, "counter")] if want.counter_id \
            else list(program.counters.values())
        for ctr in arrays:
            if ctr.name not in p4spec.COUNTERS:
                continue
            indices = [_index(ctr, want.index.index)] if want.HasField("index") \
                else range(ctr.size)
            for i in indices:
                packets, nbytes = self.pipeline.read_counter(ctr.name, i)
                e = p4rt.Entity()
                c = e.counter_entry
                c.counter_id, c.index.index = ctr.id, i
                c.data.packet_count, c.data.byte_count = int(packets), int(nbytes)
                out.append(e)

    def _register_cells(self, program: Program, want: p4rt.RegisterEntry):
        """[(register, indices)] a RegisterEntry asks for (id 0: every register; no index:
        every cell)."""
        arrays = [_array(program.registers, want.register_id, "register")] \
            if want.register_id else list(program.registers.values())
        out = []
        for reg in arrays:
            if reg.name not in p4spec.REGISTERS:
                continue
            # a switch started with a smaller slot pool has fewer cells than the P4Info says
            cells = min(reg.size, getattr(self.pipeline, "register_size", reg.size))
            indices = [_index(reg, want.index.index)] if want.HasField("index") \
                else range(cells)
            out.append((reg, indices))
        return out

    def _read_register_cells(self, reg: _Array, indices, out: list) -> None:
        for i in indices:
            e = p4rt.Entity()
            r = e.register_entry
            r.register_id, r.index.index = reg.id, i
            r.data.bitstring = int_to_bytes(int(self.pipeline.read_register(reg.name, i)),
                                            reg.bitwidth)
            out.append(e)

    def _read_pre(self, want: p4rt.PacketReplicationEngineEntry, out: list) -> None:
        which = want.WhichOneof("type")
        if which == "multicast_group_entry":
            gid = want.multicast_group_entry.multicast_group_id
            groups = self.pipeline.mcast_groups
            if gid and gid not in groups:
                raise _fail(Code.NOT_FOUND, "Multicast group does not exist")
            for g in sorted(groups) if gid == 0 else [gid]:
                e = p4rt.Entity()
                m = e.packet_replication_engine_entry.multicast_group_entry
                m.multicast_group_id = g
                for port, instance in groups[g]:
                    m.replicas.add(egress_port=port, instance=instance)
                out.append(e)
        elif which == "clone_session_entry":
            sid = want.clone_session_entry.session_id
            if sid and sid not in self._clone:
                raise _fail(Code.NOT_FOUND, "Clone session id does not exist")
            for s in sorted(self._clone) if sid == 0 else [sid]:
                e = p4rt.Entity()
                e.packet_replication_engine_entry.clone_session_entry.CopyFrom(self._clone[s])
                out.append(e)
        else:
            raise _fail(Code.INVALID_ARGUMENT, "Invalid PRE read")


# ---- helpers for entries ----

def _match_key(table: _Table, entry: p4rt.TableEntry) -> tuple[int, ...]:
    """The pipeline's key tuple (p4spec key order) from a TableEntry's exact matches."""
    values: dict[str, int] = {}
    for m in entry.match:
        f = table.fields.get(m.field_id)
        if f is None:
            raise _fail(Code.INVALID_ARGUMENT,
                        f"Unknown field id {m.field_id} in match key of {table.name}")
        if f.name in values:
            raise _fail(Code.INVALID_ARGUMENT, f"Duplicate field {f.name} in match key")
        if m.WhichOneof("field_match_type") != "exact":
            raise _fail(Code.INVALID_ARGUMENT, f"Field {f.name} of {table.name} is exact-match")
        values[f.name] = bytes_to_int(m.exact.value, f.bitwidth, f"match field {f.name}")
    missing = [n for n, _ in table.spec.keys if n not in values]
    if missing:
        raise _fail(Code.INVALID_ARGUMENT,
                    f"Missing non-ternary field {missing[0]} in match key of {table.name}")
    return tuple(values[n] for n, _ in table.spec.keys)


def _action_params(program: Program, table: _Table, entry: p4rt.TableEntry) -> tuple[int, ...]:
    if entry.action.WhichOneof("type") != "action":
        raise _fail(Code.INVALID_ARGUMENT, f"Table {table.name} takes a direct action")
    act = entry.action.action
    scope = table.actions.get(act.action_id)
    action = program.actions.get(act.action_id)
    if action is None or scope is None or scope == p4info_pb2.ActionRef.DEFAULT_ONLY:
        raise _fail(Code.INVALID_ARGUMENT,
                    f"Invalid action id {act.action_id} for table {table.name}")
    if action.name != table.spec.action:
        raise _fail(Code.UNIMPLEMENTED, f"The embedded pipeline only installs "
                                        f"{table.spec.action} entries in {table.name}")
    values: dict[str, int] = {}
    for p in act.params:
        f = action.params.get(p.param_id)
        if f is None:
            raise _fail(Code.INVALID_ARGUMENT,
                        f"Unknown param id {p.param_id} for action {action.name}")
        if f.name in values:
            raise _fail(Code.INVALID_ARGUMENT, f"Duplicate param {f.name}")
        values[f.name] = bytes_to_int(p.value, f.bitwidth, f"param {f.name} of {action.name}")
    missing = [p.name for p in table.spec.params if p.name not in values]
    if missing:
        raise _fail(Code.INVALID_ARGUMENT, f"Missing param {missing[0]} of {action.name}")
    return tuple(values[p.name] for p in table.spec.params)


def _table_entry_msg(program: Program, table: _Table, key, params) -> p4rt.TableEntry:
    by_name = {f.name: f for f in table.fields.values()}
    msg = p4rt.TableEntry(table_id=table.id)
    for (name, bits), value in zip(table.spec.keys, key):
        m = msg.match.add(field_id=by_name[name].id)
        m.exact.value = int_to_bytes(int(value), bits)
    action = program.action_by_name(table.spec.action)
    msg.action.action.action_id = action.id
    pids = {f.name: f.id for f in action.params.values()}
    for p, value in zip(table.spec.params, params):
        msg.action.action.params.add(param_id=pids[p.name], value=int_to_bytes(int(value), p.bits))
    return msg


def _replicas(replicas) -> list[tuple[int, int]]:
    out = []
    for r in replicas:
        port = int.from_bytes(r.port, "big") if r.WhichOneof("port_kind") == "port" \
            else r.egress_port
        if (port, r.instance) in out:
            raise _fail(Code.INVALID_ARGUMENT,
                        f"Duplicate replica (port {port}, instance {r.instance})")
        out.append((port, r.instance))
    return out


def _array(arrays: dict[int, _Array], array_id: int, what: str) -> _Array:
    a = arrays.get(array_id)
    if a is None:
        raise _fail(Code.INVALID_ARGUMENT, f"Invalid P4 id: no {what} with id {array_id}")
    return a


def _index(array: _Array, index: int) -> int:
    if not 0 <= index < array.size:
        raise _fail(Code.OUT_OF_RANGE,
                    f"Index {index} out of range for {array.name} of size {array.size}")
    return index


# ---- the pipeline's table store, as this server needs it ----

def _table_entries(pipeline, name: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(key, params) of every entry, params in p4spec order, sorted by key."""
    return sorted(pipeline.tables.entries(name).items())


def _table_lookup(pipeline, name: str, key: tuple[int, ...]) -> tuple[int, ...] | None:
    return pipeline.tables.lookup(name, key)


@contextlib.contextmanager
def _pipeline_errors():
    """The pipeline refuses with P4Error(code name, message): pass it on as that status."""
    try:
        yield
    except P4Error as e:
        code = getattr(Code, e.code, Code.UNKNOWN)
        raise _fail(code, e.message) from None


def _abort_with_errors(context, results: list[P4RuntimeError | None]) -> None:
    """Fail a Write as PI does: UNKNOWN, with one p4.v1.Error per update (OK ones too)."""
    status = status_pb2.Status(code=code_pb2.UNKNOWN)
    for r in results:
        err = p4rt.Error(canonical_code=code_pb2.OK) if r is None else \
            p4rt.Error(canonical_code=r.code.value[0], message=r.message, space="nina-embedded")
        detail = any_pb2.Any()
        detail.Pack(err)
        status.details.append(detail)
    failed = [r for r in results if r is not None]
    status.message = f"{len(failed)} of {len(results)} updates failed: {failed[0].message}"
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(Code.UNKNOWN, status.message)


# ---- the server ----

class P4RuntimeServer:
    """A running gRPC server; `port` is the bound port (useful with addr "host:0")."""

    def __init__(self, server: grpc.Server, service: P4RuntimeService, host: str, port: int):
        self.grpc_server = server
        self.service = service
        self.port = port
        self.addr = f"{host}:{port}"

    def stop(self, grace: float | None = 0.5) -> None:
        self.grpc_server.stop(grace).wait()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def serve_p4runtime(pipeline, addr: str = "127.0.0.1:9559", device_id: int = 0,
                    max_workers: int = MAX_WORKERS) -> P4RuntimeServer:
    """Serve P4Runtime for `pipeline` on `addr` (returns once listening)."""
    service = P4RuntimeService(pipeline, device_id)
    opts = [("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers, "p4rt"), options=opts)
    p4runtime_pb2_grpc.add_P4RuntimeServicer_to_server(service, server)
    host = addr.rsplit(":", 1)[0]
    try:
        port = server.add_insecure_port(addr)
    except RuntimeError as e:
        raise OSError(f"cannot listen for P4Runtime on {addr}: {e}") from None
    if port == 0:
        raise OSError(f"cannot listen for P4Runtime on {addr} (address in use?)")
    server.start()
    log.info("P4Runtime server for device %d on %s:%d", device_id, host, port)
    return P4RuntimeServer(server, service, host, port)
