"""What rack tests check after a teardown: the rack's interfaces and processes are gone."""
from __future__ import annotations

import os


def rack_intfs(n_workers: int) -> list[str]:
    """The interfaces a rack of n workers creates (monitor pair included) that still exist."""
    from topology.rack import MONITOR_CAPTURE_INTF, MONITOR_SWITCH_INTF, rack_plan
    plan = rack_plan(n_workers)
    names = [h.switch_intf for h in plan] + [h.host_intf for h in plan] + \
        [MONITOR_SWITCH_INTF, MONITOR_CAPTURE_INTF]
    return [n for n in names if os.path.exists(f"/sys/class/net/{n}")]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
