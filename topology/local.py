"""The rack without root: the embedded switch as a process on loopback (UDP data plane, gRPC
P4Runtime) and the workers and coordinator as plain processes on 127.0.0.1.

No links, so no bandwidth/delay/loss on them; the switch's own loss simulator (a job's `loss`)
still drops updates. Same interface as the Mininet rack, so the same prompt and jobs run on it.
"""
from __future__ import annotations

import os
import subprocess
import time

from topology.rackbase import RackBase, RackController, RackError
from topology.runenv import REPO, RackState, default_run_dir


class LocalRack(RackBase):
    mode = "local"

    def __init__(self, n_workers: int = 4, run_dir: str | None = None, log=print):
        super().__init__(n_workers, run_dir or default_run_dir(), log)
        self.state = RackState(path=None)    # nothing machine-wide: local racks may coexist
        self.switch = None
        self._stopped = False

    def worker_ip(self, wid: int) -> str:
        return "127.0.0.1"

    def _spawn(self, node: str, cmd: list[str], log) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO)

    def switch_alive(self) -> bool:
        return self.switch is not None and self.switch.alive()

    def start(self) -> None:
        from worker.coordinator import JobAborted
        from worker.launch import LocalSwitch
        self._install_signals()
        os.makedirs(self.run_dir, exist_ok=True)
        t0 = time.monotonic()
        self.log(f"starting a local rack: {self.n_workers} worker processes on loopback, "
                 f"embedded switch process; run dir {self.run_dir}")
        try:
            self.switch = LocalSwitch(self.run_dir, log=self.log)
        except JobAborted as e:
            raise RackError(str(e)) from None
        self.controller = RackController(self.switch.controller)
        self.data_addr = self.switch.data_addr
        self.log(f"rack up in {time.monotonic() - t0:.1f} s: switch pid {self.switch.proc.pid}"
                 f", P4Runtime {self.switch.grpc_addr}, data plane "
                 f"{self.data_addr[0]}:{self.data_addr[1]}")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._reap_all()
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
