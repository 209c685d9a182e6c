"""Creating a socket inside a Mininet host's network namespace from the rack process.

The job coordinator runs in the rack process (jobs/runner.py creates it), but it must listen
on the coordinator host's address, 10.0.0.100 inside hc's namespace, so the workers reach it
through the switch. A socket belongs to the namespace of the thread that creates it, and
accepted connections to that of the listening socket; so the calling thread enters hc's
namespace only for the moment the coordinator binds, then returns.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(pid: int):
    """Run the body with this thread in the network namespace of process `pid`."""
    with in_netns_path(f"/proc/{pid}/ns/net"):
        yield


@contextlib.contextmanager
def in_netns_path(path: str):
    """The same for a namespace file: /proc/PID/ns/net, or /run/netns/NAME (`ip netns add`)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def coordinator_in_host(pid: int, ip: str):
    """A coordinator factory for the job runner (its `coordinator=` argument): each job's
    Coordinator is created inside the network namespace of process `pid` (the coordinator
    host's shell), bound to `ip`, so coordination crosses the rack like any host's traffic."""
    from jobs.coordinator import Coordinator

    def make(n_workers, bind_ip="127.0.0.1", **kw):
        with in_netns(pid):
            return Coordinator(n_workers, bind_ip=ip, **kw)
    return make
