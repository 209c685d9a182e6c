"""The control plane end to end: the real Controller (p4runtime-shell over real gRPC) against
the embedded switch's P4Runtime server, raw P4Runtime requests for the error cases, the
`nina ctl` CLI as a separate process, the thrift register reader, and BMv2 when installed."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from google.rpc import code_pb2, status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4rt
from p4.v1 import p4runtime_pb2_grpc

from nina import p4spec
from nina.config import JobSpec, WorkerAddr, ip_to_int, mac_to_int
from nina.wire import FLAG_VER, NAT8_SIGN, Encoding, Header, pack_packet

REPO = Path(__file__).resolve().parents[1]
P4INFO = REPO / "p4" / "build" / "nina.p4info.txtpb"
BMV2_JSON = REPO / "p4" / "build" / "nina.json"
ELECTION = (0, 1)


# ---- fixtures: one embedded switch + one Controller for the module ----

def _need_p4info() -> None:
    if not P4INFO.exists():
        pytest.skip(f"no P4Info at {P4INFO} (p4c output of the P4 program; make p4)")


def _pipeline_class():
    try:
        from switch.pipeline import Pipeline
    except ImportError as e:
        pytest.skip(f"embedded pipeline not importable: {e}")
    return Pipeline


@pytest.fixture(scope="module")
def switch():
    _need_p4info()
    from switch.p4runtime_server import serve_p4runtime
    pipeline = _pipeline_class()()
    server = serve_p4runtime(pipeline, "127.0.0.1:0")
    yield server, pipeline
    server.stop()


@pytest.fixture(scope="module")
def ctl(switch):
    from switch.controller import Controller
    server, _ = switch
    json = str(BMV2_JSON) if BMV2_JSON.exists() else None
    c = Controller(server.addr, str(P4INFO), json, election_id=ELECTION)
    yield c
    c.close()


@pytest.fixture
def stub(switch):
    server, _ = switch
    # p4c's BMv2 JSON of our program is ~24 MB: the read-back of the whole config needs room
    channel = grpc.insecure_channel(server.addr,
                                    options=[("grpc.max_receive_message_length", 1 << 28)])
    yield p4runtime_pb2_grpc.P4RuntimeStub(channel)
    channel.close()


@pytest.fixture
def clean(ctl):
    """Each test leaves no jobs or forwarding entries behind."""
    yield ctl
    for job in ctl.show_jobs():
        ctl.remove_job(job.job_id)
    for mac in ctl.show_forwards():
        ctl.remove_forward(mac)


def _spec(job_id=7, n=3, base=128, count=16, **kw) -> JobSpec:
    workers = tuple(WorkerAddr(w, f"10.0.0.{w + 1}", 40000 + w, port=w + 1,
                               mac=f"00:00:00:00:00:{w + 1:02x}") for w in range(n))
    kw.setdefault("switch_ip", "10.0.0.254")
    return JobSpec(job_id, n, Encoding.NAT8, cm=True, slot_base=base, slot_count=count,
                   loss=0.25, workers=workers, **kw)


# ---- raw P4Runtime helpers ----

def _p4info() -> p4info_pb2.P4Info:
    return text_format.Parse(P4INFO.read_text(), p4info_pb2.P4Info(), allow_unknown_field=True)


def _ids():
    info = _p4info()
    tables = {t.preamble.name: t for t in info.tables}
    actions = {a.preamble.name: a for a in info.actions}
    registers = {r.preamble.name: r.preamble.id for r in info.registers}
    return tables, actions, registers


def _l2_update(kind, mac: int, port: int | None = 1, port_bytes: bytes | None = None,
               field_id: int | None = None) -> p4rt.Update:
    tables, actions, _ = _ids()
    t = tables[p4spec.L2_FORWARD.name]
    a = actions[p4spec.L2_FORWARD.action]
    u = p4rt.Update(type=kind)
    e = u.entity.table_entry
    e.table_id = t.preamble.id
    m = e.match.add(field_id=field_id or t.match_fields[0].id)
    m.exact.value = mac.to_bytes(6, "big")
    if port is not None or port_bytes is not None:
        e.action.action.action_id = a.preamble.id
        e.action.action.params.add(param_id=a.params[0].id,
                                   value=port_bytes if port_bytes is not None
                                   else port.to_bytes(2, "big"))
    return u


def _write(stub, *updates, election=ELECTION):
    req = p4rt.WriteRequest(device_id=0, updates=list(updates))
    req.election_id.high, req.election_id.low = election
    return stub.Write(req)


def _write_errors(err: grpc.RpcError) -> list[p4rt.Error]:
    """The per-update p4.v1.Errors of a failed Write (as p4runtime-shell parses them)."""
    assert err.code() == grpc.StatusCode.UNKNOWN
    details = dict(err.trailing_metadata())["grpc-status-details-bin"]
    out = []
    for any_msg in status_pb2.Status.FromString(details).details:
        e = p4rt.Error()
        assert any_msg.Unpack(e)
        out.append(e)
    return out


def _write_fails(stub, *updates) -> list[p4rt.Error]:
    with pytest.raises(grpc.RpcError) as info:
        _write(stub, *updates)
    return _write_errors(info.value)


# ---- pipeline config ----

def test_pipeline_pushed_and_read_back(ctl, stub):
    rep = stub.GetForwardingPipelineConfig(p4rt.GetForwardingPipelineConfigRequest(
        device_id=0, response_type=p4rt.GetForwardingPipelineConfigRequest.ALL))
    assert rep.config.p4info == _p4info()
    want = BMV2_JSON.read_bytes() if BMV2_JSON.exists() else b""
    assert rep.config.p4_device_config == want
    assert stub.Capabilities(p4rt.CapabilitiesRequest()).p4runtime_api_version


def test_second_controller_sees_pipeline_and_does_not_push(ctl, stub):
    # What a later `nina ctl` does: the P4Info on the switch is the file's, so no push.
    rep = stub.GetForwardingPipelineConfig(p4rt.GetForwardingPipelineConfigRequest(
        device_id=0, response_type=p4rt.GetForwardingPipelineConfigRequest.P4INFO_AND_COOKIE))
    assert rep.config.p4info == ctl.p4info


def test_no_pipeline_config_is_failed_precondition():
    _need_p4info()
    from switch.p4runtime_server import serve_p4runtime
    server = serve_p4runtime(_pipeline_class()(), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(server.addr) as ch:
            s = p4runtime_pb2_grpc.P4RuntimeStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                s.Write(p4rt.WriteRequest(device_id=0, updates=[
                    _l2_update(p4rt.Update.INSERT, 1)]))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.RpcError) as info:
                list(s.Read(p4rt.ReadRequest(device_id=0, entities=[p4rt.Entity(
                    table_entry=p4rt.TableEntry())])))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.RpcError) as info:
                s.GetForwardingPipelineConfig(p4rt.GetForwardingPipelineConfigRequest())
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        server.stop()


def test_p4info_that_contradicts_the_pipeline_is_rejected(ctl, stub):
    info = _p4info()
    t = next(t for t in info.tables if t.preamble.name == p4spec.JOB_TABLE.name)
    t.match_fields[0].bitwidth = 12
    req = p4rt.SetForwardingPipelineConfigRequest(
        device_id=0, action=p4rt.SetForwardingPipelineConfigRequest.VERIFY)
    req.election_id.high, req.election_id.low = ELECTION
    req.config.p4info.CopyFrom(info)
    with pytest.raises(grpc.RpcError) as err:
        stub.SetForwardingPipelineConfig(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_table" in err.value.details()


# ---- jobs through the controller ----

def test_install_show_remove_job(clean, switch):
    ctl, (_, pipeline) = clean, switch
    spec = _spec()
    ctl.install_job(spec)
    assert ctl.show_jobs() == [spec]          # rebuilt from the switch's tables
    # the entries reached the pipeline under p4spec names, keys and params in p4spec order
    jobs = _entries(pipeline, p4spec.JOB_TABLE.name)
    assert jobs == {(7,): (3, 128, 16, spec.shift, 1, 1, 8, 16384)}
    admitted = _entries(pipeline, p4spec.WORKER_TABLE.name)
    assert (7, 2, 3, ip_to_int("10.0.0.3"), 40002) in admitted
    egress = _entries(pipeline, p4spec.WORKER_ADDR.name)
    assert egress[(7, 1)] == (mac_to_int("00:00:00:00:00:02"), ip_to_int("10.0.0.2"), 40001,
                              mac_to_int(spec.switch_mac), ip_to_int("10.0.0.254"))
    groups = {g.group_id: [(r.egress_port, r.instance) for r in g.replicas]
              for g in ctl.sh.MulticastGroupEntry(0).read()}
    assert groups == {8: [(1, 0), (2, 1), (3, 2)]}

    ctl.remove_job(7)
    assert ctl.show_jobs() == []
    assert _entries(pipeline, p4spec.WORKER_TABLE.name) == {}
    assert _entries(pipeline, p4spec.WORKER_ADDR.name) == {}
    assert list(ctl.sh.MulticastGroupEntry(0).read()) == []


def test_job_errors_are_one_line_controller_errors(clean):
    from switch.controller import ControllerError
    ctl = clean
    ctl.install_job(_spec(job_id=1, base=0, count=32))
    with pytest.raises(ControllerError, match="already installed"):
        ctl.install_job(_spec(job_id=1, base=64, count=32))
    with pytest.raises(ControllerError, match="overlap job 1"):
        ctl.install_job(_spec(job_id=2, base=16, count=32))
    with pytest.raises(ControllerError, match="outside the switch pool"):
        ctl.install_job(_spec(job_id=3, base=p4spec.POOL_SLOTS - 1, count=2))
    with pytest.raises(ControllerError, match="no job 9"):
        ctl.remove_job(9)
    # an entry the switch rejects: the P4Runtime error text reaches the user
    with pytest.raises(ControllerError, match="ALREADY_EXISTS"):
        ctl._insert(p4spec.JOB_TABLE, (1,), (1, 0, 1, 30, 1, 0, 2, 0))
    assert [j.job_id for j in ctl.show_jobs()] == [1]



def test_install_failing_half_way_leaves_nothing_of_it(clean, switch):
    """The last worker's admission entry is already there (put in behind the controller's
    back): the install fails after the multicast group, every egress entry and the other
    admissions went in, and rolls all of those back. The entry it did not write stays."""
    from switch.controller import ControllerError
    ctl, (_, pipeline) = clean, switch
    spec = _spec()
    w = spec.workers[-1]
    squatter = (spec.job_id, w.wid, w.port, ip_to_int(w.ip), w.udp_port)
    ctl._insert(p4spec.WORKER_TABLE, squatter, ())
    with pytest.raises(ControllerError, match="ALREADY_EXISTS"):
        ctl.install_job(spec)
    assert _entries(pipeline, p4spec.JOB_TABLE.name) == {}
    assert _entries(pipeline, p4spec.WORKER_ADDR.name) == {}
    assert list(_entries(pipeline, p4spec.WORKER_TABLE.name)) == [squatter]
    assert list(ctl.sh.MulticastGroupEntry(0).read()) == []
    # with the squatter gone the same job installs: nothing of the first attempt is in the way
    ctl._delete(p4spec.WORKER_TABLE, squatter)
    ctl.install_job(spec)
    assert ctl.show_jobs() == [spec]

def test_install_resets_only_the_jobs_slot_state(clean, switch):
    ctl, (_, pipeline) = clean, switch
    spec = _spec(base=200, count=4)
    lo, hi = spec.slot_base * 2, (spec.slot_base + spec.slot_count) * 2
    for idx in (lo - 1, lo, hi - 1, hi):
        pipeline.write_register(p4spec.REG_BITMAP, idx, 0b101)
        pipeline.write_register(p4spec.REG_COUNT, idx, 2)
    pipeline.write_register(p4spec.REG_ROUND, hi - 1, 9)   # slot 3 ver 1 saw round 9
    firsts = ctl.install_job(spec)
    assert pipeline.read_register(p4spec.REG_BITMAP, lo) == 0
    # round state "idle after an earlier round" (nina.install_rounds): slot 3 of the new
    # installation starts past round 9 of the earlier one
    assert firsts[3] == 11 and pipeline.read_register(p4spec.REG_COUNT, hi - 1) == 1
    assert pipeline.read_register(p4spec.REG_ROUND, hi - 1) == 9
    assert pipeline.read_register(p4spec.REG_ROUND, hi - 2) == 10
    assert pipeline.read_register(p4spec.REG_BITMAP, lo - 1) == 0b101   # not this job's
    assert pipeline.read_register(p4spec.REG_COUNT, hi) == 2
    for idx in (lo - 1, hi):
        pipeline.write_register(p4spec.REG_BITMAP, idx, 0)
        pipeline.write_register(p4spec.REG_COUNT, idx, 0)


def test_reinstalled_job_through_the_controller_drops_copies_of_the_earlier_one(clean, switch):
    """Issue 16 item 1 on the controller path: the install reads the slot's round state and
    writes it so that only rounds past the earlier installation's open the slot."""
    from switch.pipeline import PacketIn
    _, pipeline = switch
    spec = _spec(job_id=20, n=2, base=600, count=2)
    spec = JobSpec(20, 2, Encoding.INT32, slot_base=600, slot_count=2, workers=spec.workers,
                   switch_ip="10.0.0.254")

    def update(w, rnd, value):
        h = Header(msg_type=1, encoding=Encoding.INT32, flags=(rnd & 1) | (rnd >> 1) << 2,
                   job=20, worker=w, exponent=120, slot=0, count=1)
        return PacketIn(w + 1, ip_to_int(f"10.0.0.{w + 1}"), 40000 + w,
                        pack_packet(h, np.array([value], np.int32)))

    assert clean.install_job(spec)[0] == 0
    old = [update(0, 0, 1), update(1, 0, 100)]
    for pkt in old:
        pipeline.process(pkt)
    clean.remove_job(20)
    firsts = clean.install_job(spec)
    assert firsts == [2, 1]
    assert pipeline.process(old[1]) == []                 # the held-back copy: stale
    assert pipeline.process(update(0, firsts[0], 2)) == []
    out = pipeline.process(update(1, firsts[0], 200))
    assert {int(np.frombuffer(o.payload[16:20], ">i4")[0]) for o in out} == {202}


def test_failed_install_leaves_nothing_behind(clean, switch):
    """Issue 16 item 3: a bad address is refused before anything is written (no multicast
    group left to block the correct install that follows)."""
    _, pipeline = switch
    from switch.controller import ControllerError
    for bad in ({"switch_ip": "notanip"}, {"switch_mac": "zz"}):
        with pytest.raises(ControllerError, match="not an IPv4 address|not a MAC address"):
            clean.install_job(_spec(job_id=40, **bad))
        assert not pipeline.mcast_groups and clean.show_jobs() == []
    clean.install_job(_spec(job_id=40))
    assert [j.job_id for j in clean.show_jobs()] == [40]


def test_read_slot_through_p4runtime_registers(clean, switch):
    ctl, (_, pipeline) = clean, switch
    spec = _spec(base=300, count=8)
    ctl.install_job(spec)
    idx = (300 + 5) * 2 + 1
    pipeline.write_register(p4spec.REG_BITMAP, idx, 0b110)
    pipeline.write_register(p4spec.REG_COUNT, idx, 2)
    pipeline.write_register(p4spec.REG_MAX_EXP, idx, 130)
    pipeline.write_register(p4spec.REG_OFFSET, idx, 1 << 20)
    pipeline.write_register(p4spec.reg_acc(0), idx, 12345)
    pipeline.write_register(p4spec.reg_acc(255), idx, -7)       # signed sums read back signed
    (s,) = ctl.read_slot(7, 5, ver=1)
    assert (s.index, s.bitmap, s.workers, s.count, s.max_exp, s.offset) == \
        (idx, 0b110, [1, 2], 2, 130, 1 << 20)
    assert s.acc.dtype == np.int32 and s.acc.size == 256
    assert s.acc[0] == 12345 and s.acc[255] == -7 and not s.acc[1:255].any()
    both = ctl.read_slot(7, 5)
    assert [x.ver for x in both] == [0, 1] and both[0].bitmap == 0
    from switch.controller import ControllerError
    with pytest.raises(ControllerError, match="outside job 7"):
        ctl.read_slot(7, 8)


def test_forwarding_and_trace_session(clean, switch):
    ctl, (server, pipeline) = clean, switch
    ctl.set_forward("02:00:00:00:00:01", 3)
    ctl.set_forward("02:00:00:00:00:01", 4)       # replaces
    ctl.set_forward("02:00:00:00:00:02", 5)
    assert ctl.show_forwards() == {"02:00:00:00:00:01": 4, "02:00:00:00:00:02": 5}
    assert _entries(pipeline, p4spec.L2_FORWARD.name)[(mac_to_int("02:00:00:00:00:01"),)] == (4,)
    ctl.set_monitor_port(9)
    assert server.service.monitor_port() == 9
    ctl.set_monitor_port(None)
    assert server.service.monitor_port() is None


def test_installed_job_aggregates_and_counters_and_slot_read_back(clean, switch):
    """The entries the controller installs drive the real pipeline: two workers' packets
    complete a slot, the counters and registers read back over P4Runtime say so."""
    from switch.pipeline import PacketIn
    ctl, (_, pipeline) = clean, switch
    spec = JobSpec(5, 2, Encoding.NAT8, slot_base=400, slot_count=4, workers=(
        WorkerAddr(0, "10.0.0.1", 40000, port=1), WorkerAddr(1, "10.0.0.2", 40001, port=2)))
    before = ctl.read_counters()

    def send(wid: int, job: int = 5) -> list:
        hdr = Header(job=job, worker=wid, slot=2, flags=FLAG_VER, count=3, exponent=130,
                     offset=768)
        codes = np.array([0, 1, NAT8_SIGN | 2], np.uint8)     # +2^S, +2^(S-1), -2^(S-2)
        w = spec.workers[wid]
        return pipeline.process(PacketIn(w.port, ip_to_int(w.ip), w.udp_port,
                                         pack_packet(hdr, codes)))

    assert send(0) == []                                       # no job yet: dropped
    ctl.install_job(spec)
    assert send(0) == []                                       # FIRST
    out = send(1)                                              # COMPLETE: multicast
    assert sorted((o.egress_port, o.dst_ip, o.dst_udp_port) for o in out) == \
        [(1, ip_to_int("10.0.0.1"), 40000), (2, ip_to_int("10.0.0.2"), 40001)]
    after = ctl.read_counters()
    delta = {k: after[k][0] - before[k][0] for k in after if after[k] != before[k]}
    assert delta == {"DROP_UNKNOWN_JOB": 1, "FIRST": 1, "COMPLETE": 1}
    assert after["FIRST"][1] - before["FIRST"][1] > 0          # bytes counted too
    (s,) = ctl.read_slot(5, 2, ver=1)
    big = 1 << spec.shift
    assert (s.bitmap, s.count, s.max_exp, s.offset) == (0b11, 2, 130, 768)
    assert s.acc[:3].tolist() == [2 * big, big, -big // 2] and not s.acc[3:].any()
    ctl.remove_job(5)
    assert send(0) == []
    assert ctl.read_counters()["DROP_UNKNOWN_JOB"][0] - before["DROP_UNKNOWN_JOB"][0] == 2


# ---- errors as a real P4Runtime server reports them (raw protobuf requests) ----

# Codes and wording follow what BMv2's server (PI) answers to the same requests.

def test_unknown_table_id_is_invalid_p4_id(ctl, stub):
    u = _l2_update(p4rt.Update.INSERT, 0x0200000000AA)
    u.entity.table_entry.table_id = 0x02FFFFFF
    (err,) = _write_fails(stub, u)
    assert err.canonical_code == code_pb2.INVALID_ARGUMENT
    assert err.message.startswith("Invalid P4 id") and str(0x02FFFFFF) in err.message
    req = p4rt.ReadRequest(device_id=0)
    req.entities.add().table_entry.table_id = 0x02FFFFFF
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Read(req))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_param_too_wide_is_invalid_argument(clean, stub):
    (err,) = _write_fails(stub, _l2_update(p4rt.Update.INSERT, 0x0200000000AA, port=512))
    assert err.canonical_code == code_pb2.INVALID_ARGUMENT      # port is bit<9>
    assert "does not fit within 9 bits" in err.message
    # padded (3 bytes for 9 bits) and empty bytestrings are accepted as PI accepts them
    _write(stub, _l2_update(p4rt.Update.INSERT, 0x0200000000AA, port_bytes=b"\x00\x00\x01"),
           _l2_update(p4rt.Update.INSERT, 0x0200000000AB, port_bytes=b""))
    assert clean.show_forwards() == {"02:00:00:00:00:aa": 1, "02:00:00:00:00:ab": 0}


def test_bad_match_field_id_is_invalid_argument(ctl, stub):
    (err,) = _write_fails(stub, _l2_update(p4rt.Update.INSERT, 0x0200000000AA, field_id=99))
    assert err.canonical_code == code_pb2.INVALID_ARGUMENT
    assert "field id 99" in err.message


def test_duplicate_insert_and_missing_delete(clean, stub):
    mac = 0x0200000000AB
    _write(stub, _l2_update(p4rt.Update.INSERT, mac, port=2))
    (err,) = _write_fails(stub, _l2_update(p4rt.Update.INSERT, mac, port=3))
    assert err.canonical_code == code_pb2.ALREADY_EXISTS
    _write(stub, _l2_update(p4rt.Update.DELETE, mac, port=None))
    (err,) = _write_fails(stub, _l2_update(p4rt.Update.DELETE, mac, port=None))
    assert err.canonical_code == code_pb2.NOT_FOUND
    (err,) = _write_fails(stub, _l2_update(p4rt.Update.MODIFY, mac, port=3))
    assert err.canonical_code == code_pb2.NOT_FOUND


def test_batch_reports_every_update_and_continues(clean, stub):
    ok1, bad, ok2 = (_l2_update(p4rt.Update.INSERT, 0x0200000000C1, port=1),
                     _l2_update(p4rt.Update.INSERT, 0x0200000000C2, port=600),
                     _l2_update(p4rt.Update.INSERT, 0x0200000000C3, port=3))
    errs = _write_fails(stub, ok1, bad, ok2)
    assert [e.canonical_code for e in errs] == [code_pb2.OK, code_pb2.INVALID_ARGUMENT,
                                                code_pb2.OK]
    assert clean.show_forwards() == {"02:00:00:00:00:c1": 1, "02:00:00:00:00:c3": 3}


def test_table_read_returns_canonical_bytestrings(clean, stub):
    _write(stub, _l2_update(p4rt.Update.INSERT, 0x0200000000D1, port=0))
    tables, _, _ = _ids()
    req = p4rt.ReadRequest(device_id=0)
    req.entities.add().table_entry.table_id = tables[p4spec.L2_FORWARD.name].preamble.id
    (entity,) = [e for rep in stub.Read(req) for e in rep.entities]
    assert entity.table_entry.match[0].exact.value == bytes.fromhex("0200000000d1")
    assert entity.table_entry.action.action.params[0].value == b"\x00"


def test_register_and_counter_reads(ctl, stub, switch):
    _, pipeline = switch
    _, _, registers = _ids()
    pipeline.write_register(p4spec.REG_OFFSET, 17, 0xABCDEF)
    req = p4rt.ReadRequest(device_id=0)
    r = req.entities.add().register_entry
    r.register_id, r.index.index = registers[p4spec.REG_OFFSET], 17
    (e,) = [e for rep in stub.Read(req) for e in rep.entities]
    assert e.register_entry.data.bitstring == bytes.fromhex("abcdef")
    # a wildcard read of one register returns every cell, in ReadResponse chunks
    req = p4rt.ReadRequest(device_id=0)
    req.entities.add().register_entry.register_id = registers[p4spec.REG_COUNT]
    cells = [e.register_entry.index.index for rep in stub.Read(req) for e in rep.entities]
    assert cells == list(range(p4spec.REGISTER_SIZE))
    r.index.index = p4spec.REGISTER_SIZE
    req = p4rt.ReadRequest(device_id=0, entities=[p4rt.Entity(register_entry=r)])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Read(req))
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    pipeline.write_register(p4spec.REG_OFFSET, 17, 0)


def test_writes_need_the_primary(ctl, stub):
    with pytest.raises(grpc.RpcError) as err:
        _write(stub, _l2_update(p4rt.Update.INSERT, 0x0200000000E1), election=(0, 9))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_arbitration_higher_election_id_takes_over(ctl, switch):
    """A second client with a higher election id becomes primary; when it leaves, the
    controller is primary again."""
    from switch.controller import ControllerError
    server, _ = switch
    outbox: list = []
    done = threading.Event()

    def requests():
        req = p4rt.StreamMessageRequest()
        req.arbitration.device_id = 0
        req.arbitration.election_id.low = 5
        yield req
        done.wait(10)

    with grpc.insecure_channel(server.addr) as ch:
        stream = p4runtime_pb2_grpc.P4RuntimeStub(ch).StreamChannel(requests())
        first = next(stream)
        assert first.arbitration.status.code == code_pb2.OK
        assert first.arbitration.election_id.low == 5
        with pytest.raises(ControllerError, match="PERMISSION_DENIED"):
            ctl.set_forward("02:00:00:00:00:f1", 1)
        done.set()
        outbox.extend(stream)
    for _ in range(100):       # the server drops the stream asynchronously
        try:
            ctl.set_forward("02:00:00:00:00:f1", 1)
            break
        except ControllerError:
            time.sleep(0.05)
    ctl.remove_forward("02:00:00:00:00:f1")



def test_an_election_id_already_held_is_invalid_argument(ctl, switch):
    """A second client asking for the controller's own election id is refused (P4Runtime
    spec 5.3): the stream ends with INVALID_ARGUMENT, and the controller stays primary."""
    server, _ = switch

    def requests():
        req = p4rt.StreamMessageRequest()
        req.arbitration.device_id = 0
        req.arbitration.election_id.high, req.arbitration.election_id.low = ELECTION
        yield req
        time.sleep(5)   # keep the stream open: the server must end it

    with grpc.insecure_channel(server.addr) as ch:
        stream = p4runtime_pb2_grpc.P4RuntimeStub(ch).StreamChannel(requests(), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Election id already exists" in err.value.details()
    ctl.set_forward("02:00:00:00:00:f2", 1)      # still the primary
    ctl.remove_forward("02:00:00:00:00:f2")

# ---- the CLI as a user runs it (separate process; election id 0,2 beside the fixture's) ----

def _nina(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nina.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_cli_job_lifecycle(clean, switch):
    server, _ = switch
    base = ["ctl", "--grpc", server.addr, "--p4info", str(P4INFO), "--election-id", "0,2"]
    r = _nina(*base, "job", "add", "--job", "4", "--workers", "2", "--encoding", "int32",
              "--slots", "512:8", "--worker-addr", "0=127.0.0.1:41000",
              "--worker-addr", "1=127.0.0.1:41001@2/00:00:00:00:00:02")
    assert r.returncode == 0, r.stderr
    assert "job 4 installed" in r.stdout
    r = _nina(*base, "job", "show")
    assert "INT32" in r.stdout and "127.0.0.1:41001 port 2 mac 00:00:00:00:00:02" in r.stdout
    r = _nina(*base, "slot", "3", "--job", "4", "--ver", "0")
    assert r.returncode == 0, r.stderr
    assert "register index 1030" in r.stdout and "(0 of 64 non-zero)" in r.stdout
    r = _nina(*base, "counters", "--all")
    assert r.returncode == 0 and "DROP_UNKNOWN_JOB" in r.stdout
    r = _nina(*base, "job", "add", "--job", "4", "--workers", "1",
              "--worker-addr", "0=127.0.0.1:41000")
    assert r.returncode == 1 and r.stderr.strip() == \
        "nina ctl: error: job 4 is already installed (remove it first)"
    r = _nina(*base, "job", "del", "4")
    assert r.returncode == 0 and clean.show_jobs() == []
    # a bad address is a usage error before anything is written; the correct add then works
    for opt, bad in (("--switch-ip", "notanip"), ("--switch-mac", "zz")):
        r = _nina(*base, "job", "add", "--job", "41", "--workers", "1",
                  "--worker-addr", "0=127.0.0.1:41000", opt, bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"address {bad!r}" in r.stderr.strip().splitlines()[-1]
    r = _nina(*base, "job", "add", "--job", "41", "--workers", "1",
              "--worker-addr", "0=127.0.0.1:41000")
    assert r.returncode == 0, r.stderr
    assert "first round per slot (workers must start there): slots 0-" in r.stdout


def test_cli_unreachable_switch_is_one_line():
    _need_p4info()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # nothing listens there
    r = _nina("ctl", "--grpc", f"127.0.0.1:{port}", "--p4info", str(P4INFO), "job", "show")
    assert r.returncode == 1
    assert r.stderr.strip() == f"nina ctl: error: no P4Runtime switch reachable at " \
                               f"127.0.0.1:{port} (waited 3 s)"


def test_cli_bad_worker_address_is_a_usage_error():
    r = _nina("ctl", "job", "add", "--job", "1", "--workers", "1", "--worker-addr", "0=nope")
    assert r.returncode == 2 and "expected WID=IP:UDPPORT" in r.stderr
    assert "Traceback" not in r.stderr


# ---- BMv2's register side channel: thrift ----

def test_thrift_register_reader_against_a_thrift_server():
    """ThriftRegisterReader speaks BMv2's multiplexed 'standard' service: checked against a
    thrift server built from the same bindings (the BMv2 test below uses the real switch)."""
    from bm_runtime.standard import Standard
    from thrift.TMultiplexedProcessor import TMultiplexedProcessor
    from thrift.protocol import TBinaryProtocol
    from thrift.server import TServer
    from thrift.transport import TSocket, TTransport

    from switch.controller import ControllerError, ThriftRegisterReader

    cells: dict[tuple[str, int], int] = {}

    class Handler:
        def bm_register_read(self, cxt, name, idx):
            if name not in p4spec.REGISTERS:
                from bm_runtime.standard.ttypes import InvalidRegisterOperation
                raise InvalidRegisterOperation(code=1)
            return cells.get((name, idx), 0)

        def bm_register_write_range(self, cxt, name, start, end, value):
            for i in range(start, end):
                cells[(name, i)] = value

    processor = TMultiplexedProcessor()
    processor.registerProcessor("standard", Standard.Processor(Handler()))
    sock = TSocket.TServerSocket("127.0.0.1", 0)
    server = TServer.TThreadedServer(processor, sock, TTransport.TBufferedTransportFactory(),
                                     TBinaryProtocol.TBinaryProtocolFactory(), daemon=True)
    sock.listen()
    port = sock.handle.getsockname()[1]
    sock.listen = lambda: None           # already listening
    threading.Thread(target=server.serve, daemon=True).start()

    reader = ThriftRegisterReader("127.0.0.1", port)
    cells[(p4spec.reg_acc(0), 3)] = 0xFFFFFFF9          # BMv2 hands back bit<32> unsigned
    cells[(p4spec.REG_BITMAP, 3)] = 5
    assert reader.read([(p4spec.REG_BITMAP, 3), (p4spec.reg_acc(0), 3)]) == [5, 0xFFFFFFF9]
    cells[(p4spec.REG_COUNT, 9)] = 4
    reader.zero([p4spec.REG_COUNT], 2, 9)
    assert reader.read([(p4spec.REG_COUNT, i) for i in (1, 2, 8, 9)]) == [0, 0, 0, 4]
    with pytest.raises(ControllerError, match="INVALID_REGISTER_NAME"):
        reader.read([("NinaIngress.nope", 0)])
    reader.close()
    with pytest.raises(ControllerError, match="no BMv2 thrift service"):
        ThriftRegisterReader("127.0.0.1", _free_port())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- BMv2 (simple_switch_grpc + the compiled program) when installed ----

@pytest.mark.bmv2
def test_cli_against_bmv2(tmp_path):
    if shutil.which("simple_switch_grpc") is None:
        pytest.skip("simple_switch_grpc not on PATH (BMv2 not installed)")
    if not (P4INFO.exists() and BMV2_JSON.exists()):
        pytest.skip("p4/build/nina.json or nina.p4info.txtpb missing (make p4)")
    grpc_port, thrift_port = _free_port(), _free_port()
    log = open(tmp_path / "bmv2.log", "w")
    proc = subprocess.Popen(["simple_switch_grpc", "--device-id", "0", "--no-p4",
                             "--thrift-port", str(thrift_port),
                             "--notifications-addr", f"ipc://{tmp_path}/notifications.ipc",
                             "--", "--grpc-server-addr", f"127.0.0.1:{grpc_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = ["ctl", "--grpc", f"127.0.0.1:{grpc_port}", "--p4info", str(P4INFO),
                "--json", str(BMV2_JSON), "--thrift-port", str(thrift_port)]
        deadline = time.time() + 30
        while True:
            r = _nina(*base, "job", "show")
            if r.returncode == 0 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert r.returncode == 0, r.stderr
        r = _nina(*base, "job", "add", "--job", "2", "--workers", "2", "--slots", "10:4",
                  "--worker-addr", "0=10.0.0.1:40000@1", "--worker-addr", "1=10.0.0.2:40000@2")
        assert r.returncode == 0, r.stderr
        r = _nina(*base, "job", "show")
        assert "10.0.0.2:40000 port 2" in r.stdout, r.stdout + r.stderr
        r = _nina(*base, "slot", "1", "--job", "2")
        assert r.returncode == 0 and "bitmap 0x00000000" in r.stdout, r.stderr
        r = _nina(*base, "counters", "--all")
        assert r.returncode == 0 and "FORWARDED" in r.stdout, r.stderr
        r = _nina(*base, "job", "del", "2")
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _entries(pipeline, name: str) -> dict:
    from switch.p4runtime_server import _table_entries
    return dict(_table_entries(pipeline, name))
