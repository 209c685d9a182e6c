"""Process helpers shared by the switch handles, the job runner, the worker and the rack: a free
port, stopping a process we started (by Popen or PID), children that die with their parent, how
a process ended, the tail of a log, the checkout's root, a process's memory and CPU time. One copy of each."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(p: subprocess.Popen, timeout: float = 3.0) -> None:
    """Terminate one process we started (by its pid), killing it if it does not go."""
    if p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout)
    except ProcessLookupError:
        pass


def tail(path: str, lines: int = 6) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.rstrip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def die_with_parent(expected_parent: int | None = None) -> None:
    """preexec_fn / early call: SIGTERM when the process that started us dies (even by
    kill -9), so a crashed launcher or rack leaves no switch, capture or link-delay process
    running. With `expected_parent`, exit at once if that parent is already gone (it died
    before we got here)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if expected_parent and os.getppid() != expected_parent:
        os._exit(0)


def stop_pid(pid: int, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`, one PID (a process we started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:   # not our child: poll for its disappearance
                if not os.path.exists(f"/proc/{pid}") or is_zombie(pid):
                    return
            time.sleep(0.05)


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def how_it_ended(returncode: int) -> str:
    """'was killed by signal 9 (SIGKILL)' / 'exited with code 3' for a Popen returncode."""
    if returncode < 0:
        try:
            name = f" ({signal.Signals(-returncode).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {-returncode}{name}"
    return f"exited with code {returncode}"


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU seconds a process has used (None where /proc does not tell)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_bytes(pid: int | str = "self") -> dict[str, int]:
    """{"rss", "peak"}: a process's resident set now and its peak (VmRSS, VmHWM) in bytes; empty
    where /proc does not tell (not Linux, the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out["rss" if line[2] == "R" else "peak"] = int(line.split()[1]) * 1024
    except OSError:
        return {}
    return out


def reset_peak_memory(pid: int | str = "self") -> bool:
    """Set a process's peak resident set (VmHWM) back to its current one, so the next peak
    measures one piece of work (Linux >= 4.0: clear_refs value 5). False where refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
