"""The switch process: an I/O back end driving the pipeline, optional trace and P4Runtime.

SwitchServer runs the loop in the calling thread (the `nina switch` process) or in a thread
(tests, in-process use). run_switch() is what `nina switch` does: build everything, print where
it listens, serve until SIGINT/SIGTERM, then print the counters and close the trace.
"""
from __future__ import annotations

import gc
import json
import signal
import sys
import threading
from pathlib import Path

from nina.config import JobSpec, slots_overlap
from nina.decisions import Decision
from switch.pipeline import Pipeline


class SwitchServer:
    """A pipeline behind an I/O back end (switch.io_udp.UdpIO or switch.io_raw.RawIO)."""

    def __init__(self, pipeline: Pipeline, io):
        self.pipeline = pipeline
        self.io = io
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        self.io.run(self.pipeline)

    def start(self) -> "SwitchServer":
        """Serve in a daemon thread (stop() ends it)."""
        self._thread = threading.Thread(target=self.run, name="nina-switch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.io.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.io.close()
        if self.pipeline.trace is not None:
            self.pipeline.trace.close()

    @property
    def handled(self) -> int:
        """Packets received and fully handled (outputs sent) so far."""
        return self.io.rx_packets


def format_counters(pipeline: Pipeline) -> str:
    """The decisions counter as a small table (non-zero rows)."""
    rows = [(d.name, int(pipeline.counters_packets[d]), int(pipeline.counters_bytes[d]))
            for d in Decision if pipeline.counters_packets[d]]
    if not rows:
        return "decisions: no packets"
    total = sum(r[1] for r in rows)
    lines = [f"{'decision':<20}{'packets':>12}{'bytes':>16}"]
    lines += [f"{name:<20}{p:>12}{b:>16}" for name, p, b in rows]
    lines.append(f"{'total':<20}{total:>12}{sum(r[2] for r in rows):>16}")
    return "\n".join(lines)


def job_from_dict(d: dict) -> JobSpec:
    """A JobSpec from JSON-style fields (encoding as "NAT8"/"INT32" or its number)."""
    spec = JobSpec.from_dict(d)
    spec.validate()
    return spec


def load_jobs(path: str | Path) -> list[JobSpec]:
    """Jobs to install at start: a JSON list of JobSpec field dicts."""
    try:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):
            data = [data]
        jobs = [job_from_dict(d) for d in data]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"cannot load jobs from {path}: {e}") from None
    for i, spec in enumerate(jobs):   # the check Pipeline.install_job makes, before starting
        why = slots_overlap(spec, jobs[:i])
        if why is not None:
            raise ValueError(f"cannot load jobs from {path}: {why}")
    return jobs


def run_switch(mode: str, listen: tuple[str, int] | None = None, ifaces: list[str] = (),
               trace_path: str | None = None, pool_slots: int | None = None,
               seed: int | None = None, grpc_addr: str | None = None,
               jobs: list[JobSpec] = (), socket_buffer: int | None = None,
               raw_io: str = "ring", ring_mib: int | None = None, tx_segments: int = 1,
               rx_gso: bool = False, out=sys.stdout) -> int:
    """`nina switch`: serve until SIGINT/SIGTERM; returns the exit code."""
    from nina import p4spec
    from switch.trace_sink import TraceSink

    pool = pool_slots or p4spec.POOL_SLOTS
    p4rt_start = None
    if grpc_addr:
        try:
            from switch.p4runtime_server import serve_p4runtime
        except ImportError as e:
            if getattr(e, "name", None) == "switch.p4runtime_server":
                why = "switch/p4runtime_server.py (the embedded P4Runtime server) is missing"
            else:
                why = f"the embedded P4Runtime server cannot be imported ({e})"
            print(f"nina switch: error: --grpc unavailable: {why}", file=sys.stderr)
            return 2
        p4rt_start = serve_p4runtime

    if mode == "local":
        from switch.io_udp import SOCKET_BUFFER, UdpIO
        host, port = listen
        io = UdpIO(host, port, socket_buffer or SOCKET_BUFFER)
    else:
        from switch.io_raw import RawIO
        from switch.raw_io_options import DEFAULT_RX_MIB
        io = RawIO(list(ifaces), raw_io, ring_mib or DEFAULT_RX_MIB, tx_segments, rx_gso)

    trace = None
    try:
        if trace_path:
            trace = TraceSink(trace_path)
        pipeline = Pipeline(pool_slots=pool, seed=seed, trace=trace)
        for spec in jobs:
            pipeline.install_job(spec)
        server = SwitchServer(pipeline, io)
        grpc_server = None
        if p4rt_start is not None:
            grpc_server = p4rt_start(pipeline, grpc_addr)
        # Everything built so far lives as long as the switch: keep it out of the cyclic
        # collector, whose full passes over it (~120k objects) would stall the data plane
        # for hundreds of ms while the control plane allocates (a large P4Runtime Read).
        gc.freeze()
    except BaseException:
        io.close()
        if trace is not None:
            trace.close()
        raise

    def on_signal(signum, frame):
        io.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"nina switch: {mode} mode, listening on {io.describe()}; pool {pool} slots; "
          f"trace {trace_path or 'off'}; {len(jobs)} job(s) preinstalled"
          + (f"; UDP batches {io.batching}" if hasattr(io, "batching") else ""),
          file=out, flush=True)
    if grpc_server is not None:
        print(f"nina switch: P4Runtime listening on {getattr(grpc_server, 'addr', grpc_addr)}",
              file=out, flush=True)
    print("nina switch: Ctrl-C stops", file=out, flush=True)
    try:
        server.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if grpc_server is not None and hasattr(grpc_server, "stop"):
            grpc_server.stop(None)
        server.stop()
        print(f"nina switch: stopped after {io.rx_packets} packets in, "
              f"{io.tx_packets} out", file=out)
        if getattr(io, "rx_drops", 0):
            print(f"nina switch: {io.rx_drops} frames dropped by the kernel: receive ring "
                  f"full (a bigger --ring-mib holds longer bursts)", file=out)
        cut, bad = getattr(io, "rx_gso_frames", (0, 0))
        if cut or bad:
            print(f"nina switch: {cut} GSO frames received whole and cut into datagrams"
                  + (f"; {bad} dropped (not IPv4/UDP, or cut short)" if bad else ""), file=out)
        print(format_counters(pipeline), file=out, flush=True)
        if trace is not None:
            lost = f"; {trace.lost} lost ({trace.error})" if trace.lost else ""
            print(f"nina switch: trace of {trace.records - trace.lost} records in {trace_path} "
                  f"(+ .json header){lost}", file=out, flush=True)
    return 0
