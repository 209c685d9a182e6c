"""Where a running rack's switch is: the record a rack publishes and `nina ctl` reads.

A rack picks a free port for its switch's P4Runtime server, so a controller started beside it
cannot guess the address. While it runs, a rack writes one JSON record to two places:
  <run dir>/rack.json                       next to the rack's outputs (stays after it stops)
  <tmp>/nina-racks-<uid>/<rack pid>.json    the index of running racks (removed at teardown;
                                            a record whose process is gone counts as stale)
Fields: pid, mode, started (unix time), run_dir, grpc (P4Runtime address), data (the switch's
UDP data address as [ip, port]), election_id (of the rack's own controller, the primary), and
jobs: every job installed so far by id, with its slot range and encoding, so a reader can find
a finished job's slot registers (they keep the last round until a later job reuses the range).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from nina.procs import is_zombie

RECORD_NAME = "rack.json"

# The controller of the process that owns a switch (a rack, the job runner's own switch) is
# primary with this election id: above `nina ctl`'s default (0,1), so a ctl beside it connects
# as a backup that reads, and never takes the owner's writes away by accident.
OWNER_ELECTION_ID = (1, 0)


def index_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"nina-racks-{os.getuid()}")


def publish(record: dict) -> None:
    """Write (or rewrite) the record of the calling rack to its run dir and the index."""
    record = {**record, "pid": record.get("pid", os.getpid())}
    record.setdefault("started", time.time())
    paths = [os.path.join(record["run_dir"], RECORD_NAME),
             os.path.join(index_dir(), f"{record['pid']}.json")]
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)


def unpublish(pid: int | None = None) -> None:
    """Remove the calling rack from the index (its run dir keeps rack.json)."""
    try:
        os.unlink(os.path.join(index_dir(), f"{pid or os.getpid()}.json"))
    except FileNotFoundError:
        pass


def running() -> list[dict]:
    """Records of the racks running now, newest first (stale index entries are removed)."""
    out = []
    d = index_dir()
    for name in (os.listdir(d) if os.path.isdir(d) else []):
        if not name.endswith(".json"):
            continue
        path = os.path.join(d, name)
        try:
            with open(path) as f:
                rec = json.load(f)
            pid = int(rec["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not is_zombie(pid):   # a live process (gone ones count as zombies)
            out.append(rec)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    return sorted(out, key=lambda r: r.get("started", 0), reverse=True)


def load(path: str) -> dict:
    """The record of the rack whose run dir is `path` or contains it (a job folder such as
    runs/<rack>/train-1 works too), or of the record file itself. LookupError if none."""
    p = os.path.abspath(path)
    if os.path.isfile(p):
        cands = [p]
    else:
        cands, d = [], p
        while True:
            cands.append(os.path.join(d, RECORD_NAME))
            up = os.path.dirname(d)
            if up == d:
                break
            d = up
    for c in cands:
        if os.path.isfile(c):
            try:
                with open(c) as f:
                    return json.load(f)
            except (OSError, ValueError) as e:
                raise LookupError(f"{c}: not a rack record ({e})") from None
    raise LookupError(f"no {RECORD_NAME} in {path} or a folder above it (is it a rack's run "
                      f"folder?)")


def find(grpc: str | None = None) -> dict | None:
    """The running rack whose switch is at `grpc` (any running rack if None; the newest if
    several); None if no rack runs."""
    racks = running()
    if grpc is not None:
        return next((r for r in racks if r.get("grpc") == grpc), None)
    return racks[0] if racks else None


def job_slots(record: dict | None) -> dict[int, dict]:
    """job id -> {slot_base, slot_count, encoding, cm, n_workers} of the jobs in a record."""
    if not record:
        return {}
    return {int(k): v for k, v in record.get("jobs", {}).items()}
