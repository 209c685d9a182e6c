"""Host ring all-reduce of float32 over TCP: the baseline NINA's switch aggregation is measured
against (what a data-parallel job does without in-network aggregation).

Worker r accepts a connection from r-1 and connects to r+1 (mod n). A tensor is cut into n
segments; n-1 reduce-scatter steps (send segment r-s, receive and add segment r-s-1) leave
worker r with the full sum of segment r+1; n-1 all-gather steps pass the summed segments
around. Each worker sends 2(n-1)/n of the tensor, the well-known ring cost.

    python -m worker.ring --rank R --n N --listen IP:PORT --right IP:PORT --size ELEMENTS

runs `--repeat` all-reduces of a seeded tensor, checks the sum against a local recomputation
and prints one JSON line: {"rank", "size", "seconds": [...], "bytes_sent", "max_rel_err"}.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

import numpy as np


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {text!r}")
    return host, int(port)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        got = sock.recv_into(view)
        if not got:
            raise ConnectionError("ring neighbour closed the connection")
        view = view[got:]


class Ring:
    """This worker's two ring connections (left: receive, right: send)."""

    def __init__(self, rank: int, n: int, listen: tuple[str, int], right: tuple[str, int],
                 timeout: float = 60.0):
        if not 0 <= rank < n:
            raise ValueError(f"rank {rank} outside 0..{n - 1}")
        self.rank, self.n = rank, n
        self.bytes_sent = 0
        if n == 1:
            self.left = self.right = None
            return
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(listen)
        srv.listen(1)
        srv.settimeout(timeout)
        got: dict = {}

        def accept():
            try:
                got["left"] = srv.accept()[0]
            except OSError as e:
                got["error"] = e
        t = threading.Thread(target=accept, daemon=True)
        t.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.right = socket.create_connection(right, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"ring: cannot reach right neighbour {right[0]}:"
                                          f"{right[1]} within {timeout:.0f} s") from None
                time.sleep(0.05)
        t.join(timeout)
        srv.close()
        if "left" not in got:
            raise ConnectionError(f"ring: left neighbour never connected to {listen[0]}:"
                                  f"{listen[1]} ({got.get('error', 'timeout')})")
        self.left = got["left"]
        for s in (self.left, self.right):
            s.settimeout(timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _step(self, send: np.ndarray, recv: np.ndarray) -> None:
        err: list = []

        def tx():
            try:
                self.right.sendall(memoryview(send).cast("B"))
            except OSError as e:
                err.append(e)
        t = threading.Thread(target=tx)
        t.start()
        _recv_into(self.left, memoryview(recv).cast("B"))
        t.join()
        if err:
            raise ConnectionError(f"ring: sending to the right neighbour failed: {err[0]}")
        self.bytes_sent += send.nbytes

    def allreduce(self, x: np.ndarray) -> np.ndarray:
        """The float32 sum of x over the ring (same shape)."""
        out = np.array(x, np.float32, copy=True).ravel()
        n, r = self.n, self.rank
        if n == 1:
            return out.reshape(np.shape(x))
        bounds = np.linspace(0, out.size, n + 1).astype(np.int64)
        seg = [out[bounds[i]:bounds[i + 1]] for i in range(n)]
        buf = np.empty(max(len(s) for s in seg), np.float32)
        for s in range(n - 1):                       # reduce-scatter
            a, b = (r - s) % n, (r - s - 1) % n
            tmp = buf[:len(seg[b])]
            self._step(np.ascontiguousarray(seg[a]), tmp)
            seg[b] += tmp
        for s in range(n - 1):                       # all-gather
            a, b = (r - s + 1) % n, (r - s) % n
            self._step(np.ascontiguousarray(seg[a]), seg[b])
        return out.reshape(np.shape(x))

    def close(self) -> None:
        for s in (self.left, self.right):
            if s is not None:
                s.close()


def task_tensor(size: int, seed: int, rank: int) -> np.ndarray:
    return np.random.default_rng([seed, rank]).standard_normal(size).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.ring",
                                 description="One worker of a host ring all-reduce over TCP "
                                             "(the baseline for in-network aggregation).")
    ap.add_argument("--rank", type=int, required=True, help="this worker's position 0..n-1")
    ap.add_argument("--n", type=int, required=True, help="workers in the ring")
    ap.add_argument("--listen", type=_addr, required=True, help="IP:PORT the left neighbour "
                                                                 "connects to")
    ap.add_argument("--right", type=_addr, required=True, help="right neighbour's IP:PORT")
    ap.add_argument("--size", type=int, default=1 << 20, help="float32 elements (default 2^20)")
    ap.add_argument("--repeat", type=int, default=1, help="all-reduces to time (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="socket timeout in s")
    args = ap.parse_args(argv)
    if not 1 <= args.n or not 0 <= args.rank < args.n or args.size < 1:
        print("worker.ring: error: need n >= 1, 0 <= rank < n, size >= 1", file=sys.stderr)
        return 2
    try:
        ring = Ring(args.rank, args.n, args.listen, args.right, args.timeout)
    except (OSError, ValueError) as e:
        print(f"worker.ring: error: {e}", file=sys.stderr)
        return 1
    x = task_tensor(args.size, args.seed, args.rank)
    want = sum(task_tensor(args.size, args.seed, w).astype(np.float64) for w in range(args.n))
    times, err = [], 0.0
    try:
        for _ in range(args.repeat):
            t0 = time.monotonic()
            y = ring.allreduce(x)
            times.append(time.monotonic() - t0)
            err = max(err, float(np.max(np.abs(y - want)) / (np.max(np.abs(want)) or 1)))
    except (OSError, ConnectionError) as e:
        print(f"worker.ring: error: {e}", file=sys.stderr)
        return 1
    finally:
        ring.close()
    print(json.dumps({"rank": args.rank, "size": args.size, "seconds": times,
                      "bytes_sent": ring.bytes_sent, "max_rel_err": err}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
