"""The link of one compose container: shape its interface from inside, then run its command.

    python -m topology.container_link [--dev eth0] -- COMMAND...

docker-compose.yml makes this every service's entrypoint; the shape comes from the service's
environment, so each container has its own (a compose override file sets other values per
service):
- NINA_LINK_BW (Mbit/s): an HTB class on the container's egress. On a worker that is its
  uplink. With NINA_LINK_PEERS (comma-separated IPs, the switch service's setting) each peer
  gets a class of its own instead, so the switch's egress is one downlink per worker, as the
  switch ports of the Mininet rack are; other traffic (P4Runtime, coordination) is unshaped.
- NINA_LINK_LOSS (percent): each egress packet is dropped with that probability (netem where
  the kernel has it, else an nftables netdev egress rule, as topology/impair.py does).
Empty or unset: no shaping. The container needs CAP_NET_ADMIN (compose: cap_add NET_ADMIN);
tc and nft change only the container's own network namespace. A bad value or a failing tc is
one line on stderr and exit status 2 (the service fails at once, not half-shaped).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys

from topology.impair import (LinkShape, htb_commands, netem_args, netem_available, nft_chain,
                             nft_loss_rules)

NFT_TABLE = "nina_link"
PEER_MINOR0 = 10          # HTB class minors of the peers: 10, 11, ...


def shape_from_env(env=os.environ) -> tuple[LinkShape, list[str]]:
    """(shape, peers) from NINA_LINK_*; ValueError with the variable's name on a bad value."""
    def number(name: str) -> float | None:
        v = env.get(name, "").strip()
        if not v:
            return None
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"{name}={v!r} is not a number") from None
        if x != x:
            raise ValueError(f"{name}={v!r} is not a number")
        return x
    bw, loss = number("NINA_LINK_BW"), number("NINA_LINK_LOSS")
    shape = LinkShape(bw_mbit=bw, loss_pct=loss or 0.0)
    try:
        shape.validate()
    except ValueError as e:
        raise ValueError(str(e).replace("--bw", "NINA_LINK_BW").replace("--loss",
                                                                        "NINA_LINK_LOSS"))
    peers = [p.strip() for p in env.get("NINA_LINK_PEERS", "").split(",") if p.strip()]
    for p in peers:
        try:
            ipaddress.IPv4Address(p)
        except ValueError:
            raise ValueError(f"NINA_LINK_PEERS: {p!r} is not an IPv4 address") from None
    return shape, peers


def link_commands(shape: LinkShape, peers: list[str], dev: str,
                  netem: bool) -> tuple[list[list[str]], str | None]:
    """(tc commands, nft ruleset or None) that give `dev` the shape."""
    cmds: list[list[str]] = []
    nft = None
    if shape.bw_mbit:
        if peers:
            cmds += htb_commands(dev, shape.bw_mbit, PEER_MINOR0, default=0)
            for i, ip in enumerate(peers[1:], 1):
                cmds += htb_commands(dev, shape.bw_mbit, PEER_MINOR0 + i, qdisc=False)
            for i, ip in enumerate(peers):
                cmds.append(["tc", "filter", "add", "dev", dev, "parent", "5:", "protocol",
                             "ip", "prio", "1", "u32", "match", "ip", "dst", f"{ip}/32",
                             "flowid", f"5:{PEER_MINOR0 + i}"])
        else:
            cmds += htb_commands(dev, shape.bw_mbit)
    if shape.loss_pct:
        if netem:
            minors = [PEER_MINOR0 + i for i in range(len(peers))] if peers else [1]
            parents = ([["parent", f"5:{m}", "handle", f"{20 + j}:"]
                        for j, m in enumerate(minors)] if shape.bw_mbit else [["root"]])
            for where in parents:
                cmds.append(["tc", "qdisc", "add", "dev", dev, *where, "netem",
                             *netem_args(LinkShape(loss_pct=shape.loss_pct))])
        else:
            rules = nft_loss_rules(LinkShape(loss_pct=shape.loss_pct), dev)
            if peers:
                match = "ip daddr { " + ", ".join(peers) + " } "
                rules = [match + r for r in rules]
            nft = f"table netdev {NFT_TABLE} {{\n{nft_chain('egress', 'egress', dev, rules)}}}\n"
    return cmds, nft


def apply(shape: LinkShape, peers: list[str], dev: str) -> str:
    """Shape `dev`; returns a one-line description (RuntimeError on a failing command)."""
    netem = bool(shape.loss_pct) and netem_available()
    cmds, nft = link_commands(shape, peers, dev, netem)
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    if nft:
        r = subprocess.run(["nft", "-f", "-"], input=nft, capture_output=True, text=True,
                           timeout=20)
        if r.returncode:
            raise RuntimeError(f"nft: {r.stderr.strip()}")
    where = f"to each of {len(peers)} peers" if peers else "egress"
    how = "htb" + ("+netem" if netem else "+nftables" if nft else "")
    return f"link {dev} {where}: {shape.describe()} ({how})"


def link_stats(dev: str) -> str:
    """One line per HTB class of dev: bytes and packets sent, drops (after the job)."""
    r = subprocess.run(["tc", "-s", "class", "show", "dev", dev], capture_output=True,
                       text=True, timeout=20)
    lines, cls = [], None
    for line in r.stdout.splitlines():
        words = line.split()
        if words[:2] == ["class", "htb"]:
            cls = f"class {words[2]} rate {words[words.index('rate') + 1]}" \
                if "rate" in words else f"class {words[2]}"
        elif words[:1] == ["Sent"] and cls:
            dropped = words[words.index("(dropped") + 1].rstrip(",") \
                if "(dropped" in words else "0"
            lines.append(f"{cls}: sent {words[1]} bytes {words[3]} pkt, dropped {dropped}")
            cls = None
    return "; ".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m topology.container_link",
        description="Shape this container's interface from NINA_LINK_BW / NINA_LINK_LOSS / "
                    "NINA_LINK_PEERS, run COMMAND (signals passed on), then print what the "
                    "shaped link carried; exits with COMMAND's status.")
    ap.add_argument("--dev", default="eth0", help="the interface (default eth0)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("no command after --")
    try:
        shape, peers = shape_from_env()
        shaped = bool(shape.bw_mbit or shape.loss_pct)
        if shaped:
            print(f"container_link: {apply(shape, peers, a.dev)}", file=sys.stderr, flush=True)
    except (ValueError, RuntimeError) as e:
        print(f"container_link: error: {e}", file=sys.stderr)
        return 2
    if not shaped:
        try:
            os.execvp(cmd[0], cmd)       # nothing to report afterwards: become the command
        except OSError as e:
            print(f"container_link: error: cannot run {cmd[0]}: {e}", file=sys.stderr)
            return 2
    try:
        child = subprocess.Popen(cmd)
    except OSError as e:
        print(f"container_link: error: cannot run {cmd[0]}: {e}", file=sys.stderr)
        return 2
    # PID 1 of the container: `docker stop` signals us; the command must get it to stop cleanly
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, f: child.send_signal(s))
    rc = child.wait()
    if shape.bw_mbit:
        print(f"container_link: {a.dev} carried {link_stats(a.dev)}", file=sys.stderr,
              flush=True)
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
