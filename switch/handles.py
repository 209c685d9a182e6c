"""Switch handles: the one interface the job runner and the rack use for "a switch".

Every switch-like object (the embedded switch as a process, the pipeline in-process for tests,
a switch someone else started, the rack's switch) implements `SwitchHandle`: where its data
port is, install/remove a job, read counters, read a slot's worker bitmap, stop. Callers never
probe with getattr/hasattr.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Callable, Protocol, runtime_checkable

from nina.config import JobSpec
from nina.jobmsg import JobAborted
from nina.p4build import P4INFO_PATH
from nina.procs import REPO, die_with_parent, free_port, how_it_ended, stop_process, tail
from nina.rackinfo import OWNER_ELECTION_ID




def local_switch_unavailable() -> str | None:
    """Why `nina switch --mode local` cannot run here (None when it can)."""
    import importlib.util
    for mod in ("switch.cli", "switch.pipeline"):
        if importlib.util.find_spec(mod) is None:
            return f"the embedded switch is not available ({mod} missing)"
    if not os.path.exists(P4INFO_PATH):
        return f"P4Info {P4INFO_PATH} is missing (make p4)"
    return None


@runtime_checkable
class SwitchHandle(Protocol):
    """What the job runner and the rack need of a switch, whoever runs it."""

    data_addr: tuple[str, int]          # where workers send their updates

    def install_job(self, spec: JobSpec) -> list[int]:
        """Install `spec`, replacing a job of the same id; JobAborted on failure. Returns the
        first round of each of the job's slots, where its workers start
        (nina.install_rounds)."""

    def remove_job(self, job_id: int) -> None:
        """Remove a job (unknown ids are an error of the switch's own kind)."""

    def read_counters(self) -> dict[str, tuple[int, int]]:
        """Counter name -> (packets, bytes)."""

    def slot_bitmap(self, spec: JobSpec, slot: int, ver: int) -> int:
        """The worker bitmap of one of the job's slots."""

    def died(self) -> str | None:
        """How the switch process ended, when this handle owns one and it is gone (else
        None): a job that fails then reports the switch, not the workers it could not hear."""

    def stop(self) -> None:
        """Release what the handle started (processes, connections)."""


class ControlledSwitch:
    """A SwitchHandle that drives its switch through a P4Runtime Controller (`self.controller`):
    the embedded switch process, a switch someone else runs, a rack's switch."""

    controller = None
    data_addr: tuple[str, int] = ("", 0)

    def install_job(self, spec: JobSpec) -> list[int]:
        from switch.controller import ControllerError
        try:
            if any(j.job_id == spec.job_id for j in self.controller.show_jobs()):
                self.controller.remove_job(spec.job_id)
            return self.controller.install_job(spec)
        except ControllerError as e:
            raise JobAborted(f"installing job {spec.job_id}: {e}") from None

    def remove_job(self, job_id: int) -> None:
        self.controller.remove_job(job_id)

    def read_counters(self) -> dict[str, tuple[int, int]]:
        return self.controller.read_counters()

    def slot_bitmap(self, spec: JobSpec, slot: int, ver: int) -> int:
        return self.controller.read_slot(spec.job_id, slot, ver, n_acc=0)[0].bitmap

    def died(self) -> str | None:
        return None   # a switch someone else runs: not ours to watch

    def close_controller(self) -> None:
        if self.controller is not None:
            # teardown: a failing close must not hide the error being unwound
            with contextlib.suppress(Exception):
                self.controller.close()
            self.controller = None


class LocalSwitch(ControlledSwitch):
    """The embedded switch as a real process on loopback, plus a Controller for its jobs."""

    def __init__(self, log_dir: str, log: Callable[[str], None] = print,
                 start_timeout: float = 60.0, ip: str = "127.0.0.1",
                 trace_path: str | None = None):
        if not os.path.exists(P4INFO_PATH):   # the controller needs it: fail before spawning
            raise JobAborted(f"P4Info {P4INFO_PATH} is missing (make p4)")
        self.ip = ip
        self.udp_port = free_port(socket.SOCK_DGRAM, ip)
        self.grpc_port = free_port(socket.SOCK_STREAM, ip)
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, "switch.log")
        self.log = log
        self.controller = None
        cmd = [sys.executable, "-m", "nina.cli", "switch", "--mode", "local",
               "--listen", f"{ip}:{self.udp_port}", "--grpc", f"{ip}:{self.grpc_port}"]
        self.trace_path = trace_path
        if trace_path:
            cmd += ["--trace", trace_path]
        with open(self.log_path, "w") as f:
            # the switch dies with its launcher, even when the launcher is killed -9
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO,
                                         preexec_fn=die_with_parent)
        try:
            self._wait_grpc(start_timeout)
            self._connect()
        except BaseException:
            self.stop()
            raise

    @property
    def data_addr(self) -> tuple[str, int]:
        return (self.ip, self.udp_port)

    @property
    def grpc_addr(self) -> str:
        return f"{self.ip}:{self.grpc_port}"

    def _wait_grpc(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise JobAborted(f"the switch process exited with code {self.proc.returncode}: "
                                 f"{tail(self.log_path)}")
            try:
                socket.create_connection((self.ip, self.grpc_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise JobAborted(f"the switch did not open its P4Runtime port {self.grpc_addr} within "
                         f"{timeout:.0f} s (log: {self.log_path})")

    def _connect(self) -> None:
        from switch.controller import Controller, ControllerError
        try:
            self.controller = Controller(self.grpc_addr, P4INFO_PATH, None, push="auto",
                                         connect_timeout=15.0,
                                         election_id=OWNER_ELECTION_ID)
        except ControllerError as e:
            raise JobAborted(f"controller: {e}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self) -> str | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        last = tail(self.log_path, 2)
        return (f"the switch process (pid {self.proc.pid}) {how_it_ended(rc)}"
                + (f"; its log ends: {last}" if last else ""))

    def stop(self) -> None:
        self.close_controller()
        stop_process(self.proc)


class InProcessSwitch:
    """A SwitchHandle for tests and checks: the embedded pipeline served from a thread of this
    process, jobs installed directly (no P4Runtime), for machines without the P4Info; workers
    are still processes and packets still real UDP."""

    def __init__(self, ip: str = "127.0.0.1", seed: int | None = None):
        from switch.io_udp import UdpIO
        from switch.pipeline import Pipeline
        from switch.server import SwitchServer
        self.pipeline = Pipeline(seed=seed)
        self.io = UdpIO(ip, 0)
        self.server = SwitchServer(self.pipeline, self.io).start()
        self.data_addr = self.io.address

    def install_job(self, spec: JobSpec) -> list[int]:
        try:
            self.pipeline.remove_job(spec.job_id)
        except Exception:
            pass   # not installed: nothing to replace
        return self.pipeline.install_job(spec)

    def remove_job(self, job_id: int) -> None:
        self.pipeline.remove_job(job_id)

    def read_counters(self) -> dict[str, tuple[int, int]]:
        return self.pipeline.counter_dict()

    def slot_bitmap(self, spec: JobSpec, slot: int, ver: int) -> int:
        from nina import p4spec
        return self.pipeline.read_register(p4spec.REG_BITMAP, (spec.slot_base + slot) * 2 + ver)

    def died(self) -> str | None:
        return None   # a thread of this process

    def stop(self) -> None:
        self.server.stop()


def switch_for_checks(log_dir: str, log: Callable[[str], None] = print):
    """A switch for tests and checks: the real process when it can run here, else the pipeline
    in-process (saying why); None if there is no embedded switch at all."""
    import importlib.util
    why = local_switch_unavailable()
    if why is None:
        return LocalSwitch(log_dir, log=log)
    if importlib.util.find_spec("switch.pipeline") is None:
        return None
    log(f"switch process unavailable ({why}): serving the pipeline in-process")
    return InProcessSwitch()


class JobInstaller:
    """The job runner's use of a SwitchHandle: install (errors as JobAborted), best-effort
    removal and counter reads at teardown, and a diagnosis of which workers a slot misses."""

    def __init__(self, switch: SwitchHandle):
        self.switch = switch

    def install(self, spec: JobSpec) -> list[int]:
        """Install the job; its slots' first rounds, for the workers."""
        return self.switch.install_job(spec)

    def remove(self, job_id: int) -> None:
        try:
            self.switch.remove_job(job_id)
        except Exception:   # best effort at teardown; the job's outcome is already decided
            pass

    def counters(self) -> dict:
        try:
            return {k: v[0] for k, v in self.switch.read_counters().items() if v[0]}
        except Exception:
            return {}

    def switch_died(self) -> str | None:
        """How the switch ended, if the handle owns it and it is gone."""
        try:
            return self.switch.died()
        except Exception:   # a diagnosis; the job's own error still stands
            return None

    def slot_missing(self, spec: JobSpec) -> Callable[[int, int], list[int]]:
        def missing(slot: int, ver: int) -> list[int]:
            bitmap = self.switch.slot_bitmap(spec, slot, ver)
            return [w for w in range(spec.n_workers) if not bitmap >> w & 1]
        return missing


class ExternalSwitch(ControlledSwitch):
    """A switch someone else runs: its data address and a Controller on its P4Runtime port.
    A host name (a compose service) is resolved once: workers send to the address."""

    def __init__(self, data_addr: tuple[str, int], grpc_addr: str,
                 bmv2_json: str | None = None):
        import socket

        from switch.controller import Controller, ControllerError
        try:
            self.data_addr = (socket.gethostbyname(data_addr[0]), int(data_addr[1]))
        except OSError as e:
            raise JobAborted(f"switch address {data_addr[0]!r}: {e}") from None
        try:
            self.controller = Controller(grpc_addr, P4INFO_PATH, bmv2_json, push="auto",
                                         connect_timeout=15.0)
        except ControllerError as e:
            raise JobAborted(f"controller: {e}") from None

    def stop(self) -> None:
        self.close_controller()
