"""The launcher owns its switch process (issue 16, items 6-7): a switch that dies mid-job is
reported as the switch, with how it ended (not as workers that did not contribute), and a
launcher killed with SIGKILL takes its switch with it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nina.wire import Encoding

REPO = Path(__file__).resolve().parents[1]
QUIET = lambda *a, **k: None  # noqa: E731


def _local_switch(tmp_path):
    from switch.handles import LocalSwitch, local_switch_unavailable
    why = local_switch_unavailable()
    if why:
        pytest.skip(why)
    return LocalSwitch(str(tmp_path / "switch"), log=QUIET)


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:   # a zombie child of ours counts as gone
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def test_a_killed_switch_is_reported_as_the_switch_with_its_exit_status(tmp_path, capfd):
    from jobs.runner import run_allreduce
    from nina.jobmsg import JobAborted
    sw = _local_switch(tmp_path)
    out: dict = {}

    def job():
        try:
            run_allreduce(2, sw, size=50_000, encoding=Encoding.NAT8, calls=2000,
                          run_dir=str(tmp_path / "job"), timeout=30.0, log=QUIET)
            out["error"] = None
        except JobAborted as e:
            out["error"] = str(e)

    th = threading.Thread(target=job)
    try:
        th.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and \
                sw.controller.read_counters()["COMPLETE"][0] < 50:
            time.sleep(0.1)
        t_kill = time.monotonic()
        os.kill(sw.proc.pid, signal.SIGKILL)
        th.join(60)
        assert not th.is_alive()
        took = time.monotonic() - t_kill
    finally:
        sw.stop()
    err = out["error"]
    assert err is not None and err.startswith(
        f"the switch process (pid {sw.proc.pid}) was killed by signal 9 (SIGKILL)"), err
    assert "did not contribute" not in err and "Connection refused" not in err
    assert took < 25, f"noticed after {took:.1f} s (the slot timeout is 30 s)"
    assert "CRITICAL" not in capfd.readouterr().err


def test_switch_of_a_launcher_killed_with_sigkill_goes_too(tmp_path):
    code = ("import sys, time\n"
            "from switch.handles import LocalSwitch\n"
            f"sw = LocalSwitch({str(tmp_path / 'sw')!r}, log=lambda *a: None)\n"
            "print(sw.proc.pid, flush=True)\n"
            "time.sleep(120)\n")
    from switch.handles import local_switch_unavailable
    if local_switch_unavailable():
        pytest.skip(local_switch_unavailable())
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        pid = int(launcher.stdout.readline())
        launcher.kill()
        launcher.wait(10)
        assert _gone(pid, 10), f"switch pid {pid} outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.stdout.close()
