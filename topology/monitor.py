"""The BMv2 rack's trace monitor: a veth pair and the collector reading it.

BMv2 has no trace file of its own: the P4 program clones a trace record of every packet to a
monitor port. The rack owns that port's veth pair (s1-mon, BMv2's highest port, and nina-mon0 in
the root namespace) and one collector process (topology/trace_capture.py) that turns the
frames arriving on nina-mon0 into <run dir>/switch.trace. start() makes both; stop() ends the
collector (it drains its socket and writes the index) and removes the pair; both are safe to
repeat and to call after a failed start.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from topology.rack import MONITOR_CAPTURE_INTF, MONITOR_SWITCH_INTF
from switch.trace_file import TRACE_NAME, index_path
from nina.procs import REPO, die_with_parent, stop_pid
from topology.runenv import project_python

READY_TIMEOUT = 20.0


class MonitorError(RuntimeError):
    pass


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def remove_intfs() -> list[str]:
    """Delete the monitor pair if it exists (deleting one end removes both)."""
    gone = []
    for name in (MONITOR_SWITCH_INTF, MONITOR_CAPTURE_INTF):
        if os.path.exists(f"/sys/class/net/{name}"):
            _ip("link", "del", name)
            gone.append(name)
    return gone


def _disable_ipv6(name: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:          # a kernel without IPv6 sends no IPv6 either
        pass


class TraceMonitor:
    intfs = (MONITOR_SWITCH_INTF, MONITOR_CAPTURE_INTF)

    def __init__(self, run_dir: str, log=print):
        self.run_dir = run_dir
        self.log = log
        self.trace_path = os.path.join(os.path.abspath(run_dir), TRACE_NAME)
        self.log_path = os.path.join(run_dir, "trace-capture.log")
        self.proc: subprocess.Popen | None = None
        self.cmd: list[str] = []

    @property
    def switch_intf(self) -> str:
        return MONITOR_SWITCH_INTF

    def create_link(self) -> None:
        remove_intfs()
        r = _ip("link", "add", MONITOR_SWITCH_INTF, "type", "veth", "peer", "name",
                MONITOR_CAPTURE_INTF)
        if r.returncode:
            raise MonitorError(f"cannot create the monitor veth pair {MONITOR_SWITCH_INTF}/"
                               f"{MONITOR_CAPTURE_INTF}: {r.stderr.strip()}")
        for name in self.intfs:
            # nothing but the switch's clones may cross the pair: no IPv6 chatter from the kernel
            _disable_ipv6(name)
            r = _ip("link", "set", name, "up")
            if r.returncode:
                raise MonitorError(f"cannot bring {name} up: {r.stderr.strip()}")

    def start_capture(self) -> int:
        """Start the collector; return its PID once its socket is bound."""
        os.makedirs(self.run_dir, exist_ok=True)
        for stale in (self.trace_path, str(index_path(Path(self.trace_path)))):
            if os.path.exists(stale):
                os.unlink(stale)
        self.cmd = [project_python(), "-m", "topology.trace_capture", "--iface",
                    MONITOR_CAPTURE_INTF, "--out", self.trace_path, "--parent", str(os.getpid())]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO,
                                         start_new_session=True, preexec_fn=die_with_parent)
        ready = index_path(Path(self.trace_path))
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise MonitorError(f"the trace collector did not start (see {self.log_path}): "
                                   f"{_tail(self.log_path)}")
            time.sleep(0.05)
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """End the collector (SIGTERM: it drains and writes the index), remove the pair."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    stop_pid(self.proc.pid)
                    self.proc.poll()
            if self.proc.returncode not in (0, None):
                self.log(f"trace collector exited with {self.proc.returncode}: "
                         f"{_tail(self.log_path)}")
            self.proc = None
        remove_intfs()


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
