"""Which launch mode a rack gets: Mininet when it can run here, otherwise local processes.

`decide(requested, is_root=..., mininet_error=...)` is a pure function of its inputs so a test
can ask what an unprivileged machine would get; `probe()` gathers the real inputs.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

# launch mode -> what it is; every --mode option and the mode choice read this one table
LAUNCH_MODES = {
    "auto": "Mininet when root and Mininet is installed, else local (default)",
    "mininet": "each worker in its own network namespace, links with bandwidth, delay, loss",
    "local": "the switch and the workers as processes on loopback (no root needed)",
}
MODES = tuple(LAUNCH_MODES)


def add_mode_arg(p) -> None:
    """The --mode option of the commands that start a rack."""
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="; ".join(f"{k}: {v}" for k, v in LAUNCH_MODES.items()))


@dataclass(frozen=True)
class ModeChoice:
    mode: str            # "mininet" or "local"
    reason: str          # one line: why this mode (empty when the user's explicit choice)
    error: str = ""      # set when the explicit choice cannot run here


@dataclass(frozen=True)
class Facts:
    is_root: bool
    mininet_error: str | None    # None: importable; else why not
    missing_tools: tuple[str, ...] = ()


def probe() -> Facts:
    err = None
    try:
        import mininet.net  # noqa: F401
    except Exception as e:              # ImportError, or a broken install
        err = f"{type(e).__name__}: {e}"
    missing = tuple(t for t in ("ip", "tc", "ethtool", "mnexec") if shutil.which(t) is None)
    return Facts(os.geteuid() == 0, err, missing)


def decide(requested: str, facts: Facts) -> ModeChoice:
    if requested not in MODES:
        return ModeChoice("local", "", f"unknown mode {requested!r}; choose one of {MODES}")
    blockers = []
    if not facts.is_root:
        blockers.append("not root (Mininet needs network namespaces)")
    if facts.mininet_error:
        blockers.append(f"mininet not importable ({facts.mininet_error}; "
                        f"as root: make sysdeps, or apt-get install mininet)")
    if facts.missing_tools:
        blockers.append(f"missing {', '.join(facts.missing_tools)} on PATH")
    if requested == "local":
        return ModeChoice("local", "")
    if requested == "mininet":
        if blockers:
            return ModeChoice("mininet", "", "cannot start a Mininet rack: " + "; ".join(blockers))
        return ModeChoice("mininet", "")
    if blockers:
        return ModeChoice("local", "falling back to local mode (switch and workers as processes "
                                 "on loopback): " + "; ".join(blockers))
    return ModeChoice("mininet", "root and Mininet available: Mininet rack")
