"""What the two switch benches share (bench/switch.py on loopback, bench/switch_ifaces.py on
veth interfaces): the server under test as a process, the sequence of updates that loads it,
and the CPU clock of its loop."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nina.procs import memory_bytes
from nina.wire import CAPACITY, ROUND_MOD, Encoding, Header, headroom_shift, pack_packet, round_flags

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)



class Server:
    def __init__(self, cmd: list[str], cwd: Path = REPO, io: str = "gso",
                 ready: str = "listening on udp"):
        env = dict(os.environ, PYTHONPATH=str(cwd), NINA_UDP_IO=io)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=cwd, env=env)
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if ready in line or not line:
                break
        if ready not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.addr = None
        self.batching = None
        if "listening on udp " not in line:
            return   # interface mode (bench/switch_ifaces.py): no UDP address
        hostport = line.split("listening on udp ")[1].split(";")[0].strip()
        host, port = hostport.rsplit(":", 1)
        self.addr = (host, int(port))
        self.batching = line.split("UDP batches ")[1].split()[0] if "UDP batches" in line \
            else "recvmmsg/sendmmsg"   # a --before checkout from before GRO/GSO
        if io == "gso" and self.batching != "gro/gso":
            log(f"{cmd[-1]}: the kernel refused GRO/GSO, this server runs {self.batching}")

    def peak_rss_mib(self) -> float:
        return memory_bytes(self.proc.pid).get("peak", float("nan")) / (1 << 20)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out



def make_sequence(n: int, enc: Encoding, window: int, packets: int) -> list[tuple[int, bytes]]:
    """(worker, update) for whole rounds over `window` slots; a multiple of ROUND_MOD rounds,
    so the sequence can be replayed (round numbers wrap around and keep succeeding)."""
    rng = np.random.default_rng(1)
    cap = CAPACITY[enc]
    m = 1 << headroom_shift(n)
    rounds = max(1, -(-packets // (window * n * ROUND_MOD))) * ROUND_MOD
    vals = {}
    for w in range(n):
        for slot in range(window):
            for ver in (0, 1):
                vals[w, slot, ver] = rng.integers(0, 256, cap).astype(np.uint8) \
                    if enc == Encoding.NAT8 else rng.integers(-m, m + 1, cap).astype(np.int32)
    return [(w, pack_packet(Header(job=1, worker=w, encoding=enc, flags=round_flags(r),
                                   slot=slot, count=cap, exponent=120, offset=slot * cap),
                            vals[w, slot, r % 2]))
            for r in range(rounds) for slot in range(window) for w in range(n)]



def cpu_ns(pid: int) -> int:
    """CPU time of all the process's threads (the server loop, the trace writer, the
    P4Runtime server), in ns: schedstat is exact where /proc/PID/stat counts ticks."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):   # a thread that just ended
            pass
    return total
