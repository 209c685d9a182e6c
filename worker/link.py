"""The worker's end of the coordination channel (pyzmq DEALER to the job runner's coordinator)."""
from __future__ import annotations

import json
import time

import zmq

from nina.jobmsg import HEARTBEAT_INTERVAL, JobAborted, send


class WorkerLink:
    """The worker's end: a DEALER for requests and a heartbeat thread with its own DEALER."""

    def __init__(self, endpoint: str, timeout: float = 60.0):
        import threading
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(endpoint)
        self.endpoint, self.timeout = endpoint, timeout
        self.wid: int | None = None
        self.abort_reason: str | None = None
        self._stop = threading.Event()
        self._hb: threading.Thread | None = None
        self._pending: list[tuple[dict, bytes | None]] = []

    def send(self, msg: dict) -> None:
        if self.wid is not None:
            msg = {"wid": self.wid, **msg}
        send(self.sock, None, msg)

    def start_heartbeat(self) -> None:
        import threading

        def beat():
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.endpoint)
            while not self._stop.wait(HEARTBEAT_INTERVAL):
                send(s, None, {"t": "hb", "wid": self.wid})
            s.close()
        self._hb = threading.Thread(target=beat, daemon=True)
        self._hb.start()

    def _recv(self, timeout: float) -> tuple[dict, bytes | None] | None:
        if self._pending:
            return self._pending.pop(0)
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        msg = json.loads(frames[0])
        if msg.get("t") == "abort":
            self.abort_reason = msg.get("reason", "aborted by the coordinator")
        return msg, (frames[1] if len(frames) > 1 else None)

    def expect(self, t: str, timeout: float | None = None, name: str | None = None):
        """Wait for a message of type t; an abort or silence raises JobAborted."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobAborted(f"the coordinator at {self.endpoint} did not send {t!r} within "
                                 f"{self.timeout if timeout is None else timeout:.0f} s")
            got = self._recv(left)
            if got is None:
                continue
            msg, blob = got
            if msg.get("t") == "abort":
                raise JobAborted(msg.get("reason", "aborted by the coordinator"))
            if msg.get("t") == t and (name is None or msg.get("name") == name):
                return msg, blob

    def poll_abort(self) -> str | None:
        """Non-blocking: the abort reason if the coordinator has ended the job."""
        if self.abort_reason:
            return self.abort_reason
        while self.sock.poll(0):
            got = self._recv(0)
            if got is None:
                break
            if got[0].get("t") != "abort":
                self._pending.append(got)
        return self.abort_reason

    def barrier(self, name: str, timeout: float | None = None) -> None:
        self.send({"t": "barrier", "name": name})
        self.expect("go", timeout, name=name)

    def close(self) -> None:
        self._stop.set()
        if self._hb is not None:
            self._hb.join(2 * HEARTBEAT_INTERVAL)
        self.sock.close()
