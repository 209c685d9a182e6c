"""Trace file format and the `nina trace` tools on a synthetic trace of known content."""
import numpy as np
import pytest

from nina.cli import main
from nina.decisions import TRACE_DTYPE, TRACE_WIRE_DTYPE, Decision
from switch import trace_file
from switch.trace_tools import slot_life, summarize


def _round(t0, job, slot, ver, n, decisions_extra=()):
    """n workers completing (job, slot, ver): FIRST, AGGREGATE..., COMPLETE, 10 us apart."""
    recs = np.zeros(n, TRACE_DTYPE)
    recs["time_ns"] = t0 + 10_000 * np.arange(n)
    recs["job"], recs["slot"], recs["ver"], recs["worker"] = job, slot, ver, np.arange(n)
    recs["decision"] = [Decision.FIRST] + [Decision.AGGREGATE] * (n - 2) + [Decision.COMPLETE]
    recs["count"] = np.arange(1, n + 1)
    recs["bitmap"] = (1 << np.arange(1, n + 1)) - 1
    return recs


@pytest.fixture
def trace(tmp_path):
    recs = [_round(0, 1, s, s % 2, 4) for s in range(10)]
    extra = np.zeros(3, TRACE_DTYPE)
    extra["time_ns"] = 200_000
    extra["job"], extra["slot"], extra["worker"] = 1, 3, 2
    extra["decision"] = [Decision.RETRANSMIT_REPLY, Decision.DROP_UNREGISTERED,
                         Decision.DROP_BAD_SLOT]
    allrecs = np.concatenate(recs + [extra])
    path = tmp_path / trace_file.TRACE_NAME
    with trace_file.TraceWriter(path) as w:
        w.write(allrecs[:7])
        w.write_wire(allrecs[7:].astype(TRACE_WIRE_DTYPE).tobytes())  # P4 mirror byte order
    return tmp_path, allrecs


def test_round_trip_and_partial_record(trace):
    run, recs = trace
    path = run / trace_file.TRACE_NAME
    assert trace_file.read_all(path).tobytes() == recs.tobytes()
    with open(path, "ab") as f:
        f.write(b"\x01" * 5)  # a switch killed mid-write
    assert len(trace_file.read_all(path)) == len(recs)


def test_summary_counts(trace):
    run, _ = trace
    s = summarize(run / trace_file.TRACE_NAME)
    w2 = s.per_worker[(1, 2)]
    assert w2[Decision.AGGREGATE] == 10 and w2[Decision.RETRANSMIT_REPLY] == 1
    assert w2[Decision.DROP_UNREGISTERED] == 1 and w2[Decision.DROP_BAD_SLOT] == 1
    assert s.per_worker[(1, 0)][Decision.FIRST] == 10
    assert s.per_worker[(1, 3)][Decision.COMPLETE] == 10
    assert len(s.latencies_ns) == 10 and set(s.latencies_ns) == {30_000}
    assert s.slots_used[1] == set(range(10))


def test_slot_life_filters(trace):
    run, _ = trace
    lines = slot_life(run, 3, job=1, worker=2)
    assert len(lines) == 4
    assert "drop_unregistered" in lines[2] and "drop_bad_slot" in lines[3]
    assert len(slot_life(run, 3, job=1, worker=0)) == 1 and slot_life(run, 3, job=2) == []
    assert "aggregate" in lines[0] and "retransmit_reply" in lines[1]
    assert "unicast to worker 2" in lines[1]


def test_cli(trace, capsys, tmp_path):
    run, _ = trace
    assert main(["trace", "summary", str(run)]) == 0
    out = capsys.readouterr().out
    assert "rounds completed: 10" in out and "unregistered=1" in out
    assert main(["trace", "show", str(run), "--slot", "99"]) == 1
    assert main(["trace", "plot", str(run), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "trace_latency.png").stat().st_size > 1000
    assert main(["trace", "summary", str(tmp_path / "nope")]) == 2
    assert "no trace at" in capsys.readouterr().err


def test_forwarded_frames_are_not_counted_as_a_job(tmp_path):
    recs = _round(0, 1, 0, 0, 2)
    fwd = np.zeros(5, TRACE_DTYPE)
    fwd["decision"] = Decision.FORWARDED
    fwd["time_ns"] = 50_000
    with trace_file.TraceWriter(tmp_path / trace_file.TRACE_NAME) as w:
        w.write(np.concatenate([recs, fwd]))
    s = summarize(tmp_path)
    assert s.forwarded == 5 and (0, 0) not in s.per_worker
    assert s.per_worker[(1, 1)][Decision.COMPLETE] == 1


def test_names_job_filter_priming_all_gather_and_truncation(tmp_path, capsys):
    """Jobs named from the run folder, a job folder selects its job, priming updates (no
    elements) counted and marked, plain L2 frames explained, a cut trace warned about."""
    import json
    a = _round(0, 1, 0, 0, 2)                       # job 1: a priming round (elements 0)
    b = _round(100_000, 2, 0, 1, 2)
    b["elements"] = 64                              # job 2: data
    fwd = np.zeros(3, TRACE_DTYPE)
    fwd["decision"], fwd["ingress_port"], fwd["time_ns"] = Decision.FORWARDED, 2, 150_000
    run = tmp_path / "rack"
    with trace_file.TraceWriter(run / trace_file.TRACE_NAME) as w:
        w.write(np.concatenate([a, b, fwd]))
    (run / "train-2").mkdir()
    (run / "train-2" / "config.json").write_text(json.dumps(
        {"job_id": 2, "compressor": "int32", "path": "switch INT32"}))
    (run / "rack.json").write_text(json.dumps({"jobs": {"1": {"encoding": "NAT8", "cm": True}}}))
    assert main(["trace", "summary", str(run)]) == 0
    out = capsys.readouterr().out
    assert "job 1 (NAT8 + C_M): 1 slots used" in out
    assert "job 2 (int32: switch INT32): 1 slots used" in out
    row1 = next(line.split() for line in out.splitlines() if line.split()[:2] == ["1", "0"])
    assert row1[2:4] == ["1", "1"]                  # 1 packet, 1 priming
    assert "plain L2: 3 frames (port 2: 3)" in out and "all-gather" in out
    assert main(["trace", "summary", str(run / "train-2")]) == 0     # the job folder
    cap = capsys.readouterr()
    assert "job 2 only" in cap.err and "job 1 " not in cap.out and "plain L2" not in cap.out
    assert main(["trace", "show", str(run), "--slot", "0", "--job", "1"]) == 0
    out = capsys.readouterr().out
    assert "elem   0  priming" in out.splitlines()[0] and "priming update" in out
    assert main(["trace", "plot", str(run), "--job", "2", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "trace_timeline.png").stat().st_size > 1000
    with open(run / trace_file.TRACE_NAME, "r+b") as f:
        f.truncate(2 * TRACE_DTYPE.itemsize)       # the index still counts 7
    assert main(["trace", "summary", str(run)]) == 0
    assert "truncated trace" in capsys.readouterr().err


def test_sink_keeps_every_record_across_batches_strided_input_and_emits(tmp_path):
    """TraceSink copies records as bytes into its buffer and writes the buffer out: records
    handed over in pieces that straddle its batches, a strided view among them, single emits
    and records filled in place (reserve/commit) must all come back in order, field for
    field."""
    from switch.trace_sink import TraceSink
    rng = np.random.default_rng(5)
    recs = np.zeros(1000, TRACE_DTYPE)
    for name, hi in (("time_ns", 1 << 40), ("slot", 4096), ("bitmap", 1 << 31),
                     ("offset", 1 << 31), ("elements", 257), ("decision", len(Decision)),
                     ("ver", 2), ("exponent", 256)):
        recs[name] = rng.integers(0, hi, recs.size)
    path = tmp_path / "s.trace"
    sink = TraceSink(path, batch=64)
    sink.write(recs[:100])
    sink.emit(7, 1, 2, 3, 4, 5, 1, 9, 2, 3, 77, 256)
    sink.write(recs[100:700:2])            # strided: every other record
    sink.write(recs[700:])
    assert sink.reserve(65) is None               # more than a batch: the caller writes
    for lo in range(0, 200, 50):                  # filled in place, as the pipeline does
        view = sink.reserve(50)
        view[:40] = recs[lo:lo + 40]              # 40 of the 50 reserved written
        sink.commit(40)
    sink.close()
    got = trace_file.read_all(path)
    one = np.zeros(1, TRACE_DTYPE)
    for name, v in zip(("time_ns", "ingress_port", "job", "slot", "worker", "decision", "ver",
                        "exponent", "count", "bitmap", "offset", "elements"),
                       (7, 1, 2, 3, 4, 5, 1, 9, 2, 3, 77, 256)):
        one[name] = v
    want = np.concatenate([recs[:100], one, recs[100:700:2], recs[700:]] +
                          [recs[lo:lo + 40] for lo in range(0, 200, 50)])
    assert got.tobytes() == want.tobytes()


def test_sink_whose_file_fails_keeps_taking_records_and_counts_the_lost(tmp_path, capsys,
                                                                       monkeypatch):
    """A trace file that cannot be written (disk full) must not stop the switch: records go
    on being taken, the first error is printed, and every record not written is counted."""
    import errno

    from switch import trace_file
    from switch.trace_sink import TraceSink
    real_write = trace_file.TraceWriter.write
    calls = []

    def full_after_one(self, records):
        calls.append(len(records))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, records)

    monkeypatch.setattr(trace_file.TraceWriter, "write", full_after_one)
    path = tmp_path / "s.trace"
    sink = TraceSink(path, batch=16, buffers=2)
    for i in range(100):
        sink.emit(i, 0, 1, 2, 3, 4, 1, 9, 1, 1, 0, 1)
    sink.close()
    assert sink.records == 100 and sink.lost == 100 - 16
    err = capsys.readouterr().err
    assert "No space left on device" in err and "84 of 100 trace records lost" in err
    got = trace_file.read_all(path)
    assert list(got["time_ns"]) == list(range(16))   # what was written is whole
