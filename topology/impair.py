"""Link impairments of the rack: bandwidth, delay, jitter, loss, duplication, reordering.

Every worker link runs through its link node (topology/rack.py): a namespace with a bridge
between l<p>-eth0 (facing the host) and l<p>-eth1 (facing the switch). Bandwidth is an HTB class
on both ends of the link (the host's egress for the uplink, the switch port's egress for the
downlink); everything else happens in the link node, between the two veths, where no end's
network stack owns the frame:
- with sch_netem in the kernel: netem on each link-node port's egress;
- without it (this project's CI VM): loss as an nftables netdev rule at each port's ingress
  (`numgen random ... drop`), duplication at each port's egress (`dup to`), and delay, jitter
  and reordering by topology/linkdelay.py, which holds the bridge's IPv4 frames from NFQUEUE.
Why not at the ends, as before: a drop in the sender's egress hook is returned to the sender as
ENOBUFS (ping re-sends, TCP re-queues: no loss seen), a frame delayed in the sender's OUTPUT
hook throttles its TCP (small queues count it as queued in the host), and one delayed in the
receiver's PREROUTING hook already has its receive timestamp (ping missed that delay).
Only the worker links are impaired; the coordinator's link (job control) stays direct.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from nina.procs import REPO
from topology.linkdelay import DOWNLINK_QUEUE, QUEUE_MAXLEN, READY, UPLINK_QUEUE
from topology.rack import HostPlan
from topology.runenv import project_python

ROOT_NFT_TABLE = "nina_rack"      # the root-namespace table of older racks: removed if left
LINK_NFT_TABLE = "nina_link"      # per link node; dies with the namespace
BRIDGE = "nina-br"                # the link node's bridge between its two ports
OFFLOADS_OFF = ["tx", "off", "tso", "off", "gso", "off", "gro", "off"]
_PPM = 1_000_000
MTU_FRAME = 1514
# Loss/duplication chains of a link node: (name, hook, port, what) per direction.
UP, DOWN = "up", "down"
READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class LinkShape:
    bw_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    dup_pct: float = 0.0
    reorder_pct: float = 0.0

    def validate(self) -> None:
        """Refuse what cannot be emulated as asked (one line each, for the user)."""
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
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"--jitter {self.jitter_ms:g} exceeds --delay {self.delay_ms:g}: "
                             f"a delay cannot go below 0, so the spread would be clipped, not "
                             f"the +-{self.jitter_ms:g} ms asked for")
        if self.reorder_pct and not self.delay_ms:
            raise ValueError("--reorder needs --delay: a reordered packet is one sent without "
                             "the delay, overtaking the delayed ones")
        held = self.frames_in_flight()
        if held > QUEUE_MAXLEN / 2:
            raise ValueError(f"--bw {self.bw_mbit:g} with --delay {self.delay_ms:g} "
                             f"(+-{self.jitter_ms:g}) ms holds ~{held:.0f} full-size frames "
                             f"per link direction; the delay queue holds {QUEUE_MAXLEN} and "
                             f"would drop: lower --bw or --delay")

    def frames_in_flight(self) -> float:
        """Full-size frames a link direction holds at its bandwidth (0 if unlimited)."""
        if not self.bw_mbit:
            return 0.0
        return self.bw_mbit * 1e6 / 8 / MTU_FRAME * (self.delay_ms + self.jitter_ms) / 1e3

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


HTB_BURST_SECONDS = 1e-3    # an HTB class's bucket: this much line time...
HTB_MIN_BURST = 16 << 10    # ...and at least this many bytes (about ten full frames)


def htb_burst_bytes(bw_mbit: float) -> int:
    """The token bucket of a shaped link. With HTB's default bucket (about one frame) every
    frame throttles the class, and each throttle re-arms the qdisc's hrtimer: in a VM that is a
    timer reprogramming per frame, which halved the rack's all-reduce rate (issue 12). A bucket
    of 1 ms of line time throttles once per ~ten frames; the link still never carries more than
    rate x T + bucket bytes in any T (1 ms of extra line time at most, after an idle spell)."""
    return max(HTB_MIN_BURST, int(bw_mbit * 1e6 / 8 * HTB_BURST_SECONDS))


def htb_commands(dev: str, bw_mbit: float, minor: int = 1, qdisc: bool = True,
                 default: int = 1) -> list[list[str]]:
    """tc commands for an HTB class 5:<minor> of bw_mbit on dev (with the root qdisc, whose
    unclassified traffic goes to 5:<default>; a missing default class: unshaped). An explicit
    quantum (one MTU frame) keeps HTB quiet at high rates; the bucket is htb_burst_bytes."""
    cmds = [["tc", "qdisc", "add", "dev", dev, "root", "handle", "5:", "htb",
             "default", str(default)]] if qdisc else []
    burst = str(htb_burst_bytes(bw_mbit))
    return cmds + [["tc", "class", "add", "dev", dev, "parent", "5:", "classid", f"5:{minor}",
                    "htb", "rate", f"{bw_mbit}mbit", "quantum", "1514", "burst", burst,
                    "cburst", burst]]


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=20)


def _host_run(host, cmd: list[str], stdin: str | None = None) -> tuple[int, str]:
    """Run a command inside a Mininet node's namespace; (returncode, stdout + stderr)."""
    p = host.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   text=True)
    out, _ = p.communicate(stdin, timeout=20)
    return p.returncode, out.strip()


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


def netem_args(s: LinkShape) -> list[str]:
    """The `tc qdisc ... netem` arguments of a shape (where the kernel has sch_netem)."""
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


def nft_loss_rules(s: LinkShape, dev: str) -> list[str]:
    """The random drop / duplicate rule of a link-node chain (each counts what it did)."""
    rules = []
    if s.loss_pct:
        rules.append(f"numgen random mod {_PPM} < {round(s.loss_pct / 100 * _PPM)} "
                     f"counter drop")
    if s.dup_pct:
        rules.append(f'numgen random mod {_PPM} < {round(s.dup_pct / 100 * _PPM)} '
                     f'counter dup to "{dev}"')
    return rules


def link_chains(h: HostPlan) -> dict[str, tuple[str, str]]:
    """chain name -> (hook, port) in a worker's link node: loss where a frame enters the node
    (silent to its sender, whose veth already delivered it), duplication where it leaves."""
    return {f"{UP}_loss": ("ingress", h.link_host_intf),
            f"{DOWN}_loss": ("ingress", h.link_switch_intf),
            f"{UP}_dup": ("egress", h.link_switch_intf),
            f"{DOWN}_dup": ("egress", h.link_host_intf)}


def _nft_table(s: LinkShape, h: HostPlan) -> str:
    chains = []
    for name, (hook, dev) in link_chains(h).items():
        only = LinkShape(loss_pct=s.loss_pct) if name.endswith("loss") else \
            LinkShape(dup_pct=s.dup_pct)
        rules = nft_loss_rules(only, dev)
        if not rules:
            continue
        chains.append(nft_chain(name, hook, dev, ["counter"] + rules))
    return f"table netdev {LINK_NFT_TABLE} {{\n{''.join(chains)}}}\n"


def nft_chain(name: str, hook: str, dev: str, rules: list[str]) -> str:
    """One netdev chain on `dev` (the rack's link nodes and the containers' links use it)."""
    body = "\n".join(f"    {r}" for r in rules)
    return (f'  chain {name} {{\n    type filter hook {hook} device "{dev}" priority 0; '
            f'policy accept;\n{body}\n  }}\n')


def nft_counts(node) -> dict[str, tuple[int, int]]:
    """chain -> (frames seen, frames dropped or duplicated) of a link node's nft table."""
    rc, out = _host_run(node, ["nft", "-j", "list", "table", "netdev", LINK_NFT_TABLE])
    if rc:
        return {}
    counts: dict[str, list[int]] = {}
    for item in json.loads(out).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        c = [e["counter"]["packets"] for e in rule.get("expr", []) if "counter" in e]
        if c:
            counts.setdefault(rule["chain"], []).append(c[0])
    return {k: (v[0], v[1] if len(v) > 1 else 0) for k, v in counts.items()}


class Impairments:
    """Wires the worker links of a built Mininet rack through their link nodes and applies a
    LinkShape; undoes what the namespaces do not take with them."""

    def __init__(self, shape: LinkShape, log=print):
        self.shape = shape
        self.log = log
        self.procs: list[subprocess.Popen] = []     # linkdelay processes we started
        self.cmds: dict[int, list[str]] = {}
        self.delay_logs: dict[str, str] = {}        # link node -> its delayer's log
        self.method = "none"

    def apply(self, net, workers: list[HostPlan], run_dir: str) -> None:
        s = self.shape                  # validated by the rack before it built anything
        for h in workers:
            self._bridge(net.get(h.link_node), h)
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
                node = net.get(h.link_node)
                for dev in (h.link_switch_intf, h.link_host_intf):   # uplink, downlink
                    self._tc(node, ["tc", "qdisc", "add", "dev", dev, "root", "netem"]
                             + netem_args(s))
            return
        self.method = ("htb+" if s.bw_mbit else "") + "nftables" + (
            "+nfqueue" if s.needs_delay else "")
        if s.loss_pct or s.dup_pct:
            if not shutil.which("nft"):
                raise RuntimeError("this kernel has no netem and `nft` is not installed "
                                   "(apt-get install nftables): cannot emulate loss/duplication")
            for h in workers:
                rc, err = _host_run(net.get(h.link_node), ["nft", "-f", "-"], _nft_table(s, h))
                if rc:
                    raise RuntimeError(f"nft ({h.link_node}): {err}")
        if s.needs_delay:
            if not shutil.which("iptables"):
                raise RuntimeError("this kernel has no netem and `iptables` is not installed "
                                   "(apt-get install iptables): cannot emulate delay")
            for h in workers:
                self._delayer(net.get(h.link_node), h, run_dir)

    def _bridge(self, node, h: HostPlan) -> None:
        """The link node's bridge; with a delay it hands IPv4 frames to iptables FORWARD."""
        call_ipt = "1" if self.shape.needs_delay else "0"
        lines = ["set -e",
                 "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                 "net.ipv6.conf.default.disable_ipv6=1",
                 # br_netfilter, where loaded, defaults every namespace to calling iptables
                 # for bridged frames: the full netfilter path per frame, a sixth of the
                 # switch's CPU in the rack. Only the bridge's own flag (delay) asks for it.
                 "for f in iptables ip6tables arptables; do sysctl -qw "
                 "net.bridge.bridge-nf-call-$f=0 2>/dev/null || true; done",
                 f"ip link add name {BRIDGE} type bridge stp_state 0 nf_call_iptables {call_ipt}"]
        for dev in (h.link_host_intf, h.link_switch_intf):
            lines += [f"ethtool -K {dev} {' '.join(OFFLOADS_OFF)} >/dev/null 2>&1 || true",
                      f"ip link set {dev} master {BRIDGE}", f"ip link set {dev} up"]
        lines.append(f"ip link set {BRIDGE} up")
        rc, out = _host_run(node, ["sh", "-c", "\n".join(lines)])
        if rc:
            raise RuntimeError(f"link node {h.link_node}: bridge setup failed: {out}")

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

    def _delayer(self, node, h: HostPlan, run_dir: str) -> None:
        """Start the link node's delayer, wait until it has bound its queues, then queue the
        bridge's frames to it by the port they came in on (no --queue-bypass: were it to die,
        the link goes dark instead of silently losing its delay)."""
        s = self.shape
        cmd = [project_python(), "-m", "topology.linkdelay",
               "--delay-ms", str(s.delay_ms), "--jitter-ms", str(s.jitter_ms),
               "--reorder", str(s.reorder_pct / 100), "--parent", str(os.getpid())]
        path = os.path.join(run_dir, f"linkdelay-{h.link_node}.log")
        with open(path, "w") as log:
            p = node.popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(p)
        self.cmds[p.pid] = cmd
        self.delay_logs[h.link_node] = path
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with open(path) as f:
                text = f.read()
            if READY in text:
                break
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"link delayer in {h.link_node} did not start: "
                                   f"{text.strip()[-300:] or 'no output'} (log {path})")
            time.sleep(0.02)
        for dev, queue in ((h.link_host_intf, UPLINK_QUEUE), (h.link_switch_intf,
                                                              DOWNLINK_QUEUE)):
            rc, err = _host_run(node, ["iptables", "-w", "-A", "FORWARD", "-m", "physdev",
                                       "--physdev-in", dev, "-j", "NFQUEUE",
                                       "--queue-num", str(queue)])
            if rc:
                raise RuntimeError(f"iptables ({h.link_node}): {err}")

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


def remove_leftovers() -> None:
    """After a crash: drop the root-namespace nft table an older rack may have left."""
    if shutil.which("nft"):
        _run(["nft", "delete", "table", "netdev", ROOT_NFT_TABLE])
