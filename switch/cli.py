"""`nina switch`: run the embedded data plane (local UDP mode or raw interfaces)."""
from __future__ import annotations

import argparse
import sys

from nina import p4spec
from nina.config import DEFAULT_SWITCH_IP
from nina.wire import UDP_PORT
from switch.io_udp import SOCKET_BUFFER
from switch.raw_io_options import (DEFAULT_RX_MIB, FRAMES_PER_MIB, IO_KINDS, MAX_TX_SEGMENTS,
                                   RING_VERSION, ring_version)
from nina.cli_types import grpc_address, positive_int

DESCRIPTION = """\
Run the embedded NINA switch: the Python/numpy implementation of the P4 pipeline.

  local   one UDP socket on loopback (no root); every worker is ingress port 0; packets
          move as UDP_GRO/UDP_SEGMENT batches (NINA_UDP_IO=mmsg: plain recvmmsg/sendmmsg)
  ifaces  raw sockets on the named interfaces (root); ports 1..N in the given order

Jobs are installed by a controller over P4Runtime (--grpc) or, without one, from a JSON file
(--jobs: a list of JobSpec fields). Ctrl-C (or SIGTERM) stops and prints the counters."""


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', 'HOST' or ':PORT' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(UDP_PORT)
    host = host or DEFAULT_SWITCH_IP
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port {p} out of range 0..65535")
    return host, p


def register(subparsers) -> None:
    p = subparsers.add_parser("switch", help="run the embedded switch (local UDP or raw ifaces)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("local", "ifaces"), default="local",
                   help="local: UDP socket on loopback; ifaces: raw sockets (default local)")
    p.add_argument("--listen", type=parse_listen, default=(DEFAULT_SWITCH_IP, UDP_PORT),
                   metavar="HOST:PORT",
                   help=f"local mode address (default {DEFAULT_SWITCH_IP}:{UDP_PORT}; "
                        f"port 0 picks a free one)")
    p.add_argument("--ifaces", default="", metavar="IF1,IF2,...",
                   help="ifaces mode: interfaces, switch ports 1..N in this order")
    p.add_argument("--trace", metavar="FILE",
                   help="write a trace record per packet to FILE (+ FILE.json header)")
    p.add_argument("--pool-slots", type=positive_int, default=p4spec.POOL_SLOTS, metavar="N",
                   help=f"aggregation slots in the switch (default {p4spec.POOL_SLOTS})")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed of the data plane's random source (C_M rounding, loss)")
    p.add_argument("--grpc", type=grpc_address, metavar="ADDR", default=None,
                   help="also serve P4Runtime on ADDR (e.g. 127.0.0.1:9559) for the controller")
    p.add_argument("--socket-buffer", type=positive_int, default=SOCKET_BUFFER, metavar="BYTES",
                   help=f"local mode socket buffers (default {SOCKET_BUFFER >> 20} MiB; as root "
                        f"beyond net.core.rmem_max); bigger absorbs longer bursts")
    p.add_argument("--io", choices=IO_KINDS, default="ring", dest="raw_io",
                   help=f"ifaces mode I/O: ring = PACKET_MMAP rings (a receive ring, "
                        f"TPACKET_V{RING_VERSION}, and a transmit ring per port; falls back to "
                        f"mmsg, saying so, if the kernel refuses); ring-v2/ring-v3 = rings with "
                        f"that receive version; mmsg = recvmmsg/sendmmsg on plain sockets "
                        f"(default ring)")
    p.add_argument("--ring-mib", type=positive_int, default=DEFAULT_RX_MIB, metavar="MIB",
                   help=f"ifaces mode: receive ring per port in MiB (default {DEFAULT_RX_MIB}: "
                        f"{DEFAULT_RX_MIB * FRAMES_PER_MIB} queued frames; mmsg: socket "
                        f"buffers of about as many); bigger absorbs longer bursts")
    p.add_argument("--tx-gso", type=positive_int, default=1, metavar="N",
                   help=f"ifaces mode on rings: results to one worker leave in GSO frames of up "
                        f"to N datagrams (1..{MAX_TX_SEGMENTS}; PACKET_VNET_HDR), which the kernel "
                        f"cuts into datagrams wherever a device cannot carry them whole (a veth "
                        f"with tx-udp-segmentation passes them on: a receiver with UDP_GRO takes "
                        f"N results per wake-up). Default 1: a frame per result")
    p.add_argument("--rx-gso", action="store_true",
                   help="ifaces mode on TPACKET_V2 rings: take UDP GSO frames whole "
                        "(PACKET_VNET_HDR, 68 KiB receive slots) and cut them into datagrams "
                        "here, so a host's segmented send costs the link one frame; frames whose "
                        "checksum the sender left to an offload get it completed if forwarded. "
                        "For links whose devices pass GSO (the Mininet rack's clean links)")
    p.add_argument("--jobs", metavar="FILE", default=None,
                   help="install the jobs in this JSON file at start (no controller needed)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from switch.server import load_jobs, run_switch
    from switch.tables import P4Error

    def fail(msg: str) -> int:
        print(f"nina switch: error: {msg}", file=sys.stderr)
        return 2

    ifaces = [i.strip() for i in args.ifaces.split(",") if i.strip()]
    if args.mode == "ifaces" and not ifaces:
        return fail("--mode ifaces needs --ifaces IF1,IF2,...")
    if args.mode == "local" and ifaces:
        return fail("--ifaces is for --mode ifaces")
    if args.ring_mib > 1024:
        return fail(f"--ring-mib {args.ring_mib} is more than 1024 MiB per port")
    if args.tx_gso > MAX_TX_SEGMENTS:
        return fail(f"--tx-gso {args.tx_gso} is more than {MAX_TX_SEGMENTS} datagrams per frame")
    if args.tx_gso > 1 and args.mode != "ifaces":
        return fail("--tx-gso is for --mode ifaces")
    if args.rx_gso and (args.mode != "ifaces" or ring_version(args.raw_io) != 2):
        return fail("--rx-gso is for --mode ifaces with --io ring or ring-v2")
    if args.pool_slots > 1 << 16:
        return fail(f"--pool-slots {args.pool_slots} exceeds the 16-bit slot space (65536)")
    try:
        jobs = load_jobs(args.jobs) if args.jobs else []
        return run_switch(args.mode, listen=args.listen, ifaces=ifaces, trace_path=args.trace,
                          pool_slots=args.pool_slots, seed=args.seed, grpc_addr=args.grpc,
                          jobs=jobs, socket_buffer=args.socket_buffer, raw_io=args.raw_io,
                          ring_mib=args.ring_mib, tx_segments=args.tx_gso,
                          rx_gso=args.rx_gso)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, P4Error) as e:
        return fail(str(e))
