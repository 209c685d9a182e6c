"""Link impairments of the rack: delay, jitter, loss, duplication, reordering per worker link.

Bandwidth is an HTB class on both ends of the link. With netem in the kernel, each worker link
also gets `netem delay/loss/duplicate/reorder` on both ends (under the HTB class), as Mininet's
TCLink would do. Kernels built without sch_netem (this project's CI VM is one) get the same
effects another way:
- loss and duplication: nftables netdev rules (`numgen random ... drop` / `dup to`) at the
  host interface's egress (uplink) and ingress (downlink loss), and at the switch interface's
  egress (downlink duplication), so each direction loses/duplicates independently;
- delay, jitter and reordering: topology/linkdelay.py inside the worker's namespace holds the
  host's IPv4 packets (both directions, via NFQUEUE) for the delay; with reordering a packet
  skips the queue, as netem's `reorder` does.
Only the worker links are impaired; the coordinator's link (job control) stays clean.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from topology.rack import HostPlan
from nina.procs import REPO
from topology.runenv import project_python

ROOT_NFT_TABLE = "nina_rack"          # the one nft table this module creates in the root netns
HOST_NFT_TABLE = "nina_link"          # per worker namespace; dies with the namespace
NFQUEUE_NUM = 0
_PPM = 1_000_000


@dataclass(frozen=True)
class LinkShape:
    bw_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    dup_pct: float = 0.0
    reorder_pct: float = 0.0

    def validate(self) -> None:
        if self.bw_mbit is not None and self.bw_mbit <= 0:
            raise ValueError(f"--bw must be > 0 Mbit/s, got {self.bw_mbit}")
        for name in ("delay_ms", "jitter_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.split('_')[0]} must be >= 0")
        for name in ("loss_pct", "dup_pct", "reorder_pct"):
            v = getattr(self, name)
            if not 0 <= v < 100:
                raise ValueError(f"--{name.split('_')[0]} must be a percentage in [0, 100), "
                                 f"got {v}")

    @property
    def needs_delay(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    @property
    def impaired(self) -> bool:
        return self.needs_delay or self.loss_pct > 0 or self.dup_pct > 0

    def describe(self) -> str:
        parts = [f"bw {self.bw_mbit:g} Mbit/s" if self.bw_mbit else "bw unlimited"]
        if self.delay_ms or self.jitter_ms:
            parts.append(f"delay {self.delay_ms:g}ms" +
                         (f" +-{self.jitter_ms:g}ms" if self.jitter_ms else ""))
        for label, v in (("loss", self.loss_pct), ("dup", self.dup_pct),
                         ("reorder", self.reorder_pct)):
            if v:
                parts.append(f"{label} {v:g}%")
        return ", ".join(parts)


def htb_commands(dev: str, bw_mbit: float, minor: int = 1, qdisc: bool = True,
                 default: int = 1) -> list[list[str]]:
    """tc commands for an HTB class 5:<minor> of bw_mbit on dev (with the root qdisc, whose
    unclassified traffic goes to 5:<default>; a missing default class: unshaped). An explicit
    quantum (one MTU frame) keeps HTB quiet at high rates."""
    cmds = [["tc", "qdisc", "add", "dev", dev, "root", "handle", "5:", "htb",
             "default", str(default)]] if qdisc else []
    return cmds + [["tc", "class", "add", "dev", dev, "parent", "5:", "classid", f"5:{minor}",
                    "htb", "rate", f"{bw_mbit}mbit", "quantum", "1514"]]


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=20)


def _host_run(host, cmd: list[str], stdin: str | None = None) -> tuple[int, str]:
    """Run a command inside a Mininet host's namespace; (returncode, stderr)."""
    p = host.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)
    _, err = p.communicate(stdin, timeout=20)
    return p.returncode, err.strip()


def netem_available() -> bool:
    """Is sch_netem in this kernel? Probed on a throw-away veth pair of our own name."""
    name = f"ninaprobe{os.getpid() % 100000}"
    if _run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"]).returncode:
        return False
    try:
        return _run(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay",
                     "1ms"]).returncode == 0
    finally:
        _run(["ip", "link", "del", name])


def _netem_args(s: LinkShape) -> list[str]:
    args = []
    if s.needs_delay or s.reorder_pct:
        args += ["delay", f"{s.delay_ms}ms"] + ([f"{s.jitter_ms}ms"] if s.jitter_ms else [])
    if s.loss_pct:
        args += ["loss", f"{s.loss_pct}%"]
    if s.dup_pct:
        args += ["duplicate", f"{s.dup_pct}%"]
    if s.reorder_pct:
        args += ["reorder", f"{s.reorder_pct}%"]
    return args


def _nft_rules(s: LinkShape, dev: str) -> list[str]:
    rules = []
    if s.loss_pct:
        rules.append(f"numgen random mod {_PPM} < {round(s.loss_pct / 100 * _PPM)} drop")
    if s.dup_pct:
        rules.append(f'numgen random mod {_PPM} < {round(s.dup_pct / 100 * _PPM)} '
                     f'dup to "{dev}"')
    return rules


def _chain(name: str, hook: str, dev: str, rules: list[str]) -> str:
    body = "\n".join(f"    {r}" for r in rules)
    return (f'  chain {name} {{\n    type filter hook {hook} device "{dev}" priority 0; '
            f'policy accept;\n{body}\n  }}\n')


class Impairments:
    """Applies a LinkShape to the worker links of a built Mininet rack and undoes it."""

    def __init__(self, shape: LinkShape, log=print):
        self.shape = shape
        self.log = log
        self.procs: list[subprocess.Popen] = []     # linkdelay processes we started
        self.cmds: dict[int, list[str]] = {}
        self.root_table = False
        self.method = "none"

    def apply(self, net, workers: list[HostPlan], run_dir: str) -> None:
        s = self.shape
        if s.reorder_pct and not s.needs_delay:
            self.log("note: --reorder needs --delay (packets overtake delayed ones); ignored")
            s = LinkShape(s.bw_mbit, s.delay_ms, s.jitter_ms, s.loss_pct, s.dup_pct, 0.0)
            self.shape = s
        if s.bw_mbit:
            for h in workers:
                self._htb(net.get(h.name), h.host_intf)
                self._htb(None, h.switch_intf)
            self.method = "htb"
        if not s.impaired:
            return
        if netem_available():
            self.method = "htb+netem" if s.bw_mbit else "netem"
            for h in workers:
                self._netem(net.get(h.name), h.host_intf)
                self._netem(None, h.switch_intf)
            return
        self.method = ("htb+" if s.bw_mbit else "") + "nftables" + (
            "+nfqueue" if s.needs_delay else "")
        if s.loss_pct or s.dup_pct:
            self._nft(net, workers)
        if s.needs_delay:
            if not shutil.which("iptables"):
                raise RuntimeError("this kernel has no netem and `iptables` is not installed "
                                   "(apt-get install iptables): cannot emulate delay")
            for h in workers:
                self._delayer(net.get(h.name), h, run_dir)

    def _tc(self, host, cmd: list[str]) -> None:
        """Run a tc command in `host`'s namespace (None: the root namespace, switch side)."""
        if host is not None:
            rc, err = _host_run(host, cmd)
        else:
            r = _run(cmd)
            rc, err = r.returncode, r.stderr
        if rc:
            raise RuntimeError(f"{' '.join(cmd)}: {err.strip()}")

    def _htb(self, host, dev: str) -> None:
        for cmd in htb_commands(dev, self.shape.bw_mbit):
            self._tc(host, cmd)

    def _netem(self, host, dev: str) -> None:
        where = ["parent", "5:1", "handle", "10:"] if self.shape.bw_mbit else ["root"]
        self._tc(host, ["tc", "qdisc", "add", "dev", dev] + where + ["netem"]
                 + _netem_args(self.shape))

    def _nft(self, net, workers: list[HostPlan]) -> None:
        """Uplink loss and duplication at the host's egress; downlink loss at the host's
        ingress (a drop at the switch's egress would fail the switch's own send), downlink
        duplication at the switch's egress."""
        s = self.shape
        if not shutil.which("nft"):
            raise RuntimeError("this kernel has no netem and `nft` is not installed "
                               "(apt-get install nftables): cannot emulate loss/duplication")
        for h in workers:
            chains = _chain("egress", "egress", h.host_intf, _nft_rules(s, h.host_intf))
            if s.loss_pct:
                chains += _chain("ingress", "ingress", h.host_intf,
                                 _nft_rules(LinkShape(loss_pct=s.loss_pct), h.host_intf))
            rc, err = _host_run(net.get(h.name), ["nft", "-f", "-"],
                                f"table netdev {HOST_NFT_TABLE} {{\n{chains}}}\n")
            if rc:
                raise RuntimeError(f"nft ({h.name}): {err}")
        if s.dup_pct:
            dup = LinkShape(dup_pct=s.dup_pct)
            chains = "".join(_chain(h.switch_intf.replace("-", "_"), "egress", h.switch_intf,
                                    _nft_rules(dup, h.switch_intf)) for h in workers)
            r = _run(["nft", "-f", "-"], f"table netdev {ROOT_NFT_TABLE} {{\n{chains}}}\n")
            if r.returncode:
                raise RuntimeError(f"nft (switch side): {r.stderr.strip()}")
            self.root_table = True

    def _delayer(self, host, h: HostPlan, run_dir: str) -> None:
        s = self.shape
        for rule in (["iptables", "-A", "OUTPUT", "-o", h.host_intf],
                     ["iptables", "-t", "mangle", "-A", "PREROUTING", "-i", h.host_intf]):
            rc, err = _host_run(host, rule + ["-j", "NFQUEUE", "--queue-num", str(NFQUEUE_NUM),
                                              "--queue-bypass"])
            if rc:
                raise RuntimeError(f"iptables ({h.name}): {err}")
        cmd = [project_python(), "-m", "topology.linkdelay", "--queue", str(NFQUEUE_NUM),
               "--delay-ms", str(s.delay_ms), "--jitter-ms", str(s.jitter_ms),
               "--reorder", str(s.reorder_pct / 100), "--parent", str(os.getpid())]
        with open(os.path.join(run_dir, f"linkdelay-{h.name}.log"), "w") as log:
            p = host.popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(p)
        self.cmds[p.pid] = cmd

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def started(self) -> list[tuple[int, list[str]]]:
        return [(p.pid, self.cmds.get(p.pid)) for p in self.procs]

    def teardown(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=3)
        self.procs.clear()
        if self.root_table:
            _run(["nft", "delete", "table", "netdev", ROOT_NFT_TABLE])
            self.root_table = False


def remove_leftovers() -> None:
    """After a crash: drop our root-namespace nft table if a previous rack left it."""
    if shutil.which("nft"):
        _run(["nft", "delete", "table", "netdev", ROOT_NFT_TABLE])

