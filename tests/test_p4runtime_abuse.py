"""The embedded P4Runtime server under abuse (issue 16, items 4-5), bounded stress tests:
many idle StreamChannels must not starve the primary controller's requests nor keep a new
controller out; a wildcard register read is refused before it is built, large legal reads
are streamed, and the data plane keeps answering meanwhile."""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import grpc
import pytest
from p4.v1 import p4runtime_pb2 as p4rt
from p4.v1 import p4runtime_pb2_grpc

from nina import p4spec
from nina.config import JobSpec, WorkerAddr

REPO = Path(__file__).resolve().parents[1]
P4INFO = REPO / "p4" / "build" / "nina.p4info.txtpb"
LIVENESS = 20.0   # s: a bound on "answered at all" (a starved request never is)


@pytest.fixture
def server():
    if not P4INFO.exists():
        pytest.skip(f"no P4Info at {P4INFO}")
    from switch.p4runtime_server import serve_p4runtime
    from switch.pipeline import Pipeline
    s = serve_p4runtime(Pipeline(), "127.0.0.1:0")
    yield s
    s.stop(0)


def _register_ids() -> dict[str, int]:
    from google.protobuf import text_format
    from p4.config.v1 import p4info_pb2
    info = text_format.Parse(P4INFO.read_text(), p4info_pb2.P4Info(), allow_unknown_field=True)
    return {r.preamble.name: r.preamble.id for r in info.registers}


def _idle_streams(addr: str, n: int):
    """n StreamChannels that never send anything (no arbitration, no privilege needed)."""
    channels, calls, stop = [], [], queue.Queue()

    def silent():
        stop.get()          # blocks until the test ends
        return
        yield  # noqa: unreachable: makes this a generator

    for _ in range(n):
        ch = grpc.insecure_channel(addr)
        calls.append(p4runtime_pb2_grpc.P4RuntimeStub(ch).StreamChannel(silent()))
        channels.append(ch)

    def close():
        for _ in range(n):
            stop.put(None)
        for c in calls:
            c.cancel()
        for ch in channels:
            ch.close()
    return calls, close


def _within(fn, seconds: float):
    """fn() run in a thread; (finished, result or exception)."""
    box = []
    th = threading.Thread(target=lambda: box.append(_call(fn)), daemon=True)
    th.start()
    th.join(seconds)
    return (bool(box), box[0] if box else None)


def _call(fn):
    try:
        return fn()
    except Exception as e:   # reported to the test
        return e


def test_idle_streams_neither_starve_the_primary_nor_keep_a_new_controller_out(server):
    from switch.controller import Controller
    from switch.p4runtime_server import MAX_STREAMS
    ctl = Controller(server.addr, str(P4INFO), None)
    calls, close = _idle_streams(server.addr, 3 * MAX_STREAMS)
    try:
        time.sleep(0.5)   # let the server accept them all
        spec = JobSpec(1, 1, workers=(WorkerAddr(0, "127.0.0.1", 41000),))
        done, got = _within(lambda: (ctl.install_job(spec), ctl.show_jobs()), LIVENESS)
        assert done and not isinstance(got, Exception), got
        assert [j.job_id for j in got[1]] == [1]
        ctl.close()
        # a new controller can still connect and become primary
        done, got = _within(lambda: Controller(server.addr, str(P4INFO), None,
                                               election_id=(0, 5)), LIVENESS)
        assert done and not isinstance(got, Exception), got
        assert got.primary and [j.job_id for j in got.show_jobs()] == [1]
        got.close()
        # the surplus idle streams were closed, with a reason
        closed = [c for c in calls if c.done()]
        assert len(closed) >= len(calls) - MAX_STREAMS
        assert all(c.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                grpc.StatusCode.CANCELLED) for c in closed)
        assert any(c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for c in closed)
    finally:
        close()
        ctl.close()


def test_wildcard_register_read_is_refused_and_a_large_read_streams(server):
    from switch.controller import Controller
    from switch.p4runtime_server import MAX_READ_CELLS, READ_CHUNK
    ctl = Controller(server.addr, str(P4INFO), None)   # pushes the pipeline config
    ctl.close()
    ch = grpc.insecure_channel(server.addr)
    stub = p4runtime_pb2_grpc.P4RuntimeStub(ch)
    try:
        req = p4rt.ReadRequest(device_id=0)
        req.entities.add().register_entry.SetInParent()   # register id 0: every register
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Read(req, timeout=LIVENESS))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"more than {MAX_READ_CELLS} register cells" in e.value.details()
        refused_in = time.monotonic() - t0
        # one whole register (every cell) is allowed, and comes in chunks
        ids = _register_ids()
        rid = ids[p4spec.REG_ROUND]
        req = p4rt.ReadRequest(device_id=0)
        req.entities.add().register_entry.register_id = rid
        replies = list(stub.Read(req, timeout=LIVENESS))
        assert sum(len(r.entities) for r in replies) == p4spec.REGISTER_SIZE
        assert max(len(r.entities) for r in replies) == READ_CHUNK
        # a read cancelled after its first chunk stops: the server answers the next request
        req = p4rt.ReadRequest(device_id=0)
        req.entities.add().register_entry.register_id = ids[p4spec.REG_COUNT]
        it = stub.Read(req, timeout=LIVENESS)
        next(it)
        it.cancel()
        done, got = _within(lambda: list(stub.Read(p4rt.ReadRequest(device_id=0, entities=[
            p4rt.Entity(register_entry=p4rt.RegisterEntry(register_id=rid,
                                                          index=p4rt.Index(index=3)))]))),
                            LIVENESS)
        assert done and not isinstance(got, Exception), got
        print(f"wildcard read refused in {refused_in * 1000:.1f} ms")
    finally:
        ch.close()
