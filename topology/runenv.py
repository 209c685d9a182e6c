"""Where a rack keeps its files and what it must clean after a crash.

A rack records every process it starts and every root-namespace interface it owns in one state
file. A rack that starts finds the file of a previous one that crashed and removes exactly
those leftovers (PIDs only while their command line still matches, so a recycled PID is never
killed), nothing else on the machine.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from nina.procs import REPO, is_zombie, stop_pid

STATE_DIR = "/tmp/nina-rack"
STATE_FILE = os.path.join(STATE_DIR, "state.json")


def project_python() -> str:
    """The project's interpreter (absolute), also for processes inside host namespaces."""
    venv = os.path.join(REPO, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def nina_cmd(*args: str) -> list[str]:
    return [project_python(), "-m", "nina.cli", *args]


def default_run_dir() -> str:
    return os.path.join(REPO, "runs", time.strftime("rack-%Y%m%d-%H%M%S"))


def wait_tcp(addr: str, proc: subprocess.Popen | None, timeout: float, what: str,
             log_path: str | None = None) -> None:
    """Wait until something accepts TCP connections at host:port; fail fast if proc dies."""
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on "
                               f"{addr}{_tail(log_path)}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {addr} within {timeout:.0f} s{_tail(log_path)}")


def _tail(path: str | None, lines: int = 8) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        text = f.read().strip().splitlines()[-lines:]
    return (f" (see {path}):\n  " + "\n  ".join(text)) if text else f" (log {path} is empty)"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class RackState:
    """The on-disk record of what the running rack owns (path None: kept in memory only, for
    racks that own no machine-wide names, such as the local one)."""

    def __init__(self, path: str | None = STATE_FILE):
        self.path = path
        self.pids: dict[int, str] = {}     # pid -> command line when recorded
        self.intfs: list[str] = []
        self.run_dir = ""

    def add_pid(self, pid: int, cmd: list[str] | None = None) -> None:
        """Record a process; `cmd` is the argv it was started with (right after a fork its
        /proc cmdline may not show the final program yet)."""
        self.pids[pid] = " ".join(cmd) if cmd else _cmdline(pid)
        self.save()

    def drop_pid(self, pid: int) -> None:
        self.pids.pop(pid, None)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pids": {str(k): v for k, v in self.pids.items()}, "intfs": self.intfs,
                       "run_dir": self.run_dir, "owner": os.getpid()}, f)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        if self.path is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def clean_leftovers(path: str = STATE_FILE, log=print) -> list[str]:
    """Undo what a crashed rack left: its processes and interfaces. Returns what was removed.
    Refuses (RuntimeError) while the rack that wrote the state is still alive."""
    removed: list[str] = []
    try:
        with open(path) as f:
            st = json.load(f)
    except FileNotFoundError:
        return removed
    except (OSError, ValueError):
        os.unlink(path)
        return removed
    owner = int(st.get("owner", 0))
    if owner and owner != os.getpid() and os.path.exists(f"/proc/{owner}") \
            and not is_zombie(owner) and "python" in _cmdline(owner):
        raise RuntimeError(f"another rack is running (pid {owner}); stop it first "
                           f"(its state: {path})")
    for pid_s, cmd in st.get("pids", {}).items():
        pid = int(pid_s)
        if cmd and _cmdline(pid) == cmd:
            stop_pid(pid)
            removed.append(f"pid {pid}")
    for name in st.get("intfs", []):
        if os.path.exists(f"/sys/class/net/{name}"):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    os.unlink(path)
    if removed:
        log(f"removed leftovers of a previous rack: {', '.join(removed)}")
    return removed
