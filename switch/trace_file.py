"""The trace file: raw nina.decisions.TRACE_DTYPE records, plus a JSON index beside it.

`<name>.trace` holds the records back to back (little-endian, 32 bytes each) so it can be
appended to while the switch runs and read in chunks without loading it; `<name>.trace.json`
holds the format version, the record count and, every INDEX_EVERY records, the record's time,
so a reader can seek to a time window. A trace that ends without its index (switch killed) is
still readable: the reader counts records from the file size.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from nina.decisions import N_DECISIONS, TRACE_DTYPE, TRACE_WIRE_DTYPE
from switch.direct_file import DirectAppender

FORMAT = "nina-trace"
FORMAT_VERSION = 1
INDEX_EVERY = 1 << 16
TRACE_NAME = "switch.trace"


class TraceError(ValueError):
    pass


def index_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


SEARCH_UP = 3   # a job folder (runs/<rack>/train-1/<spec>) finds its rack's trace above it


def resolve(run_or_file: str | os.PathLike) -> Path:
    """A run folder (containing switch.trace), a job folder inside one, or a trace file -> the
    trace file."""
    p = Path(run_or_file)
    if p.is_dir():
        for d in [p, *list(p.resolve().parents)[:SEARCH_UP]]:
            if (d / TRACE_NAME).exists():
                return d / TRACE_NAME
        p = p / TRACE_NAME
    if not p.exists():
        raise TraceError(f"no trace at {p} (give a run folder with {TRACE_NAME}, a job folder "
                         f"inside one, or a .trace file)")
    return p


def truncation(path: Path) -> str | None:
    """A warning if the file holds fewer records than its index counted (the file was cut or
    copied while the switch wrote it); None if it is whole. More records than the index is
    normal for a trace still being written."""
    idx = index_path(path)
    if not idx.exists():
        return None
    try:
        counted = int(json.loads(idx.read_text()).get("records", 0))
    except (OSError, ValueError, TypeError):
        return None
    have = path.stat().st_size // TRACE_DTYPE.itemsize
    if have < counted:
        return (f"warning: truncated trace: {path} holds {have} records, its index counted "
                f"{counted}; everything below covers only the first {have}")
    return None


class TraceWriter:
    """Appends records; keeps the index current on flush and close."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = DirectAppender(self.path)   # past the page cache where the fs allows
        self.count = 0
        self._marks: list[tuple[int, int]] = []

    def write(self, records: np.ndarray) -> None:
        if records.dtype != TRACE_DTYPE:
            records = records.astype(TRACE_DTYPE)
        first = -(-self.count // INDEX_EVERY) * INDEX_EVERY  # next multiple at or after count
        for i in range(first, self.count + len(records), INDEX_EVERY):
            self._marks.append((i, int(records["time_ns"][i - self.count])))
        self._f.write(np.ascontiguousarray(records).view(np.uint8))   # no bytes copy
        self.count += len(records)

    def write_wire(self, raw: bytes) -> None:
        """Records as the P4 program mirrors them (big-endian) -> the file's byte order."""
        self.write(np.frombuffer(raw, TRACE_WIRE_DTYPE).astype(TRACE_DTYPE))

    def flush(self) -> None:
        self._f.flush()
        index_path(self.path).write_text(json.dumps({
            "format": FORMAT, "version": FORMAT_VERSION, "record_size": TRACE_DTYPE.itemsize,
            "records": self.count, "index_every": INDEX_EVERY,
            "index": [{"record": r, "time_ns": t} for r, t in self._marks],
        }))

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record_count(path: Path) -> int:
    size = path.stat().st_size
    if size % TRACE_DTYPE.itemsize:
        # a switch killed mid-write leaves a partial last record; ignore it
        size -= size % TRACE_DTYPE.itemsize
    idx = index_path(path)
    if idx.exists():
        try:
            meta = json.loads(idx.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise TraceError(f"{idx}: the trace's index is unreadable ({e}); delete it to read "
                             f"{path.name} from its size alone") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or \
                meta.get("version") != FORMAT_VERSION:
            raise TraceError(f"{idx}: not a {FORMAT} v{FORMAT_VERSION} index")
    return size // TRACE_DTYPE.itemsize


def checked(records: np.ndarray, path: Path, first: int = 0) -> np.ndarray:
    """The records, if they can be a NINA trace's (a known decision, version 0 or 1, at
    most 256 elements, zero padding); a TraceError naming the first bad record otherwise,
    so that a wrong file is one clear error, not garbage or a crash further on."""
    bad = ((records["decision"] >= N_DECISIONS) | (records["ver"] > 1)
           | (records["elements"] > 256) | (records["pad0"] != 0) | (records["pad1"] != 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(f"{path} is not a NINA switch trace (record {first + i} is not a "
                         f"trace record)")
    return records


def iter_chunks(path: Path, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
    """Stream the records in chunks (a trace larger than memory never loads at once)."""
    total = record_count(path)
    with open(path, "rb") as f:
        done = 0
        while done < total:
            n = min(chunk, total - done)
            yield checked(np.fromfile(f, TRACE_DTYPE, count=n), path, done)
            done += n


def read_all(path: Path) -> np.ndarray:
    return checked(np.fromfile(path, TRACE_DTYPE, count=record_count(path)), path)
