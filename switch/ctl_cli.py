"""`nina ctl`: the controller on the command line (jobs, counters, slot registers, forwarding)."""
from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from nina.cli_types import grpc_address, nonnegative_int, port_number, switch_port
from nina.config import DEFAULT_GRPC_ADDR, DEFAULT_SWITCH_IP, SWITCH_MAC, WorkerAddr
from nina.wire import Encoding
from nina.p4build import BMV2_JSON_PATH, P4INFO_PATH

DEFAULT_P4INFO = Path(P4INFO_PATH)
DEFAULT_JSON = Path(BMV2_JSON_PATH)


class UsageError(Exception):
    pass


# ---- argument parsing ----

def parse_worker_addr(text: str) -> WorkerAddr:
    """WID=IP:UDPPORT[@PORT[/MAC]], e.g. 0=10.0.0.1:40000@1/00:00:00:00:00:01."""
    try:
        wid, rest = text.split("=", 1)
        rest, _, where = rest.partition("@")
        ip, udp = rest.rsplit(":", 1)
        port, _, mac = where.partition("/")
        kw = {"port": int(port)} if port else {}
        if mac:
            kw["mac"] = parse_mac(mac)
        ipaddress.IPv4Address(ip)
        addr = WorkerAddr(int(wid), ip, int(udp), **kw)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"bad worker address {text!r}: expected WID=IP:UDPPORT[@PORT[/MAC]]") from None
    if not 0 <= addr.udp_port < 65536 or not 0 <= addr.port < 512:
        raise argparse.ArgumentTypeError(f"bad worker address {text!r}: port out of range")
    return addr


def parse_mac(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise argparse.ArgumentTypeError(f"bad MAC address {text!r}: expected xx:xx:xx:xx:xx:xx")
    try:
        [int(p, 16) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad MAC address {text!r}: not hexadecimal") from None
    return text.lower()


def parse_ip(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad IPv4 address {text!r}") from None


def _trace_port_arg(text: str) -> str:
    if text != "off":
        switch_port(text)   # a usage error before connecting
    return text


def parse_slots(text: str) -> tuple[int, int]:
    try:
        base, count = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad slot range {text!r}: expected BASE:COUNT") \
            from None
    return base, count


def parse_election_id(text: str) -> tuple[int, int]:
    try:
        high, low = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad election id {text!r}: expected HIGH,LOW") \
            from None
    return high, low


def register(subparsers) -> None:
    ctl = subparsers.add_parser(
        "ctl", help="control a switch over P4Runtime (jobs, counters, registers)",
        description="Control a NINA switch (BMv2 simple_switch_grpc or the embedded switch) "
                    "over P4Runtime. Without --grpc it finds a running `nina rack` by itself "
                    "(the rack records its switch in <run dir>/rack.json). The first command "
                    "that reaches a switch without the NINA pipeline pushes it (P4Info + BMv2 "
                    "JSON).",
        epilog="examples (beside a running `nina rack`):\n"
               "  nina ctl counters\n  nina ctl job show\n  nina ctl slot 0 --job 1\n"
               "  nina ctl --rack runs/<rack> slot 3 --job 2 --ver 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ctl.add_argument("--grpc", type=grpc_address, default=None, metavar="ADDR",
                     help="P4Runtime address of the switch (default: the running rack's, "
                          f"else {DEFAULT_GRPC_ADDR})")
    ctl.add_argument("--rack", metavar="DIR", default=None,
                     help="the rack whose run folder (or a job folder in it) is DIR, running "
                          "or not: its switch address and the slot ranges of its jobs")
    ctl.add_argument("--p4info", default=str(DEFAULT_P4INFO), metavar="P",
                     help="P4Info text file of the NINA program (default p4/build/)")
    ctl.add_argument("--json", default=str(DEFAULT_JSON), metavar="J",
                     help="BMv2 JSON of the NINA program, pushed with the P4Info")
    ctl.add_argument("--device-id", type=int, default=0, help="P4Runtime device id (default 0)")
    ctl.add_argument("--election-id", type=parse_election_id, default=(0, 1),
                     metavar="HIGH,LOW",
                     help="election id of this controller (default 0,1: beside a rack, whose "
                          "own controller is primary at 1,0, a backup that reads; writing "
                          "needs a higher id, which takes the rack's writes away)")
    ctl.add_argument("--thrift-port", type=port_number, default=None, metavar="PORT",
                     help="BMv2 thrift port for register access (BMv2 only, usually 9090)")
    ctl.add_argument("--push", choices=("auto", "always", "never"), default="auto",
                     help="push the pipeline config: auto (when missing or different, "
                          "default), always (wipes the switch's state), never")
    ctl.set_defaults(func=lambda a: ctl.print_help() or 2)
    cmds = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND")

    job = cmds.add_parser("job", help="install, remove and list aggregation jobs",
                          description="Install, remove and list aggregation jobs.")
    job.set_defaults(func=lambda a: job.print_help() or 2)
    jobs = job.add_subparsers(dest="job_command", metavar="COMMAND")
    add = jobs.add_parser(
        "add", help="install a job",
        description="Install a job: slot range (registers reset), multicast group, worker "
                    "admission and egress rewrite, job entry.",
        epilog="example: nina ctl job add --job 1 --workers 2 --encoding nat8 "
               "--worker-addr 0=127.0.0.1:40000 --worker-addr 1=127.0.0.1:40001")
    add.add_argument("--job", type=int, required=True, help="job id (0..65534)")
    add.add_argument("--workers", type=int, required=True, help="number of workers (1..32)")
    add.add_argument("--encoding", choices=("nat8", "int32"), default="nat8",
                     help="wire encoding of updates (default nat8)")
    add.add_argument("--cm", action="store_true",
                     help="master compression: the switch natural-compresses the sums")
    add.add_argument("--slots", type=parse_slots, default=None, metavar="BASE:COUNT",
                     help="the job's slot range in the switch pool (default 0:64)")
    add.add_argument("--loss", type=float, default=0.0, metavar="P",
                     help="switch-side drop probability of updates (loss simulator)")
    add.add_argument("--worker-addr", type=parse_worker_addr, action="append", default=[],
                     metavar="WID=IP:UDPPORT[@PORT[/MAC]]", required=True,
                     help="where worker WID sends from and receives results (once per worker;"
                          " PORT: switch port, default 0; MAC: its MAC)")
    add.add_argument("--switch-ip", type=parse_ip, default=DEFAULT_SWITCH_IP,
                     help=f"source IP of results (default {DEFAULT_SWITCH_IP})")
    add.add_argument("--switch-mac", type=parse_mac, default=SWITCH_MAC,
                     help=f"source MAC of results (default {SWITCH_MAC})")
    add.set_defaults(func=_run(_job_add))
    rm = jobs.add_parser("del", help="remove a job", description="Remove a job and its "
                         "admission, egress and multicast entries.")
    rm.add_argument("job_id", type=int, metavar="J", help="job id")
    rm.set_defaults(func=_run(_job_del))
    show = jobs.add_parser("show", help="list installed jobs",
                           description="List the jobs installed on the switch.")
    show.set_defaults(func=_run(_job_show))

    ctr = cmds.add_parser("counters", help="packets and bytes per switch decision",
                          description="Read the decisions counter: packets and bytes per "
                                      "decision (aggregation steps and drop reasons).")
    ctr.add_argument("--all", action="store_true", help="also list decisions at zero")
    ctr.set_defaults(func=_run(_counters))

    slot = cmds.add_parser("slot", help="read a slot's registers",
                           description="Read a job slot's registers: bitmap, count, max "
                                       "exponent, offset and accumulators (per version).")
    slot.add_argument("slot", type=int, metavar="SLOT", help="slot index within the job")
    slot.add_argument("--job", type=int, required=True, help="job id")
    slot.add_argument("--ver", type=int, choices=(0, 1), default=None,
                      help="only this shadow-copy version (default both)")
    slot.add_argument("--acc", type=nonnegative_int, default=8, metavar="N",
                      help="accumulators to print (default 8)")
    slot.set_defaults(func=_run(_slot))

    fwd = cmds.add_parser("fwd", help="L2 forwarding of non-NINA traffic",
                          description="L2 forwarding entries (destination MAC -> port).")
    fwd.set_defaults(func=lambda a: fwd.print_help() or 2)
    fwds = fwd.add_subparsers(dest="fwd_command", metavar="COMMAND")
    fadd = fwds.add_parser("add", help="forward a MAC to a port")
    fadd.add_argument("mac", type=parse_mac, help="destination MAC xx:xx:xx:xx:xx:xx")
    fadd.add_argument("port", type=switch_port, help="egress port (0..511)")
    fadd.set_defaults(func=_run(lambda c, a: c.set_forward(a.mac, a.port)))
    fdel = fwds.add_parser("del", help="remove a MAC's entry")
    fdel.add_argument("mac", type=parse_mac, help="destination MAC")
    fdel.set_defaults(func=_run(lambda c, a: c.remove_forward(a.mac)))
    fshow = fwds.add_parser("show", help="list forwarding entries")
    fshow.set_defaults(func=_run(_fwd_show))

    trace = cmds.add_parser("trace-port", help="port that receives trace records",
                            description="Set the trace clone session's monitor port, or "
                                        "'off' to remove it.")
    trace.add_argument("port", type=_trace_port_arg, help="port number (0..511) or 'off'")
    trace.set_defaults(func=_run(_trace_port))


# ---- commands ----

def _locate(args) -> dict | None:
    """Fill in args.grpc: --grpc as given, else --rack's record, else the running rack, else
    the default address. Returns the rack's record (for finished jobs' slots), if any."""
    from nina import rackinfo
    if args.rack:
        try:
            rec = rackinfo.load(args.rack)
        except LookupError as e:
            raise UsageError(str(e)) from None
        if args.grpc is None:
            args.grpc = rec["grpc"]
        return rec
    if args.grpc is not None:
        return rackinfo.find(args.grpc)
    racks = rackinfo.running()
    if not racks:
        args.grpc = DEFAULT_GRPC_ADDR
        return None
    rec = racks[0]
    args.grpc = rec["grpc"]
    more = f" (the newest of {len(racks)} running; --rack DIR picks another)" \
        if len(racks) > 1 else ""
    print(f"rack pid {rec['pid']} ({rec.get('mode', '?')}, {rec['run_dir']}): switch "
          f"P4Runtime {rec['grpc']}{more}", file=sys.stderr)
    return rec


def _run(command):
    """Wrap a command: connect, run, close; errors become one line on stderr."""
    def run(args) -> int:
        from switch.controller import Controller, ControllerError
        try:
            args.rack_record = _locate(args)
            p4info = Path(args.p4info)
            if not p4info.exists():
                raise UsageError(f"P4Info {p4info} not found (build the P4 program or pass "
                                 f"--p4info)")
            json = args.json if Path(args.json).exists() else None
            with Controller(args.grpc, str(p4info), json, device_id=args.device_id,
                            election_id=args.election_id, thrift_port=args.thrift_port,
                            push=args.push) as ctl:
                if ctl.pushed:
                    print(f"pushed the pipeline config to {args.grpc}", file=sys.stderr)
                if not ctl.primary:
                    who = "the rack's own controller" if args.rack_record else \
                        "another controller"
                    print(f"note: {who} is primary: this one (election id "
                          f"{args.election_id[0]},{args.election_id[1]}) reads; writes need a "
                          f"higher --election-id", file=sys.stderr)
                command(ctl, args)
            return 0
        except (ControllerError, UsageError, ValueError) as e:
            msg = str(e)
            if "Not primary" in msg:
                msg += (f" (this controller, election id {args.election_id[0]},"
                        f"{args.election_id[1]}, is a backup that reads; to write pass a higher "
                        f"--election-id, e.g. 1,1 beside a rack, whose own controller then "
                        f"cannot write until this one leaves)")
            print(f"nina ctl: error: {msg}", file=sys.stderr)
            return 1
    return run


def _job_add(ctl, args) -> None:
    from nina.config import JobSpec
    ids = sorted(w.wid for w in args.worker_addr)
    if ids != list(range(args.workers)):
        raise UsageError(f"need one --worker-addr for each worker id 0..{args.workers - 1}, "
                         f"got ids {ids}")
    base, count = args.slots if args.slots else (0, JobSpec(0, 1).slot_count)
    spec = JobSpec(args.job, args.workers, Encoding[args.encoding.upper()], args.cm, base, count,
                   args.loss, tuple(sorted(args.worker_addr, key=lambda w: w.wid)),
                   switch_mac=args.switch_mac, switch_ip=args.switch_ip)
    firsts = ctl.install_job(spec)
    print(f"job {spec.job_id} installed: {spec.n_workers} workers, {spec.encoding.name}"
          f"{' +C_M' if spec.cm else ''}, slots [{base}, {base + count}), "
          f"multicast group {spec.mcast_grp}")
    print(f"first round per slot (workers must start there): {_runs(firsts)}")


def _runs(values) -> str:
    """[0, 0, 0, 2, 2] -> 'slots 0-2: 0, slots 3-4: 2' (slots of a job progress in runs)."""
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        out.append(f"slot{'s' if j > i else ''} {i}{f'-{j}' if j > i else ''}: {values[i]}")
        i = j + 1
    return ", ".join(out)


def _job_del(ctl, args) -> None:
    ctl.remove_job(args.job_id)
    print(f"job {args.job_id} removed")


def _job_show(ctl, args) -> None:
    jobs = ctl.show_jobs()
    if not jobs:
        print("no jobs")
        return
    print(f"{'job':>5} {'n':>3} {'enc':>5} {'cm':>3} {'slots':>13} {'loss':>6} {'group':>5}")
    for j in jobs:
        slots = f"[{j.slot_base},{j.slot_base + j.slot_count})"
        print(f"{j.job_id:>5} {j.n_workers:>3} {j.encoding.name:>5} "
              f"{'yes' if j.cm else 'no':>3} {slots:>13} {j.loss:>6.3f} {j.mcast_grp:>5}")
        for w in j.workers:
            print(f"        worker {w.wid:>2}: {w.ip}:{w.udp_port} port {w.port} mac {w.mac}")


def _counters(ctl, args) -> None:
    counts = ctl.read_counters()
    print(f"{'decision':<18} {'packets':>12} {'bytes':>14}")
    for name, (packets, nbytes) in counts.items():
        if packets or args.all:
            print(f"{name:<18} {packets:>12} {nbytes:>14}")
    if not args.all and not any(p for p, _ in counts.values()):
        print("(all zero)")


def _slot(ctl, args) -> None:
    known = {}
    for jid, j in rackinfo_jobs(args.rack_record).items():
        known[jid] = (j["slot_base"], j["slot_count"], Encoding[j["encoding"]])
    for s in ctl.read_slot(args.job, args.slot, args.ver, known=known):
        nonzero = int((s.acc != 0).sum())
        print(f"job {s.job} slot {s.slot} ver {s.ver} (register index {s.index}): "
              f"bitmap 0x{s.bitmap:08x} workers {s.workers} count {s.count} "
              f"max_exp {s.max_exp} offset {s.offset} round {s.round}")
        shown = ", ".join(str(v) for v in s.acc[:args.acc])
        print(f"  acc[0:{min(args.acc, s.acc.size)}] = [{shown}]  "
              f"({nonzero} of {s.acc.size} non-zero)")


def rackinfo_jobs(record):
    from nina.rackinfo import job_slots
    return job_slots(record)


def _fwd_show(ctl, args) -> None:
    entries = ctl.show_forwards()
    for mac, port in sorted(entries.items()):
        print(f"{mac} -> port {port}")
    if not entries:
        print("no forwarding entries")


def _trace_port(ctl, args) -> None:
    if args.port == "off":
        ctl.set_monitor_port(None)
        print("tracing to a monitor port off")
        return
    try:
        port = int(args.port)
    except ValueError:
        raise UsageError(f"trace port must be a number or 'off', not {args.port!r}") from None
    if not 0 <= port < 512:
        raise UsageError(f"trace port {port} is not a switch port in 0..511 (9 bits)")
    ctl.set_monitor_port(port)
    print(f"trace records cloned to port {port}")
