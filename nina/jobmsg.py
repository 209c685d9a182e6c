"""The coordinator <-> worker message framing and JobAborted, shared by both ends (the job
runner's coordinator and the worker's link)."""
from __future__ import annotations

import json

import zmq


HEARTBEAT_INTERVAL = 0.5   # s between a worker's heartbeats


HEARTBEAT_TIMEOUT = 4.0    # s of silence after which a worker counts as gone


class JobAborted(RuntimeError):
    """The job ended early; str(e) is the one-line reason for the user."""


def send(sock: zmq.Socket, identity: bytes | None, msg: dict, blob: bytes | None = None) -> None:
    frames = ([identity] if identity is not None else []) + [json.dumps(msg).encode()]
    if blob is not None:
        frames.append(blob)
    sock.send_multipart(frames, copy=False)
