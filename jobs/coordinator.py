"""The job coordinator: rendezvous, worker ids, job install, barriers, model broadcast, metrics.

It talks to the worker processes over pyzmq (a ROUTER socket; each worker has a DEALER for its
requests and a second one for heartbeats). Gradient data never goes through it: the workers
exchange gradients through the switch (or the host fallback mesh). Any worker that exits, stops
sending heartbeats or reports an error ends the whole job: the coordinator broadcasts ABORT with
one clear message and raises JobAborted with the same message.

Messages are multipart [identity, json(, binary)] with a "t" field:
  worker -> coordinator: hello, ready, barrier, metrics, done, error, hb
  coordinator -> worker: welcome (+ initial model bytes), go, abort, bye
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zmq

from nina.jobmsg import HEARTBEAT_TIMEOUT, JobAborted, JobDiverged, send


@dataclass
class Member:
    wid: int
    identity: bytes
    udp: tuple[str, int]
    gather: tuple[str, int]
    pid: int
    host: str
    last_seen: float = field(default_factory=time.monotonic)
    gossip: tuple[str, int] | None = None    # its UDP socket for neighbour (gossip) messages

    def describe(self) -> str:
        return f"worker {self.wid} (pid {self.pid} on {self.host}, udp {self.udp[0]}:{self.udp[1]})"


def _bind_retrying(sock: zmq.Socket, addr: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.bind(addr)
            return int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                sock.close(linger=0)
                raise JobAborted(f"the coordinator cannot listen on {addr}: {e}") from None
            time.sleep(0.1)


class Coordinator:
    """One job's coordinator. `procs` (wid-less list of Popen) lets it notice exits at once."""

    def __init__(self, n_workers: int, bind_ip: str = "127.0.0.1",
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT, log: Callable[[str], None] = print,
                 bind_port: int | None = None):
        self.n = n_workers
        # a context of its own: zmq's I/O threads are born in the namespace of the thread that
        # creates the context, so a rack's coordinator (made inside the coordinator host's
        # namespace) must not leave the process-wide instance living in a namespace that goes
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 500)
        if bind_port:    # a fixed port external workers know (the previous job's may linger)
            port = _bind_retrying(self.sock, f"tcp://{bind_ip}:{bind_port}", 10.0)
        else:
            port = self.sock.bind_to_random_port(f"tcp://{bind_ip}")
        self.endpoint = f"tcp://{bind_ip}:{port}"
        self.heartbeat_timeout = heartbeat_timeout
        self.log = log
        self.members: dict[int, Member] = {}
        self.by_identity: dict[bytes, Member] = {}
        self.procs: list[subprocess.Popen] = []
        self.slot_diagnosis: Callable[[int, int], list[int] | None] | None = None
        # how the job's switch ended, when the launcher owns it and it is gone (else None)
        self.switch_check: Callable[[], str | None] | None = None
        self.aborted: str | None = None
        self._barrier: dict[str, set[int]] = {}
        self._ready: set[int] = set()
        self._done: dict[int, dict] = {}
        self._hellos: list[tuple[bytes, dict]] = []
        self.on_metrics: Callable[[int, dict], None] | None = None

    # ---- the event loop every wait goes through ----

    def _poll(self, timeout: float) -> None:
        if self.sock.poll(int(max(0.0, timeout) * 1000)):
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames)
        self._check_alive()

    def _handle(self, frames: list[bytes]) -> None:
        ident = frames[0]
        try:
            msg = json.loads(frames[1])
        except (IndexError, ValueError):
            return
        t = msg.get("t")
        if t == "hello":   # a worker that repeats its hello (external, --serve) counts once
            self._hellos = [(i, h) for i, h in self._hellos if i != ident] + [(ident, msg)]
            return
        m = self.members.get(msg.get("wid")) if t == "hb" else self.by_identity.get(ident)
        if m is None:
            return
        m.last_seen = time.monotonic()
        if t == "ready":
            self._ready.add(m.wid)
        elif t == "barrier":
            self._barrier.setdefault(msg["name"], set()).add(m.wid)
        elif t == "metrics" and self.on_metrics is not None:
            self.on_metrics(m.wid, msg["rec"])
        elif t == "done":
            self._done[m.wid] = msg
        elif t == "error" and msg.get("diverged"):
            reason = f"diverged: worker {m.wid}: {msg.get('message', '?')}"
            self.abort(reason)
            raise JobDiverged(reason)
        elif t == "error":
            self._fail(self._explain_error(m, msg))

    def _explain_error(self, m: Member, msg: dict) -> str:
        text = f"worker {m.wid} failed: {msg.get('message', '?')}"
        gone = self._switch_gone()
        if gone:   # the workers only saw silence: the cause is the switch
            return f"{gone} (worker {m.wid} then gave up: {msg.get('message', '?')})"
        stall = msg.get("stall")
        if stall and self.slot_diagnosis is not None:
            try:
                missing = self.slot_diagnosis(stall["slot"], stall["ver"])
            except Exception as e:   # the diagnosis is a bonus; the failure is the message
                missing, text = None, text + f" (slot bitmap unreadable: {e})"
            if missing is not None:
                text += (f"; the switch's bitmap of slot {stall['slot']} version {stall['ver']} "
                         f"lacks workers {missing}")
        return text

    def _switch_gone(self) -> str | None:
        if self.switch_check is None:
            return None
        try:
            return self.switch_check()
        except Exception:   # a diagnosis only
            return None

    def _check_alive(self) -> None:
        if self.aborted:
            return
        gone = self._switch_gone()
        if gone:
            self._fail(gone)
        for p in self.procs:
            rc = p.poll()
            if rc is not None and rc != 0:
                m = next((m for m in self.members.values() if m.pid == p.pid), None)
                who = m.describe() if m else f"worker process pid {p.pid}"
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                self._fail(f"{who} {how}")
        now = time.monotonic()
        for m in self.members.values():
            if m.wid not in self._done and now - m.last_seen > self.heartbeat_timeout:
                self._fail(f"{m.describe()} stopped answering (no heartbeat for "
                           f"{now - m.last_seen:.1f} s)")

    def _fail(self, reason: str) -> None:
        self.abort(reason)
        raise JobAborted(reason)

    def abort(self, reason: str) -> None:
        """Tell every worker the job is over (idempotent)."""
        if self.aborted:
            return
        self.aborted = reason
        for m in self.members.values():
            send(self.sock, m.identity, {"t": "abort", "reason": reason})

    def _wait(self, done: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(what())
            self._poll(min(left, 0.1))

    # ---- job phases ----

    def rendezvous(self, timeout: float = 60.0) -> list[Member]:
        """Wait for n hellos; worker ids follow arrival order (or a requested `rank`)."""
        self._wait(lambda: len(self._hellos) >= self.n, timeout,
                   lambda: f"only {len(self._hellos)} of {self.n} workers joined within "
                           f"{timeout:.0f} s")
        hellos = self._hellos[:self.n]
        ranks = [h.get("rank") for _, h in hellos]
        if all(r is not None for r in ranks) and sorted(ranks) == list(range(self.n)):
            order = sorted(range(self.n), key=lambda i: ranks[i])
        else:
            order = list(range(self.n))
        for wid, i in enumerate(order):
            ident, h = hellos[i]
            m = Member(wid, ident, tuple(h["udp"]), tuple(h["gather"]), h["pid"], h["host"],
                       gossip=tuple(h["gossip"]) if h.get("gossip") else None)
            self.members[wid] = m
            self.by_identity[ident] = m
        return [self.members[w] for w in range(self.n)]

    def welcome(self, job: dict, params: np.ndarray | None) -> None:
        """Send every worker its id, the job (spec, switch address, task) and the model."""
        peers = {str(m.wid): list(m.gather) for m in self.members.values()}
        gossip = {str(m.wid): list(m.gossip) for m in self.members.values() if m.gossip}
        blob = None if params is None else np.ascontiguousarray(params, np.float32).tobytes()
        for m in self.members.values():
            send(self.sock, m.identity, {"t": "welcome", "wid": m.wid, "n": self.n,
                                         "peers": peers, "gossip_peers": gossip, **job}, blob)
            m.last_seen = time.monotonic()

    def wait_ready(self, timeout: float = 60.0) -> None:
        self._wait(lambda: len(self._ready) >= self.n, timeout,
                   lambda: f"workers {sorted(set(range(self.n)) - self._ready)} did not get "
                           f"ready within {timeout:.0f} s")

    def barrier(self, name: str, timeout: float = 60.0) -> None:
        """Release every worker waiting at `name` once all n have arrived."""
        got = self._barrier.setdefault(name, set())
        self._wait(lambda: len(got) >= self.n, timeout,
                   lambda: f"barrier {name!r}: workers {sorted(set(range(self.n)) - got)} "
                           f"did not arrive within {timeout:.0f} s")
        for m in self.members.values():
            send(self.sock, m.identity, {"t": "go", "name": name})

    def wait_done(self, timeout: float, more: bool = False) -> dict[int, dict]:
        """Run until every worker reported done (metrics go to on_metrics meanwhile). `more`
        tells workers that serve several jobs (worker_proc --serve) that another one follows."""
        self._wait(lambda: len(self._done) >= self.n, timeout,
                   lambda: f"workers {sorted(set(range(self.n)) - set(self._done))} did not "
                           f"finish within {timeout:.0f} s")
        for m in self.members.values():
            send(self.sock, m.identity, {"t": "bye", "more": more})
        return dict(self._done)

    def close(self) -> None:
        self.sock.close(linger=200)
        self.ctx.term()
