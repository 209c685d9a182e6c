"""End to end in local mode: NINA's all-reduce beside a loopback echo bound, in the same run.

    python bench/local_allreduce.py [--workers 4] [--size 4194304] [--calls 3]

For INT32, NAT8 and NAT8+C_M, `nina allreduce` (a fresh embedded switch process and
--workers worker processes on loopback, every result checked exactly) all-reduces --size
elements --calls times; the time of a call is its slowest worker's, the first call (warm-up)
is not counted, the median of the rest is. The bound beside it: the same number of worker
processes and one echo process (bench/switch.py's reflector: the switch's batched I/O loop
answering every packet at once, no aggregation), each worker sending the same number of
packets of the same size as its NINA run did, with the same window in flight, through the
same batched socket calls (nina.mmsg), the echo answering with the same number and size of
result packets. What is left between the two is the cost of the switch's and the workers'
work, not of the packets. Progress goes to stderr, the table to stdout.

Both sides move packets as the project does on loopback (nina.udp_batch: UDP_SEGMENT sends of
a window, UDP_GRO receives); the same NINA run and echo bound with NINA_UDP_IO=mmsg
(recvmmsg/sendmmsg, one datagram per send: the I/O before GRO/GSO) run beside them, so the
table shows what the batching gains end to end.
"""
from __future__ import annotations

import argparse
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout

import numpy as np  # noqa: E402

from nina.config import DEFAULT_WINDOW  # noqa: E402
from nina.wire import FLAG_CM, HEADER_LEN, Encoding, MsgType, payload_layout, result_parts  # noqa: E402,E501

METHODS = (("INT32", Encoding.INT32, False), ("NAT8", Encoding.NAT8, False),
           ("NAT8+C_M", Encoding.NAT8, True))
UPDATE_BYTES = HEADER_LEN + 256


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


IO_MODES = ("gso", "mmsg")   # NINA_UDP_IO of every process of a run


def _env(io: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), NINA_UDP_IO=io)


def run_nina(workers: int, size: int, calls: int, enc: Encoding, cm: bool, out: Path,
             io: str) -> tuple[float, int]:
    """(median seconds per call after the first, packets up per worker per call)."""
    cmd = [sys.executable, "-m", "nina.cli", "allreduce", "--workers", str(workers), "--size",
           str(size), "--calls", str(calls), "--encoding", enc.name.lower(), "--out", str(out)]
    if cm:
        cmd.append("--cm")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(io))
    if p.returncode != 0 or "EXACT" not in p.stdout:
        raise RuntimeError(f"nina allreduce failed:\n{p.stdout}\n{p.stderr}")
    per_call: dict[int, float] = {}
    packets = []
    for line in p.stdout.splitlines():
        m = re.match(r"\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+\d+\s+\d+\s+([\d.]+)",
                     line)
        if m:
            call, up, ms = int(m.group(2)), int(m.group(3)), float(m.group(5))
            per_call[call] = max(per_call.get(call, 0.0), ms / 1e3)
            packets.append(up)
    times = [t for c, t in sorted(per_call.items()) if c > 0] or list(per_call.values())
    return statistics.median(times), min(packets)


def echo_worker(addr: str, packets: int, window: int, replies: int) -> int:
    """One echo-bound worker: `packets` updates, `window` in flight, batched sends/receives;
    prints its seconds once every reply is in. Waits for a line on stdin to start."""
    import socket

    from nina.mmsg import MSG_DONTWAIT
    from nina.udp_batch import BatchRx, BatchTx
    from worker.transport import RX_BATCH, RX_BUFFERS
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    fd = s.fileno()
    ip = int.from_bytes(socket.inet_aton(host), "big")
    rows = np.zeros((window, UPDATE_BYTES), np.uint8)
    rows[:, 0] = 1
    # the client's batched I/O (worker.transport: a window per send, GRO receives)
    tx, rx = BatchTx(s, RX_BATCH), BatchRx(s, RX_BATCH, 2048, msgs=RX_BUFFERS)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    sent = min(window, packets)
    tx.send_rows(rows, UPDATE_BYTES, sent, ip, int(port))
    got = 0
    need = packets * replies
    while got < need:
        if not rx.pending and not poller.poll(2000):
            print(f"lost {need - got}", flush=True)
            return 1
        m = rx.more() if rx.pending else rx.recv(MSG_DONTWAIT)
        got += m
        more = min(packets - sent, (got // replies) + window - sent)
        if more > 0:
            tx.send_rows(rows, UPDATE_BYTES, more, ip, int(port))
            sent += more
    print(f"{time.perf_counter() - t0:.6f}", flush=True)
    return 0


def run_echo(workers: int, packets: int, window: int, enc: Encoding, cm: bool, io: str) -> \
        float:
    flags = FLAG_CM if cm else 0
    replies = result_parts(enc, flags)
    reply = HEADER_LEN + payload_layout(MsgType.RESULT, enc, flags).nbytes
    echo = subprocess.Popen([sys.executable, str(REPO / "bench" / "switch.py"),
                             "--serve-reflector", "--reply-bytes", str(reply), "--replies",
                             str(replies)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=_env(io))
    procs = []
    try:
        line = echo.stdout.readline()
        addr = line.split("listening on udp ")[1].split(";")[0].strip()
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--echo-worker", addr, "--packets", str(packets),
                 "--window", str(window), "--replies", str(replies)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                env=_env(io)))
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        times = []
        for p in procs:
            out = p.stdout.readline().strip()
            p.wait(timeout=60)
            if out.startswith("lost"):
                raise RuntimeError(f"echo bound: a worker {out} replies")
            times.append(float(out))
        return max(times)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        echo.send_signal(2)
        try:
            echo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            echo.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    ap.add_argument("--size", type=int, default=4194304, help="elements per tensor (4194304)")
    ap.add_argument("--calls", type=int, default=3, help="all-reduces; the first is warm-up (3)")
    ap.add_argument("--repeat", type=int, default=3, help="echo-bound runs, best kept (3)")
    ap.add_argument("--echo-worker", metavar="ADDR", help=argparse.SUPPRESS)
    ap.add_argument("--packets", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW, help=argparse.SUPPRESS)
    ap.add_argument("--replies", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_worker:
        return echo_worker(args.echo_worker, args.packets, args.window, args.replies)
    if not 1 <= args.workers <= 32 or args.size < 1 or args.calls < 1 or args.repeat < 1:
        ap.error("--workers must be in 1..32; --size, --calls and --repeat at least 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ninabench") as tmp:
        for name, enc, cm in METHODS:
            r = {}
            for io in IO_MODES:
                log(f"{name} ({io}): nina allreduce, {args.workers} workers x {args.size} "
                    f"elements")
                t, packets = run_nina(args.workers, args.size, args.calls, enc, cm,
                                      Path(tmp) / f"{name}-{io}", io)
                log(f"{name} ({io}): echo bound, {packets} packets per worker")
                bound = min(run_echo(args.workers, packets, DEFAULT_WINDOW, enc, cm, io)
                            for _ in range(args.repeat))
                r[io] = (t, bound)
            rows.append((name, packets, r))
    print(f"local mode, {args.workers} workers x {args.size} elements, window {DEFAULT_WINDOW}; "
          f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    hdr = (f"{'method':<10}{'packets/worker':>15}{'NINA ms':>10}{'echo ms':>10}"
           f"{'NINA/echo':>11}{'mmsg NINA':>11}{'mmsg echo':>11}{'NINA/echo':>11}"
           f"{'x mmsg':>8}")
    print(hdr)
    print("-" * len(hdr))
    for name, packets, r in rows:
        (t, bound), (tm, bm) = r["gso"], r["mmsg"]
        print(f"{name:<10}{packets:>15}{t * 1e3:>10.1f}{bound * 1e3:>10.1f}{t / bound:>10.1f}x"
              f"{tm * 1e3:>11.1f}{bm * 1e3:>11.1f}{tm / bm:>10.1f}x{tm / t:>7.1f}x")
    print("NINA ms: median over calls 2.. of the slowest worker's call time (nina allreduce, "
          "exact check passed); echo ms:\nthe same packets per worker, window and batched "
          "socket calls against an echo process (best of --repeat);\nboth with UDP_GRO/"
          "UDP_SEGMENT batches (nina.udp_batch); mmsg: the same with NINA_UDP_IO=mmsg "
          "(recvmmsg/sendmmsg,\none datagram per send), same run; x mmsg: mmsg NINA ms over "
          "NINA ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
