"""The coordinator <-> worker message framing and JobAborted, shared by both ends (the job
runner's coordinator and the worker's link)."""
from __future__ import annotations

import json

import zmq


HEARTBEAT_INTERVAL = 0.5   # s between a worker's heartbeats


HEARTBEAT_TIMEOUT = 4.0    # s of silence after which a worker counts as gone


class JobAborted(RuntimeError):
    """The job ended early; str(e) is the one-line reason for the user. The runner attaches
    what the job did until then as `outcome` (its metrics so far), so a comparison keeps it."""
    outcome = None


class JobDiverged(JobAborted):
    """A worker's loss or model became NaN or inf: the job ends at once, its row is marked
    diverged (a result about the compressor, not a fault of the rack)."""


def send(sock: zmq.Socket, identity: bytes | None, msg: dict, blob: bytes | None = None) -> None:
    frames = ([identity] if identity is not None else []) + [json.dumps(msg).encode()]
    if blob is not None:
        frames.append(blob)
    sock.send_multipart(frames, copy=False)
