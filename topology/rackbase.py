"""What every rack offers, whatever runs it (Mininet namespaces or loopback processes).

A rack owns a switch process and a Controller connected to it over P4Runtime, and it looks
like the SwitchHandle (switch/handles.py) that the job runner takes, plus a
`spawn_worker` that starts a worker process on the right host and a `coordinator_factory` that
puts the job coordinator where the workers can reach it. Every process it starts is recorded
(topology/runenv.py) and ended at teardown at the latest.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

from nina.config import DEFAULT_WINDOW
from switch.handles import ControlledSwitch
from nina.procs import stop_pid
from topology.runenv import RackState, project_python


class RackError(RuntimeError):
    """A rack could not start or lost a part; the message is for the user."""


class RackController:
    """The switch's Controller as the rack hands it to job runners: install_job first completes
    the spec for the rack (`complete`) and remembers it, so the rack can still find a job's
    slots after the job is gone (the `slot` command)."""

    def __init__(self, ctl, complete=None):
        self._ctl = ctl
        self._complete = complete
        self.installed: dict[int, object] = {}       # job id -> last JobSpec installed

    def install_job(self, spec) -> list[int]:
        if self._complete is not None:
            spec = self._complete(spec)
        firsts = self._ctl.install_job(spec)
        self.installed[spec.job_id] = spec
        if self.on_install is not None:
            self.on_install()
        return firsts

    on_install = None      # called after every install (the rack republishes its record)

    def __getattr__(self, name):
        return getattr(self._ctl, name)


class RackBase(ControlledSwitch):
    """A rack is a SwitchHandle (its switch, driven through its RackController) that also
    starts worker processes on its hosts."""

    mode = "?"

    def __init__(self, n_workers: int, run_dir: str, log=print):
        self.n_workers = n_workers
        self.run_dir = run_dir
        self.log = log
        self.controller = None
        self.state = RackState()
        self.state.run_dir = run_dir
        self._procs: dict[int, subprocess.Popen] = {}
        self._next_job = 1
        self._old_handlers: dict[int, object] = {}

    # -- to provide in a subclass --
    data_addr: tuple[str, int] = ("", 0)           # where workers send their updates
    coord_ip: str = "127.0.0.1"
    default_window: int = DEFAULT_WINDOW           # slots in flight per worker, unless asked

    def worker_node(self, wid: int) -> str:
        return f"h{wid + 1}"

    def worker_ip(self, wid: int) -> str:
        raise NotImplementedError

    def worker_udp_port(self, wid: int) -> int:
        return 0

    def _spawn(self, node: str, cmd: list[str], log) -> subprocess.Popen:
        raise NotImplementedError

    def switch_alive(self) -> bool:
        raise NotImplementedError

    def coordinator_factory(self):
        """How the job runner creates each job's coordinator on this rack."""
        from jobs.coordinator import Coordinator
        return Coordinator

    def store_context(self):
        """The runner opens its sockets towards the hosts (a torch job's c10d store client)
        inside this context (on Mininet: the coordinator host's namespace)."""
        return contextlib.nullcontext()

    def host_ifname(self, wid: int) -> str:
        """The interface worker `wid` reaches the other hosts through (Gloo binds to it)."""
        return "lo"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # -- shared --
    def next_job_id(self) -> int:
        job_id = self._next_job
        self._next_job += 1
        return job_id

    def popen(self, node: str, cmd: list[str], log_path: str) -> subprocess.Popen:
        """Start `cmd` on a node with output to log_path; recorded, ended at teardown."""
        with open(log_path, "w") as log:
            p = self._spawn(node, cmd, log)
        self._procs[p.pid] = p
        self.state.add_pid(p.pid, cmd)
        return p

    def spawn_worker(self, endpoint: str, wid: int, log_path: str) -> subprocess.Popen:
        """the job runner's `spawn`: a worker process on host h<wid+1> joining `endpoint`."""
        cmd = [project_python(), "-m", "worker.worker_proc", "--coord", endpoint,
               "--ip", self.worker_ip(wid), "--udp-port", str(self.worker_udp_port(wid)),
               "--rank", str(wid)]
        return self.popen(self.worker_node(wid), cmd, log_path)

    def reap(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            stop_pid(p.pid)
        p.poll()
        self._procs.pop(p.pid, None)
        self.state.drop_pid(p.pid)

    def reap_finished(self) -> None:
        for p in list(self._procs.values()):
            if p.poll() is not None:
                self.reap(p)

    def _reap_all(self) -> None:
        for p in list(self._procs.values()):
            self.reap(p)

    # -- signals: SIGTERM/SIGHUP end the rack through the same teardown as an exception --
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def bail(signum, _frame):
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, bail)

    def _restore_signals(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers.clear()

    def __enter__(self):
        try:
            self.start()
            self.publish()
        except BaseException:
            self._unpublish_and_stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._unpublish_and_stop()

    def _unpublish_and_stop(self) -> None:
        from nina import rackinfo
        rackinfo.unpublish()
        self.stop()

    def switch_grpc_addr(self) -> str:
        """The switch's P4Runtime address (subclasses keep it on themselves or their switch)."""
        sw = getattr(self, "switch", None)
        return self.__dict__.get("grpc_addr") or getattr(sw, "grpc_addr", "") or ""

    def publish(self) -> None:
        """Tell `nina ctl` (and people) where this rack's switch is: nina/rackinfo.py."""
        from dataclasses import asdict
        from nina import rackinfo
        ctl = self.controller
        jobs = {}
        for jid, spec in getattr(ctl, "installed", {}).items():
            d = asdict(spec)
            jobs[str(jid)] = {k: d[k] for k in ("slot_base", "slot_count", "cm", "n_workers")}
            jobs[str(jid)]["encoding"] = spec.encoding.name
        rackinfo.publish({"mode": self.mode, "run_dir": os.path.abspath(self.run_dir),
                          "grpc": self.switch_grpc_addr(), "data": list(self.data_addr),
                          "election_id": list(rackinfo.OWNER_ELECTION_ID),
                          "workers": self.n_workers, "jobs": jobs,
                          "started": getattr(self, "_published_at", None) or time.time()})
        if getattr(self, "_published_at", None) is None:
            self.log(f"switch P4Runtime at {self.switch_grpc_addr()} (recorded in "
                     f"{os.path.join(self.run_dir, rackinfo.RECORD_NAME)}; `nina ctl` finds "
                     f"this rack by itself)")
        self._published_at = getattr(self, "_published_at", None) or time.time()
        if ctl is not None and hasattr(ctl, "installed"):
            ctl.on_install = self.publish

    def job_dir(self, kind: str, job_id: int) -> str:
        d = os.path.join(self.run_dir, f"{kind}-{job_id}")
        os.makedirs(d, exist_ok=True)
        return d
