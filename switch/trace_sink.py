"""Where the embedded switch's per-packet trace records go.

The file format is switch/trace_file.py's (raw nina.decisions.TRACE_DTYPE records + a JSON
index beside them), so `nina trace` reads what the embedded switch writes. This module only
makes emitting cheap: the compiled data plane fills a whole batch's records in place
(`reserve`/`commit`) or hands them over as one array (`write`), the rare per-packet paths in
Python pack one record with one struct call (`emit`), all into a preallocated buffer. A full
buffer goes to a writer thread, which appends it to the file (past the page cache where the
file system allows it: switch/direct_file.py says why) and hands it back, so the file write
runs beside the data path, not in it. The index is refreshed at most once a second and on
close.
"""
from __future__ import annotations

import os
import queue
import struct
import sys
import threading
import time

import numpy as np

from nina.decisions import TRACE_DTYPE
from switch.trace_file import TraceWriter, read_all

# Same layout as TRACE_DTYPE, as a struct format (checked at import below).
_REC = struct.Struct("<QHHHBBBBBxIIHxx")
assert _REC.size == TRACE_DTYPE.itemsize
_FIELDS = ("time_ns", "ingress_port", "job", "slot", "worker", "decision", "ver", "exponent",
           "count", "bitmap", "offset", "elements")


def _check_layout() -> None:
    rec = np.frombuffer(_REC.pack(*range(1, 13)), TRACE_DTYPE)[0]
    assert tuple(int(rec[n]) for n in _FIELDS) == tuple(range(1, 13)), \
        "trace struct format disagrees with TRACE_DTYPE"


_check_layout()


class _Batcher:
    """Collects records in a preallocated TRACE_DTYPE buffer; subclasses decide where a full
    batch goes. The compiled data plane hands over whole arrays (`write`); the rare per-packet
    paths in Python (forwarded frames, broken framing) pack one record (`emit`)."""

    def __init__(self, batch: int):
        self.batch = max(1, int(batch))
        self._arr = np.zeros(self.batch, TRACE_DTYPE)
        self._bytes = self._arr.view(np.uint8)   # the same buffer, as bytes
        self._buf = memoryview(self._bytes)
        self._n = 0
        self.records = 0   # records emitted so far (flushed or not)

    def emit(self, time_ns: int, ingress_port: int, job: int, slot: int, worker: int,
             decision: int, ver: int, exponent: int, count: int, bitmap: int, offset: int,
             elements: int) -> None:
        _REC.pack_into(self._buf, self._n * _REC.size, time_ns, ingress_port, job, slot,
                       worker, decision, ver, exponent, count, bitmap, offset, elements)
        self._n += 1
        self.records += 1
        if self._n == self.batch:
            self.flush()

    def write(self, records: np.ndarray) -> None:
        """Append an array of TRACE_DTYPE records (copied: the caller reuses its buffer). Copied
        as bytes: numpy's assignment of a structured array goes field by field, and at
        ~200 ns a record it made tracing cost more than the pipeline's whole work."""
        i, n = 0, len(records)
        self.records += n
        src = np.ascontiguousarray(records, TRACE_DTYPE).view(np.uint8)
        size = TRACE_DTYPE.itemsize
        while i < n:
            m = min(n - i, self.batch - self._n)
            self._bytes[self._n * size:(self._n + m) * size] = src[i * size:(i + m) * size]
            self._n += m
            i += m
            if self._n == self.batch:
                self.flush()

    def reserve(self, m: int) -> np.ndarray | None:
        """Room for m records in the buffer, as a view to fill in place (then `commit` how
        many were written); None if the buffer cannot hold m at all (use `write`)."""
        if m > self.batch:
            return None
        if self.batch - self._n < m:
            self.flush()
        return self._arr[self._n:self._n + m] if self.batch - self._n >= m else None

    def commit(self, k: int) -> None:
        """The first k records of the last `reserve` view were written."""
        self._n += k
        self.records += k
        if self._n == self.batch:
            self.flush()

    def _take(self) -> np.ndarray:
        recs = self._arr[:self._n].copy()
        self._n = 0
        return recs

    def flush(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.flush()


class TraceSink(_Batcher):
    """Writes records to a trace file (switch.trace_file format) from a writer thread.

    `buffers` preallocated buffers of `batch` records circulate between the data path and the
    writer. When all are waiting to be written the data path waits for one (back pressure, no
    record dropped). If the file cannot be written (disk full, ...), the switch keeps
    switching: the error is printed once, the records from then on are counted in `lost`,
    and close() says how many."""

    def __init__(self, path: str | os.PathLike, batch: int = 8192, buffers: int = 4):
        super().__init__(batch)
        self.path = path
        self.lost = 0            # records not written (the file failed)
        self.error: OSError | None = None
        self._writer = TraceWriter(path)
        self._writer.flush()           # an (empty) index exists from the start
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, int(buffers)) - 1):   # the first is _Batcher's
            self._free.put(np.zeros(self.batch, TRACE_DTYPE))
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="nina-trace",
                                        daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Hand the buffered records to the writer thread; continue in a free buffer."""
        if self._n and self._thread is not None:
            self._full.put((self._arr, self._n))
            self._use(self._free.get())
        self._n = 0

    def close(self) -> None:
        """Write out everything emitted, refresh the index, close the file (idempotent)."""
        if self._thread is None:
            return
        self.flush()
        self._full.put(None)
        self._thread.join()
        self._thread = None
        if self.lost:
            print(f"nina switch: {self.lost} of {self.records} trace records lost: "
                  f"{self.error}", file=sys.stderr, flush=True)

    def _use(self, arr: np.ndarray) -> None:
        self._arr = arr
        self._bytes = arr.view(np.uint8)
        self._buf = memoryview(self._bytes)

    def _write_loop(self) -> None:
        index_at = time.monotonic()
        while True:
            item = self._full.get()
            if item is None:
                break
            arr, n = item
            if self.error is None:
                try:
                    self._writer.write(arr[:n])
                    if time.monotonic() - index_at > 1.0:
                        self._writer.flush()
                        index_at = time.monotonic()
                except OSError as e:
                    self._fail(e)
            if self.error is not None:
                self.lost += n
            self._free.put(arr)
        try:
            self._writer.close()
        except OSError as e:
            if self.error is None:
                self._fail(e)

    def _fail(self, e: OSError) -> None:
        self.error = e
        print(f"nina switch: cannot write the trace {self.path}: {e.strerror or e}; "
              f"switching goes on, records from here on are counted as lost",
              file=sys.stderr, flush=True)


class MemoryTrace(_Batcher):
    """Keeps records in memory (tests, in-process use); `.array()` returns them all."""

    def __init__(self, batch: int = 1024):
        super().__init__(batch)
        self._chunks: list[np.ndarray] = []

    def flush(self) -> None:
        if self._n:
            self._chunks.append(self._take())

    def array(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, TRACE_DTYPE)


def read_trace(path: str | os.PathLike) -> np.ndarray:
    """All records of a trace file written by TraceSink."""
    from pathlib import Path
    return read_all(Path(path))
