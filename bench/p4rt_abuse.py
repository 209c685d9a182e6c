"""Data-plane latency of the embedded switch while its P4Runtime server is abused.

    python bench/p4rt_abuse.py [--packets 3000] [--streams 24]

A real `nina switch --mode local --grpc` process (data plane and P4Runtime server share it, as
deployed) serves a one-worker INT32 job: every update completes its slot at once and the
result comes back, so one closed-loop UDP client measures the round-trip time of each packet.
Four phases, each --packets updates, in one run:

  baseline   nothing else happening (the bound the others are held against)
  big read   the largest legal register read (MAX_READ_CELLS cells), in a loop
  wildcard   wildcard register reads (every register: refused), in a loop
  streams    --streams idle StreamChannels held open, and reads of every table entry

The loads run in another process, so only the switch shares them, not the measuring client.

The table gives p50 / p99 / max RTT per phase and p50, p99 as ratios to the baseline, the
control-plane requests answered meanwhile, and the switch's peak RSS (VmHWM) at the end.
"""
from __future__ import annotations

import argparse
import queue
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from p4.v1 import p4runtime_pb2_grpc  # noqa: E402

from nina.config import JobSpec, WorkerAddr  # noqa: E402
from nina.procs import free_port, memory_bytes  # noqa: E402
from nina.wire import Encoding, Header, MsgType, pack_packet, round_flags  # noqa: E402

P4INFO = REPO / "p4" / "build" / "nina.p4info.txtpb"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vm_hwm(pid: int) -> float:
    """Peak resident set of a process, MiB (NaN once it is gone)."""
    return memory_bytes(pid).get("peak", float("nan")) / (1 << 20)


def register_ids() -> dict[str, int]:
    from google.protobuf import text_format
    from p4.config.v1 import p4info_pb2
    info = text_format.Parse(P4INFO.read_text(), p4info_pb2.P4Info(), allow_unknown_field=True)
    return {r.preamble.name: r.preamble.id for r in info.registers}


def rtts(sock: socket.socket, switch: tuple[str, int], n: int, slots: int,
         rnd: list[int]) -> np.ndarray:
    """n closed-loop updates of worker 0 (job 1, one worker): RTT of each, in ms."""
    out = np.empty(n)
    for i in range(n):
        slot = i % slots
        pkt = pack_packet(Header(msg_type=MsgType.UPDATE, encoding=Encoding.INT32,
                                 flags=round_flags(rnd[slot]), job=1, worker=0, exponent=120,
                                 slot=slot, count=64), np.ones(64, np.int32))
        t0 = time.perf_counter()
        sock.sendto(pkt, switch)
        sock.recvfrom(65536)
        out[i] = (time.perf_counter() - t0) * 1e3
        rnd[slot] = (rnd[slot] + 1) % 128
    return out


def _load_loop(addr: str, kind: str, stop, counts) -> None:
    """In its own process (its protobuf work must not share the measuring client's GIL):
    send `kind` requests until `stop`; counts[0] answered, counts[1] refused."""
    sys.path.insert(0, str(REPO))
    import grpc
    from p4.v1 import p4runtime_pb2 as p4rt
    from p4.v1 import p4runtime_pb2_grpc
    from nina import p4spec
    ch = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 1 << 28)])
    stub = p4runtime_pb2_grpc.P4RuntimeStub(ch)
    req = p4rt.ReadRequest(device_id=0)
    if kind == "big":
        req.entities.add().register_entry.register_id = register_ids()[p4spec.REG_COUNT]
    elif kind == "wildcard":
        req.entities.add().register_entry.SetInParent()
    else:   # what the controller reads for `show_jobs`: every table entry
        req.entities.add().table_entry.SetInParent()
    while not stop.is_set():
        try:
            for _ in stub.Read(req, timeout=120):
                pass
            counts[0] += 1
        except grpc.RpcError:
            counts[1] += 1
    ch.close()


class Load:
    """A control-plane load from another process; counts the requests it got answered."""

    def __init__(self, addr: str, kind: str):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.stop, self.counts = ctx.Event(), ctx.Array("i", 2)
        self.proc = ctx.Process(target=_load_loop, args=(addr, kind, self.stop, self.counts))

    def __enter__(self):
        self.proc.start()
        deadline = time.monotonic() + 120
        while self.counts[0] + self.counts[1] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)   # measure only once the load is running (one request done)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.proc.join(120)
        self.answered, self.refused = self.counts[0], self.counts[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=3000)
    ap.add_argument("--streams", type=int, default=24)
    args = ap.parse_args()
    from switch.controller import Controller
    from switch.p4runtime_server import MAX_READ_CELLS
    udp, grpc_port = free_port(socket.SOCK_DGRAM), free_port()
    grpc_addr = f"127.0.0.1:{grpc_port}"
    proc = subprocess.Popen([sys.executable, "-m", "nina.cli", "switch", "--mode", "local",
                             "--listen", f"127.0.0.1:{udp}", "--grpc", grpc_addr],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    rows = []
    closers = []
    try:
        time.sleep(1.5)
        ctl = Controller(grpc_addr, str(P4INFO), None, connect_timeout=30)
        slots = 32
        spec = JobSpec(1, 1, Encoding.INT32, slot_count=slots,
                       workers=(WorkerAddr(0, *sock.getsockname()),))
        rnd = list(ctl.install_job(spec))

        switch = ("127.0.0.1", udp)
        rtts(sock, switch, 300, slots, rnd)   # warm up
        log("baseline")
        rows.append(("baseline", rtts(sock, switch, args.packets, slots, rnd), "", ""))
        log("big read")
        with Load(grpc_addr, "big") as ld:
            r = rtts(sock, switch, args.packets, slots, rnd)
        rows.append((f"big read ({MAX_READ_CELLS} cells)", r, ld.answered, ld.refused))
        log("wildcard")
        with Load(grpc_addr, "wildcard") as ld:
            r = rtts(sock, switch, args.packets, slots, rnd)
        rows.append(("wildcard read (refused)", r, ld.answered, ld.refused))
        log("streams")
        stop = queue.Queue()

        def silent():
            stop.get()
            return
            yield  # noqa: unreachable

        chans = [grpc.insecure_channel(grpc_addr) for _ in range(args.streams)]
        calls = [p4runtime_pb2_grpc.P4RuntimeStub(c).StreamChannel(silent()) for c in chans]
        closers.append(lambda: [stop.put(None) for _ in calls] and None)
        closers.append(lambda: [c.cancel() for c in calls] and None)
        closers.append(lambda: [c.close() for c in chans] and None)
        time.sleep(0.5)
        with Load(grpc_addr, "tables") as ld:
            r = rtts(sock, switch, args.packets, slots, rnd)
        rows.append((f"{args.streams} idle streams + table reads", r, ld.answered,
                     ld.refused))
        hwm = vm_hwm(proc.pid)
        ctl.close()
    finally:
        for c in closers:
            c()
        sock.close()
        proc.terminate()
        proc.wait(10)
    base = rows[0][1]
    b50, b99 = np.percentile(base, 50), np.percentile(base, 99)
    print(f"embedded switch data plane RTT (ms, one-worker INT32 job, closed loop, "
          f"{args.packets} updates per phase) while P4Runtime is loaded")
    print(f"{'phase':<30}{'p50':>8}{'p99':>8}{'max':>8}{'p50/base':>10}{'p99/base':>10}"
          f"{'ctl answered':>14}{'refused':>9}")
    for name, r, ans, ref in rows:
        p50, p99 = np.percentile(r, 50), np.percentile(r, 99)
        print(f"{name:<30}{p50:>8.3f}{p99:>8.3f}{r.max():>8.2f}{p50 / b50:>10.2f}"
              f"{p99 / b99:>10.2f}{ans!s:>14}{ref!s:>9}")
    print(f"switch peak RSS (VmHWM) at the end: {hwm:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
