"""Helpers for the fault, fuzz and isolation tests: impaired links, a restartable switch process.

ImpairedLinks: one UDP "link" per worker between the workers and a switch, on loopback. Each
link has a worker-facing socket (the address workers send their updates to) and a
switch-facing socket (the address the switch admits as that worker), and drops, duplicates and
reorders packets in each direction independently, as a lossy cable would. Used through
`LinkedSwitch`, which looks like the `switch` jobs/runner.py's job runners take, so real
worker processes and the real job runner run over the impaired links.

SwitchProcess: `nina switch --mode local` as a real process with its jobs preinstalled from a
JSON file (no P4Runtime needed); it can be killed and restarted on the same address, and its
decision counters are read from what it prints when it stops.
"""
from __future__ import annotations

import heapq
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace

from nina.config import JobSpec
from nina.decisions import Decision
from nina.procs import cpu_seconds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Link:
    def __init__(self, wid: int, worker: tuple[str, int]):
        self.wid = wid
        self.worker = worker                      # the worker's own (registered) address
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # towards the switch
        self.up.bind(("127.0.0.1", 0))
        for s in (self.up,):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.address = self.up.getsockname()


class ImpairedLinks:
    """Per-worker links with independent loss/duplication/reordering in both directions.

    Workers send to `front` (one socket: the links tell workers apart by source address);
    the switch sees link w's switch-facing socket as worker w. Reordering holds a packet for a
    few milliseconds so the packets behind it overtake it.
    """

    def __init__(self, switch_addr: tuple[str, int], loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, seed: int = 0, hold: tuple[float, float] = (0.001, 0.006)):
        self.switch_addr = switch_addr
        self.loss, self.dup, self.reorder, self.hold = loss, dup, reorder, hold
        self.rng = random.Random(seed)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.front.bind(("127.0.0.1", 0))
        self.links: dict[tuple[str, int], _Link] = {}   # worker address -> link
        self._by_up: dict[int, _Link] = {}
        self._heap: list[tuple[float, int, socket.socket, bytes, tuple]] = []
        self._seq = 0
        self.stats = {"up": 0, "down": 0, "dropped": 0, "duplicated": 0, "reordered": 0}
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="impaired-links", daemon=True)
        self._thread.start()

    @property
    def front_addr(self) -> tuple[str, int]:
        return self.front.getsockname()

    def attach(self, wid: int, worker: tuple[str, int]) -> tuple[str, int]:
        """A link for the worker at `worker`; returns the address the switch must admit."""
        with self._lock:
            link = self.links.get(tuple(worker))
            if link is None:
                link = _Link(wid, tuple(worker))
                self.links[link.worker] = link
                self._by_up[link.up.fileno()] = link
            return link.address

    def _emit(self, sock: socket.socket, data: bytes, dst: tuple) -> None:
        """One packet onto an impaired wire: lost, duplicated and/or held back at random."""
        r = self.rng.random
        if r() < self.loss:
            self.stats["dropped"] += 1
            return
        copies = 2 if r() < self.dup else 1
        self.stats["duplicated"] += copies - 1
        for _ in range(copies):
            if r() < self.reorder:
                self.stats["reordered"] += 1
                self._seq += 1
                heapq.heappush(self._heap, (time.monotonic() + self.rng.uniform(*self.hold),
                                            self._seq, sock, data, dst))
            else:
                try:
                    sock.sendto(data, dst)
                except OSError:
                    pass

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                socks = [self.front] + [l.up for l in self.links.values()]
            wait = 0.05
            if self._heap:
                wait = max(0.0, min(wait, self._heap[0][0] - time.monotonic()))
            try:
                ready, _, _ = select.select(socks, [], [], wait)
            except (OSError, ValueError):
                if self._stop:
                    return
                continue
            for s in ready:
                for _ in range(256):
                    try:
                        data, src = s.recvfrom(65536, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    if s is self.front:
                        link = self.links.get(src)
                        if link is None:
                            continue     # not a worker with a link: nothing to carry it
                        self.stats["up"] += 1
                        self._emit(link.up, data, self.switch_addr)
                    else:
                        link = self._by_up[s.fileno()]
                        self.stats["down"] += 1
                        self._emit(self.front, data, link.worker)
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, sock, data, dst = heapq.heappop(self._heap)
                try:
                    sock.sendto(data, dst)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.front.close()
        for l in self.links.values():
            l.up.close()


class LinkedSwitch:
    """A switch (anything with install_job/remove_job/read_counters or a controller) seen
    through ImpairedLinks: workers send to the links, the switch admits the links' sockets."""

    def __init__(self, inner, links: ImpairedLinks):
        self.inner, self.links = inner, links
        self.data_addr = links.front_addr
        # Not named `controller`: the job runners would install through it directly and admit
        # the workers' own addresses instead of the links'.
        self._ctl = getattr(inner, "controller", None)

    def install_job(self, spec: JobSpec) -> list[int] | None:
        workers = []
        for w in spec.workers:
            ip, port = self.links.attach(w.wid, (w.ip, w.udp_port))
            workers.append(replace(w, ip=ip, udp_port=port))
        spec = replace(spec, workers=tuple(workers))
        if self._ctl is not None:
            from switch.handles import JobInstaller
            return JobInstaller(self.inner).install(spec)
        return self.inner.install_job(spec)

    def remove_job(self, job_id: int) -> None:
        if self._ctl is not None:
            self._ctl.remove_job(job_id)
        else:
            self.inner.remove_job(job_id)

    def read_counters(self):
        src = self._ctl or self.inner
        return src.read_counters()

    def died(self) -> str | None:
        return self.inner.died()


def counters_of(switch) -> dict[str, int]:
    """{decision name: packets} of a switch (controller or in-process)."""
    src = getattr(switch, "controller", None) or switch
    return {k: int(v[0]) for k, v in src.read_counters().items()}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_to_json(spec: JobSpec) -> dict:
    d = asdict(spec)
    d["encoding"] = int(spec.encoding)
    return d


_COUNTER_ROW = re.compile(r"^([A-Z_]+)\s+(\d+)\s+(\d+)\s*$")
_STOPPED = re.compile(r"stopped after (\d+) packets in, (\d+) out")


class SwitchProcess:
    """`nina switch --mode local` on a fixed loopback port with preinstalled jobs.

    install_job() (the job runners' hook) writes the jobs file and (re)starts the process, so a
    job whose worker addresses are known only at rendezvous still gets a real switch process.
    """

    def __init__(self, workdir: str, port: int | None = None, seed: int = 0):
        self.workdir = workdir
        self.port = port or free_udp_port()
        self.data_addr = ("127.0.0.1", self.port)
        self.jobs: dict[int, JobSpec] = {}
        self.proc: subprocess.Popen | None = None
        self.seed = seed
        self.starts = 0
        self.last_output = ""
        self.installed = threading.Event()

    @property
    def jobs_path(self) -> str:
        return os.path.join(self.workdir, "jobs.json")

    def start(self, timeout: float = 60.0) -> None:
        with open(self.jobs_path, "w") as f:
            json.dump([spec_to_json(s) for s in self.jobs.values()], f)
        self.starts += 1
        self.log_path = os.path.join(self.workdir, f"switch{self.starts}.log")
        cmd = [sys.executable, "-m", "nina.cli", "switch", "--mode", "local", "--listen",
               f"127.0.0.1:{self.port}", "--seed", str(self.seed + self.starts)]
        if self.jobs:
            cmd += ["--jobs", self.jobs_path]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"switch exited: {open(self.log_path).read()[-800:]}")
            if "Ctrl-C stops" in open(self.log_path).read():
                return
            time.sleep(0.05)
        raise RuntimeError(f"switch did not start within {timeout} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_ticks(self) -> int:
        """CPU time (clock ticks) the switch process has used: it grows only while it works."""
        return round((cpu_seconds(self.proc.pid) or 0.0) * os.sysconf("SC_CLK_TCK"))

    def wait_busy(self, ticks: int = 10, timeout: float = 60.0) -> bool:
        """Wait until the switch has used `ticks` more CPU ticks (it is handling traffic)."""
        start, deadline = self.cpu_ticks(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cpu_ticks() - start >= ticks:
                return True
            time.sleep(0.02)
        return False

    def install_job(self, spec: JobSpec) -> None:
        """Restarts the switch with the job in its jobs file: a fresh switch, whose slots
        start at round 0 (the workers' default)."""
        self.jobs[spec.job_id] = spec
        if self.alive():
            self.stop()
        self.start()
        self.installed.set()

    def remove_job(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)   # takes effect at the next start

    def read_counters(self) -> dict:
        return {}                      # only at stop(): see stop()

    def slot_bitmap(self, spec: JobSpec, slot: int, ver: int) -> int:
        """SwitchHandle's register read: this switch process has no control plane."""
        raise RuntimeError("a switch process started with --jobs has no control plane")

    def died(self) -> str | None:
        return None                    # killed and restarted on purpose: a fault under test

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is printed, all switch state is lost."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> tuple[int, dict[str, int]]:
        """SIGTERM; returns (datagrams the switch handled, {decision: packets})."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        text = open(self.log_path).read()
        self.last_output = text
        m = _STOPPED.search(text)
        rx = int(m.group(1)) if m else -1
        counters = {}
        for line in text[m.end():].splitlines() if m else ():
            r = _COUNTER_ROW.match(line.strip())
            if r and r.group(1) in Decision.__members__:
                counters[r.group(1)] = int(r.group(2))
        return rx, counters


def udp_socket_stats(port: int) -> tuple[int, int] | None:
    """(rx_queue bytes, drops) of the UDP socket bound to 127.0.0.1:port, from /proc."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] == want:
                rxq = int(parts[4].split(":")[1], 16)
                return rxq, int(parts[-1])
    return None


class UdpSwitch:
    """Pipeline + UdpIO in a thread; send() waits until the switch has handled the packet."""

    def __init__(self):
        from switch.io_udp import UdpIO
        from switch.pipeline import Pipeline
        from switch.server import SwitchServer
        self.pipeline = Pipeline(seed=1)
        self.server = SwitchServer(self.pipeline, UdpIO("127.0.0.1", 0)).start()
        self.addr = self.server.io.address
        self.sent = 0

    def send(self, sock: socket.socket, data: bytes) -> None:
        sock.sendto(data, self.addr)
        self.sent += 1
        deadline = time.monotonic() + 5
        while self.server.handled < self.sent:
            assert time.monotonic() < deadline, "switch did not handle the packet"
            time.sleep(0.0005)

    def counter(self, name: str) -> int:
        return int(self.pipeline.counters_packets[Decision[name]])

    def close(self) -> None:
        self.server.stop()
