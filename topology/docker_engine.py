"""The Docker engine for the compose rack: use a running one, or (as root) bring one up and
take it down again, leaving the host's firewall and forwarding exactly as they were.

A running engine (`docker info` answers) is used as it is and left running. Otherwise, as root,
Debian's docker.io is installed if dockerd is missing (with services kept from starting during
the install: Debian's postinst would start a daemon with its default iptables handling), and
dockerd is started for the duration of the `with` block with its host-changing features off:
- --iptables=false --ip-masq=false: no FORWARD policy DROP, no DOCKER chains, no MASQUERADE.
  The compose network is a bridge of its own; containers on it reach each other at L2 and
  need no route out (the image is built offline, see topology/docker_image.py);
- --ip-forward=false: net.ipv4.ip_forward stays as it was;
- --bridge=none: no docker0 on the host (compose creates the one bridge it needs).
The iptables/ip6tables rulesets and ip_forward are read before the start and compared after
the stop; anything that differs anyway is put back (iptables-restore of the saved ruleset).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from topology.runenv import REPO

DOCKERD_FLAGS = ["--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none"]
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
START_TIMEOUT = 60.0
POLICY_RC_D = "/usr/sbin/policy-rc.d"


class EngineError(RuntimeError):
    """No Docker engine can be used here; the message says what is missing."""


def _run(cmd: list[str], timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def docker_cli() -> str | None:
    return shutil.which("docker")


def engine_answers() -> bool:
    """Does a Docker engine answer on the default socket?"""
    cli = docker_cli()
    if cli is None:
        return False
    try:
        return _run([cli, "info", "--format", "{{.ServerVersion}}"], timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def server_version() -> str:
    r = _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=20)
    return r.stdout.strip() or "?"


def _firewall_state() -> dict[str, str]:
    """The host state dockerd could change: iptables rulesets (v4, v6) and ip_forward."""
    state = {}
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            r = _run([tool], timeout=20)
            # drop the comment lines: they carry timestamps
            state[tool] = "\n".join(line for line in r.stdout.splitlines()
                                    if not line.startswith("#"))
    try:
        with open(IP_FORWARD) as f:
            state["ip_forward"] = f.read().strip()
    except OSError:
        pass
    return state


def _restore_firewall(before: dict[str, str], log) -> list[str]:
    """Put back whatever differs from `before`; returns what had changed."""
    after = _firewall_state()
    changed = [k for k in before if after.get(k) != before[k]]
    for k in changed:
        if k == "ip_forward":
            with open(IP_FORWARD, "w") as f:
                f.write(before[k] + "\n")
        else:
            tool = k.replace("-save", "-restore")
            # an empty saved ruleset: flush what appeared (restore of nothing would keep it)
            text = before[k] + "\n" if before[k].strip() else ""
            if text:
                _run([tool], input=text, timeout=20)
            else:
                for table in ("filter", "nat", "mangle", "raw"):
                    _run([k.replace("-save", ""), "-t", table, "-F"], timeout=20)
                    _run([k.replace("-save", ""), "-t", table, "-X"], timeout=20)
                    if table == "filter":
                        for chain in ("INPUT", "FORWARD", "OUTPUT"):
                            _run([k.replace("-save", ""), "-P", chain, "ACCEPT"], timeout=20)
    if changed:
        log(f"dockerd changed the host's {', '.join(changed)}: restored")
    return changed


def install_docker(log=print) -> None:
    """apt-get install docker.io, with services kept from starting (policy-rc.d exit 101)."""
    if os.geteuid() != 0:
        raise EngineError("no Docker engine answers and dockerd is not installed: install "
                          "Docker (Debian: apt-get install docker.io docker-compose) or run "
                          "this as root, which installs docker.io")
    if not shutil.which("apt-get"):
        raise EngineError("dockerd is not installed and this is not a Debian system (no "
                          "apt-get): install a Docker engine and start it")
    log("installing Debian's docker.io (apt-get; services are not started by the install)")
    own_policy = not os.path.exists(POLICY_RC_D)
    if own_policy:
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# written by NINA's topology/docker_engine.py for one "
                    "apt-get install; removed after it\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        r = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
                 timeout=900, env=env)
        if r.returncode:
            _run(["apt-get", "update", "-qq"], timeout=600, env=env)
            r = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                      "docker.io"], timeout=900, env=env)
    finally:
        if own_policy:
            os.unlink(POLICY_RC_D)
    if r.returncode or not shutil.which("dockerd"):
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        raise EngineError(f"apt-get install docker.io failed: {tail[0]}")


class Engine:
    """`with Engine(): ...` — a Docker engine answers inside the block.

    started: whether this object started dockerd (and so stops it at exit)."""

    def __init__(self, log=print, state_dir: str | None = None):
        self.log = log
        self.state_dir = state_dir or os.path.join(REPO, "build", "docker")
        self.proc: subprocess.Popen | None = None
        self.before: dict[str, str] = {}
        self.changed: list[str] = []

    @property
    def started(self) -> bool:
        return self.proc is not None

    def __enter__(self) -> "Engine":
        if engine_answers():
            return self
        if os.geteuid() != 0:
            raise EngineError("no Docker engine answers (docker info failed): start dockerd "
                              "(sudo dockerd --iptables=false --ip-masq=false &), or run this "
                              "as root, which installs and starts one for the run")
        if not shutil.which("dockerd"):
            install_docker(self.log)
        if docker_cli() is None:
            raise EngineError("dockerd is installed but the docker command is not on PATH")
        self.start()
        return self

    def start(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        self.before = _firewall_state()
        log_path = os.path.join(self.state_dir, "dockerd.log")
        self.log(f"starting dockerd {' '.join(DOCKERD_FLAGS)} (log {log_path}); stopped again "
                 f"at the end")
        with open(log_path, "w") as out:
            self.proc = subprocess.Popen(["dockerd", *DOCKERD_FLAGS], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                self._restore()
                tail = open(log_path).read().strip().splitlines()[-3:]
                raise EngineError("dockerd exited at start: " + " | ".join(tail))
            if engine_answers():
                return
            time.sleep(0.3)
        self.stop()
        raise EngineError(f"dockerd did not answer within {START_TIMEOUT:.0f} s (see {log_path})")

    def stop(self) -> None:
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self._restore()
        self.log("dockerd stopped")

    def _restore(self) -> None:
        if self.before:
            self.changed = _restore_firewall(self.before, self.log)

    def __exit__(self, *exc) -> None:
        self.stop()
