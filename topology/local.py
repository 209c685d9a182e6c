"""The rack without root: the embedded switch as a process on loopback (UDP data plane, gRPC
P4Runtime) and the workers and coordinator as plain processes on 127.0.0.1.

No links, so no bandwidth/delay/loss on them; the switch's own loss simulator (a job's `loss`)
still drops updates. Same interface as the Mininet rack, so the same prompt and jobs run on it.
The switch writes its trace to <run dir>/switch.trace; with pcap, and where tcpdump can capture
(root), the switch's loopback traffic goes to <run dir>/pcap/lo.pcap (one "port": loopback).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

from topology.rackbase import RackBase, RackController, RackError
from nina.procs import REPO
from topology.runenv import RackState, default_run_dir


class LocalRack(RackBase):
    mode = "local"

    def __init__(self, n_workers: int = 4, run_dir: str | None = None, log=print,
                 trace: bool = True, pcap: bool = False):
        super().__init__(n_workers, run_dir or default_run_dir(), log)
        self.state = RackState(path=None)    # nothing machine-wide: local racks may coexist
        self.switch = None
        self.trace = trace
        self.pcap = pcap
        self.pcap_paths: list[str] = []
        self._capture: subprocess.Popen | None = None
        self._stopped = False

    def worker_ip(self, wid: int) -> str:
        return "127.0.0.1"

    def _spawn(self, node: str, cmd: list[str], log) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO)

    def switch_alive(self) -> bool:
        return self.switch is not None and self.switch.alive()

    def start(self) -> None:
        from nina.jobmsg import JobAborted
        from switch.handles import LocalSwitch
        self._install_signals()
        os.makedirs(self.run_dir, exist_ok=True)
        t0 = time.monotonic()
        self.log(f"starting a local rack: {self.n_workers} worker processes on loopback, "
                 f"embedded switch process; run dir {self.run_dir}")
        from switch.trace_file import TRACE_NAME
        trace = os.path.join(os.path.abspath(self.run_dir), TRACE_NAME) if self.trace else None
        try:
            self.switch = LocalSwitch(self.run_dir, log=self.log, trace_path=trace)
        except JobAborted as e:
            raise RackError(str(e)) from None
        self.controller = RackController(self.switch.controller)
        self.data_addr = self.switch.data_addr
        if self.pcap:
            self._start_capture()
        self.log(f"rack up in {time.monotonic() - t0:.1f} s: switch pid {self.switch.proc.pid}"
                 f", P4Runtime {self.switch.grpc_addr}, data plane "
                 f"{self.data_addr[0]}:{self.data_addr[1]}")

    def _start_capture(self) -> None:
        """tcpdump of the switch's UDP port on loopback, when this machine lets us."""
        if shutil.which("tcpdump") is None or os.geteuid() != 0:
            self.log("local mode: no pcap (capturing loopback needs tcpdump and root)")
            return
        path = os.path.join(self.run_dir, "pcap", "lo.pcap")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cmd = ["tcpdump", "-Z", "root", "-i", "lo", "-U", "-n", "-s", "2048", "-w", path,
               "udp", "port", str(self.data_addr[1])]
        # The controller's gRPC threads are running: no preexec_fn (Python code between fork
        # and exec can hang there). setpriv gives tcpdump the die-with-us signal instead.
        if shutil.which("setpriv"):
            cmd = ["setpriv", "--pdeathsig", "TERM", "--"] + cmd
        log_path = os.path.join(self.run_dir, "tcpdump-lo.log")
        with open(log_path, "w") as log:
            self._capture = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        deadline = time.monotonic() + 10      # tcpdump writes the file header once it listens
        while time.monotonic() < deadline and not (os.path.exists(path)
                                                    and os.path.getsize(path) >= 24):
            if self._capture.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(path):
            self.log(f"local mode: tcpdump did not start a capture (see {log_path})")
        self.pcap_paths = [path]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._reap_all()
        if self._capture is not None:
            from nina.procs import stop_pid
            stop_pid(self._capture.pid)
            self._capture = None
        if self.switch is not None:
            self.switch.stop()       # closes its controller too
            self.switch = None
        self.controller = None
        self._restore_signals()

    def hosts_text(self) -> str:
        rows = [f"{'node':5} {'where'}"]
        rows += [f"h{w + 1:<4} worker {w}: a process on 127.0.0.1" for w in range(self.n_workers)]
        rows.append("hc    the coordinator: in the rack process, 127.0.0.1")
        if self.switch is not None:
            rows.append(f"s1    embedded switch pid {self.switch.proc.pid}, UDP "
                        f"{self.data_addr[0]}:{self.data_addr[1]}, P4Runtime "
                        f"{self.switch.grpc_addr}")
        return "\n".join(rows)

    def pingall(self, timeout: float = 1.0) -> tuple[int, int]:
        return 0, 0                  # nothing to ping: every node is on loopback


__all__ = ["LocalRack", "RackError"]
