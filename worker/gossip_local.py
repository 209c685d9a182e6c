"""A gossip group in one process: n workers as threads, each with its own UDP socket on loopback.

The datagrams are real (each worker's GossipNet sends to the others' sockets); only the
processes are threads, which is what the consensus tests and the consensus bench need: many
short runs without paying for process start-up. Training jobs run worker processes through the
job runner instead.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from worker.gossip_graph import Graph
from worker.gossip_net import GossipError, GossipNet


class LocalGroup:
    """n GossipNets on 127.0.0.1 wired to their graph neighbours."""

    def __init__(self, graph: Graph, timeout: float = 10.0, resend: float = 0.2):
        self.graph = graph
        self.nets = [GossipNet(w, timeout=timeout, resend=resend) for w in range(graph.n)]
        for w, net in enumerate(self.nets):
            net.connect(w, {j: self.nets[j].address for j in graph.neighbours(w)})

    def run(self, fn: Callable[[int, GossipNet], object]) -> list:
        """fn(wid, net) on every worker at once; results by worker id. If workers fail, the
        root cause is raised: an error that is not a gossip timeout, else the timeout of the
        earliest round (a silent worker's neighbours wait at round r, theirs at r + 1 and
        time out at about the same moment, naming the neighbour that waits too)."""
        out: list = [None] * self.graph.n
        errors: list[tuple[float, BaseException]] = []

        def body(w):
            try:
                out[w] = fn(w, self.nets[w])
            except BaseException as e:     # reported to the caller below
                errors.append((time.monotonic(), e))
        threads = [threading.Thread(target=body, args=(w,), daemon=True)
                   for w in range(self.graph.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            def rank(e):
                err = e[1]
                return (err.round if isinstance(err, GossipError) else -1, e[0])
            raise min(errors, key=rank)[1]
        return out

    def close(self) -> None:
        for n in self.nets:
            n.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
