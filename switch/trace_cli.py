"""`nina trace summary|show|plot RUN`: read the switch's per-packet aggregation trace."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nina.cli_types import nonnegative_int
from switch.trace_file import TraceError, resolve


def _summary(args) -> int:
    from switch.trace_tools import format_summary, summarize
    print(format_summary(summarize(resolve(args.run))))
    return 0


def _show(args) -> int:
    from switch.trace_tools import slot_life
    lines = slot_life(resolve(args.run), args.slot, args.job, args.worker, args.limit)
    if not lines:
        print(f"no records for slot {args.slot}"
              + (f" of job {args.job}" if args.job is not None else "")
              + (f" from worker {args.worker}" if args.worker is not None else ""))
        return 1
    print("\n".join(lines))
    return 0


def _plot(args) -> int:
    from switch.trace_tools import plot
    path = resolve(args.run)
    out = Path(args.out) if args.out else path.parent
    for f in plot(path, out):
        print(f)
    return 0


def _guard(fn):
    def run(args):
        try:
            return fn(args)
        except TraceError as e:
            print(f"nina trace: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            raise   # the reader went away: nina.cli stops quietly
        except OSError as e:   # an unreadable trace or an unwritable --out
            where = f"{e.filename}: " if e.filename else ""
            print(f"nina trace: error: {where}{e.strerror or e}", file=sys.stderr)
            return 2
    return run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="summarise, show and plot a switch trace",
                       description="Read the per-packet aggregation trace of a run. RUN is a run "
                                   "folder (holding switch.trace) or a .trace file.")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION")
    tsub.required = True
    s = tsub.add_parser("summary", help="packets, completions, retransmissions and drops per "
                                        "job and worker; slot occupancy; completion latency")
    s.add_argument("run")
    s.set_defaults(func=_guard(_summary))
    s = tsub.add_parser("show", help="the life of one slot, packet by packet")
    s.add_argument("run")
    s.add_argument("--slot", type=int, required=True, help="slot index (relative to the job)")
    s.add_argument("--job", type=int, help="only this job")
    s.add_argument("--worker", type=int, help="only packets from this worker")
    s.add_argument("--limit", type=nonnegative_int, default=200,
                   help="print at most this many (200)")
    s.set_defaults(func=_guard(_show))
    s = tsub.add_parser("plot", help="slot timeline and completion-latency histogram (PNG)")
    s.add_argument("run")
    s.add_argument("--out", help="folder for the PNGs (default: next to the trace)")
    s.set_defaults(func=_guard(_plot))
