"""Where bench/report.py and bench/rack_allreduce.py run their all-reduce jobs: a Mininet rack
with shaped worker links when this machine can start one, else worker processes on loopback
(unshaped; `where` says so). Each job is checked against the all-reduce oracle, and a host ring
all-reduce of float32 over TCP (worker/ring.py) runs on the same network as the baseline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nina.wire import Encoding

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
QUIET = lambda *a, **k: None  # noqa: E731


def log(msg: str) -> None:
    print(f"[net] {msg}", file=sys.stderr, flush=True)


class Net:
    """Where the all-reduce jobs run: a shaped Mininet rack, else loopback."""

    def __init__(self, n: int, bw: float, workdir: str):
        self.n, self.workdir, self.rack = n, workdir, None
        self.worker_cpu = 0.0   # the workers' CPU seconds in the last allreduce's best call
        self.where = ""
        why = self._rack_unavailable()
        if why is None:
            from topology.impair import LinkShape
            from topology.mininet_rack import MininetRack
            self.rack = MininetRack(n, LinkShape(bw_mbit=bw), run_dir=workdir, trace=False,
                                    log=log)
            self.rack.start()
            self.where = f"Mininet rack, {n} workers, worker links shaped to {bw:g} Mbit/s"
        else:
            from switch.handles import switch_for_checks
            self.switch = switch_for_checks(workdir, log=log)
            self.where = (f"loopback, {n} worker processes, links NOT shaped (the Mininet rack "
                          f"is unavailable: {why})")
        log(self.where)

    @staticmethod
    def _rack_unavailable() -> str | None:
        from topology import modes
        d = modes.decide("mininet", modes.probe())
        if d.error:
            return d.error
        from topology.mininet_rack import P4INFO_PATH
        if not os.path.exists(P4INFO_PATH):
            return f"no P4Info at {P4INFO_PATH}"
        return None

    @property
    def window(self) -> int:
        """Slots in flight per worker that a job gets when none is asked for."""
        from nina.config import DEFAULT_WINDOW
        return self.rack.default_window if self.rack is not None else DEFAULT_WINDOW

    def allreduce(self, size: int, enc: Encoding, cm: bool, loss: float = 0.0,
                  calls: int = 2, window: int | None = None) -> tuple[float, int, bool]:
        """(best per-call seconds of the slowest worker, retransmissions, exact?); the
        workers' CPU seconds (all of them) in that best call go to self.worker_cpu."""
        window = window or self.window
        if self.rack is not None:
            from topology.rack_jobs import run_allreduce
            rep = run_allreduce(self.rack, size=size, encoding=enc.name.lower(), cm=cm,
                                calls=calls, loss=loss, timeout=30.0, window=window, log=QUIET)
            best = rep.seconds.index(min(rep.seconds))
            self.worker_cpu = rep.worker_cpu[best]
            return rep.seconds[best], rep.retransmissions, rep.exact
        from jobs.check import check_allreduce
        from jobs.runner import run_allreduce
        job = getattr(self, "_job", 100) + 1
        self._job = job
        d = os.path.join(self.workdir, f"job{job}")
        out = run_allreduce(self.n, self.switch, size=size, encoding=enc, cm=cm, calls=calls,
                            loss=loss, job_id=job, run_dir=d, timeout=30.0, window=window,
                            log=QUIET)
        per_call = [max(out.per_worker[w][c]["seconds"] for w in out.per_worker)
                    for c in range(calls)]
        retx = sum(st["retransmissions"] for cs in out.per_worker.values() for st in cs)
        exact = check_allreduce(d, self.n, calls, out.config["shift"], enc, cm, seed=0,
                                size=size) == []
        best = per_call.index(min(per_call))
        self.worker_cpu = sum(out.per_worker[w][best].get("cpu_seconds", 0.0)
                              for w in out.per_worker)
        return per_call[best], retx, exact

    def ring(self, size: int, repeat: int = 2) -> float:
        """Best seconds of the slowest worker of a host ring all-reduce of float32."""
        base = 47000 + os.getpid() % 1000
        ips = ([self.rack.worker_ip(w) for w in range(self.n)] if self.rack is not None
               else ["127.0.0.1"] * self.n)
        procs = []
        for r in range(self.n):
            cmd = [PY, "-m", "worker.ring", "--rank", str(r), "--n", str(self.n),
                   "--listen", f"{ips[r]}:{base + r}",
                   "--right", f"{ips[(r + 1) % self.n]}:{base + (r + 1) % self.n}",
                   "--size", str(size), "--repeat", str(repeat)]
            logp = os.path.join(self.workdir, f"ring{r}.log")
            if self.rack is not None:
                procs.append((self.rack.popen(self.rack.worker_node(r), cmd, logp), logp))
            else:
                procs.append((subprocess.Popen(cmd, cwd=REPO, stdout=open(logp, "w"),
                                               stderr=subprocess.STDOUT), logp))
        res = []
        for p, logp in procs:
            p.wait(600)
            lines = [l for l in open(logp).read().splitlines() if l.startswith("{")]
            if p.returncode != 0 or not lines:
                raise RuntimeError(f"ring worker failed: {open(logp).read()[-400:]}")
            res.append(json.loads(lines[-1]))
        return min(max(r["seconds"][i] for r in res) for i in range(repeat))

    def close(self) -> None:
        if self.rack is not None:
            self.rack.stop()
        else:
            self.switch.stop()
