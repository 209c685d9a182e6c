"""`nina rack`: start an emulated rack and drive it from a small prompt (or --run for scripts)."""
from __future__ import annotations

import argparse
import shlex
import sys

from nina.config import WINDOW_HELP
from nina.cli_types import (nonnegative, nonnegative_int, percentage, positive_float,
                            positive_int, worker_count)
from topology.modes import add_mode_arg

EPILOG = """prompt commands (also for --run):
  allreduce [--size N] [--encoding nat8|int32] [--cm] [--calls C] [--loss P] [--seed S]
  train [--compressor SPEC | --compare LIST] [--model M] [--steps N] ...   (train --help)
  counters                  the switch's decision counters
  slot S --job J [--ver V]  a slot's registers (bitmap, count, exponent, accumulators)
  hosts | pingall | quit
examples:
  sudo nina rack --workers 4 --bw 100 --delay 1
  sudo nina rack --loss 5 --run "allreduce --size 100000" --run counters
  sudo nina rack --switch bmv2 --run "allreduce --size 5000 --encoding int32" --run counters
  nina rack --mode local --run "train --compressor nat --steps 50\""""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rack", help="start an emulated rack (Mininet or local) and use it interactively",
        description="Start a rack of N worker hosts and a coordinator host on one NINA switch, "
                    "then run all-reduces and training jobs on it from a prompt. Everything "
                    "the rack created is removed when it ends (quit, Ctrl-C, SIGTERM, error).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arg(p)
    p.add_argument("--workers", type=worker_count, default=4, help="worker hosts (default 4)")
    p.add_argument("--bw", type=float, default=None, metavar="MBIT",
                   help="bandwidth of each worker link in Mbit/s (default unlimited)")
    p.add_argument("--delay", type=nonnegative, default=0.0, metavar="MS",
                   help="one-way delay of each worker link direction (ms)")
    p.add_argument("--jitter", type=nonnegative, default=0.0, metavar="MS",
                   help="uniform +- jitter on the delay (ms, at most --delay); frames keep "
                        "their order")
    p.add_argument("--loss", type=percentage, default=0.0, metavar="PCT",
                   help="packet loss of each worker link direction (percent)")
    p.add_argument("--dup", type=percentage, default=0.0, metavar="PCT",
                   help="packet duplication per direction (percent)")
    p.add_argument("--reorder", type=percentage, default=0.0, metavar="PCT",
                   help="packets sent without the delay, overtaking others (percent; "
                        "needs --delay)")
    p.add_argument("--switch", choices=["embedded", "bmv2"], default="embedded",
                   help="data plane: the embedded NINA switch (default) or BMv2 "
                        "simple_switch_grpc with p4/build/nina.json (slow: jobs default to "
                        "--window 8; traces come from the P4 program's clones on a monitor "
                        "port s1-mon, collected into <run dir>/switch.trace)")
    p.add_argument("--run", action="append", metavar="COMMAND", default=[],
                   help="run this prompt command and continue (repeatable); with --run the "
                        "rack ends after the last one instead of prompting")
    p.add_argument("--run-dir", help="folder for logs, traces, pcaps and job outputs "
                                     "(default runs/rack-<time>)")
    p.add_argument("--no-trace", action="store_true", help="switch traces off (faster)")
    p.add_argument("--pcap", action="store_true",
                   help="capture every switch port to <run dir>/pcap/s1-eth<p>.pcap (Mininet; "
                        "local mode as root: the switch's loopback traffic to pcap/lo.pcap)")
    p.set_defaults(func=cmd_rack)


def make_rack(args, log=print):
    """The rack the arguments ask for, not started. Raises ValueError with a one-line reason."""
    from topology import modes
    from topology.impair import LinkShape
    decision = modes.decide(args.mode, modes.probe())
    if decision.error:
        raise ValueError(decision.error)
    if decision.reason and args.mode == "auto":
        log(decision.reason)
    shape = LinkShape(args.bw, args.delay, args.jitter, args.loss, args.dup, args.reorder)
    shape.validate()
    if args.reorder and not shape.needs_delay:
        raise ValueError("--reorder needs --delay (a reordered packet is one sent without the "
                         "delay the others wait)")
    if decision.mode == "local":
        from topology.local import LocalRack
        if shape.impaired or shape.bw_mbit:
            log("note: local mode has no links: --bw/--delay/--loss/--dup/--reorder ignored "
                "(the switch loss simulator is `allreduce --loss P`)")
        if args.switch != "embedded":
            raise ValueError("--switch bmv2 needs the Mininet rack (root); local mode runs the "
                             "embedded switch")
        return LocalRack(args.workers, args.run_dir, log, trace=not args.no_trace,
                         pcap=args.pcap)
    if args.switch == "bmv2":
        from topology.switch_node import bmv2_missing_reason
        if bmv2_missing_reason():
            raise ValueError(bmv2_missing_reason())
    from topology.mininet_rack import MininetRack
    return MininetRack(args.workers, shape, args.switch, args.run_dir,
                       trace=not args.no_trace, pcap=args.pcap, log=log)


def cmd_rack(args) -> int:
    from topology.rackbase import RackError
    try:
        rack = make_rack(args)
    except ValueError as e:
        print(f"nina rack: error: {e}", file=sys.stderr)
        return 2
    started = False
    try:
        with rack:
            started = True
            shell = RackShell(rack)
            if args.run:
                for line in args.run:
                    print(f"nina-rack> {line}")
                    shell.onecmd(line)
                    if shell.stop:
                        break
                return 1 if shell.failures else 0
            return shell.loop()
    except RackError as e:
        print(f"nina rack: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: rack removed", file=sys.stderr)
        return 130
    finally:
        if started:
            print(f"\nrack stopped; outputs in {rack.run_dir}")


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse for prompt commands: errors and --help return to the prompt, not exit."""

    def error(self, message):
        raise _ArgError(f"{self.prog}: {message}")

    def exit(self, status=0, message=None):
        if message:
            print(message, end="")
        raise _ArgError("")


def _allreduce_parser() -> _Parser:
    p = _Parser(prog="allreduce", description="one all-reduce job across the worker hosts, "
                                              "checked exactly against what the workers sent")
    p.add_argument("--size", type=positive_int, default=100_000, help="elements (default 100000)")
    p.add_argument("--encoding", choices=["nat8", "int32"], default="nat8")
    p.add_argument("--cm", action="store_true", help="master compression in the switch (nat8)")
    p.add_argument("--calls", type=positive_int, default=1,
                   help="all-reduces in the job (default 1)")
    p.add_argument("--loss", type=float, default=0.0,
                   help="switch loss simulator: drop each update with this probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=positive_int, default=None,
                   help=WINDOW_HELP)
    p.add_argument("--timeout", type=positive_float, default=10.0,
                   help="seconds a slot may stay incomplete (default 10)")
    return p


def _slot_parser() -> _Parser:
    p = _Parser(prog="slot", description="registers of one slot of a job")
    p.add_argument("slot", type=int)
    p.add_argument("--job", type=int, required=True)
    p.add_argument("--ver", type=int, choices=[0, 1], default=None)
    p.add_argument("--acc", type=nonnegative_int, default=8,
                   help="accumulators to show (default 8)")
    return p


class RackShell:
    """The prompt's commands. Each one prints its outcome; a failure is one line, and the rack
    stays up (unless the switch process itself is gone)."""

    def __init__(self, rack, out=print):
        self.rack = rack
        self.out = out
        self.failures = 0
        self.stop = False
        self.last_report = None

    def loop(self) -> int:
        try:
            import readline  # noqa: F401  (history and line editing for input())
        except ImportError:
            pass
        self.out("type `help` for the commands, `quit` to remove the rack")
        while not self.stop:
            try:
                line = input("nina-rack> ")
            except EOFError:
                self.out("")
                break
            except KeyboardInterrupt:          # at the idle prompt: leave
                self.out("")
                break
            try:
                self.onecmd(line)
            except KeyboardInterrupt:          # during a command: cancel it, keep the rack
                self.out("interrupted")
        return 0

    def onecmd(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as e:
            self._fail(f"cannot parse {line!r}: {e}")
            return
        if not words:
            return
        name, argv = words[0].lower(), words[1:]
        fn = getattr(self, f"do_{name}", None)
        if fn is None:
            self._fail(f"unknown command {name!r}; type `help`")
            return
        if name not in ("quit", "exit", "help", "hosts") and not self.rack.switch_alive():
            self._fail("the switch process is gone (see its log in the run dir); leaving")
            self.stop = True
            return
        try:
            fn(argv)
        except _ArgError as e:
            if str(e):
                self._fail(str(e))
        except Exception as e:    # a job's failure: one line, the rack stays
            self._fail(f"{name}: {e}")

    def _fail(self, msg: str) -> None:
        self.failures += 1
        self.out(f"error: {msg}")

    # ---- commands ----
    def do_help(self, argv) -> None:
        self.out(EPILOG.split("examples:")[0].rstrip())

    def do_quit(self, argv) -> None:
        self.stop = True

    do_exit = do_quit

    def do_hosts(self, argv) -> None:
        self.out(self.rack.hosts_text())

    def do_pingall(self, argv) -> None:
        ok, tried = self.rack.pingall()
        if not tried:
            self.out("local mode: every node is on loopback, nothing to ping")
            return
        self.out(f"pingall: {ok}/{tried} answered ({100 * (tried - ok) / tried:.0f}% dropped)")
        if ok == 0:
            self.failures += 1

    def do_allreduce(self, argv) -> None:
        from topology.rack_jobs import run_allreduce
        a = _allreduce_parser().parse_args(argv)
        rep = run_allreduce(self.rack, a.size, a.encoding, a.cm, a.calls, a.seed, a.loss,
                            a.window, a.timeout, log=self.out)
        self.last_report = rep
        self.out(rep.summary())
        if not rep.exact:
            self.failures += 1

    def do_train(self, argv) -> None:
        from topology.rack_jobs import run_train
        _, table = run_train(self.rack, argv, log=self.out, parser_cls=_Parser)
        self.out(table)

    def do_counters(self, argv) -> None:
        counts = self.rack.controller.read_counters()
        rows = [(k, v) for k, v in counts.items() if v[0]]
        if not rows:
            self.out("no packets counted yet")
            return
        self.out(f"{'decision':<22}{'packets':>10}{'bytes':>12}")
        for k, (pk, by) in rows:
            self.out(f"{k:<22}{pk:>10}{by:>12}")

    def do_slot(self, argv) -> None:
        a = _slot_parser().parse_args(argv)
        for st in read_slot(self.rack.controller, a.job, a.slot, a.ver, a.acc):
            acc = " ".join(str(int(v)) for v in st.acc)
            self.out(f"job {st.job} slot {st.slot} ver {st.ver} (register index {st.index}): "
                     f"bitmap {st.bitmap:#010x} workers {st.workers} count {st.count} "
                     f"max_exp {st.max_exp} offset {st.offset} round {st.round}\n  acc[0:{len(st.acc)}] {acc}")


def read_slot(ctl, job_id: int, slot: int, ver: int | None, n_acc: int):
    """Slot registers of a live job, or of a finished one whose spec the rack remembers (a
    job's slot state stays in the registers until a later job reuses the range)."""
    known = {jid: (sp.slot_base, sp.slot_count, sp.encoding)
             for jid, sp in getattr(ctl, "installed", {}).items()}
    return ctl.read_slot(job_id, slot, ver, n_acc, known=known)
