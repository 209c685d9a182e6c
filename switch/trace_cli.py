"""`nina trace summary|show|plot RUN`: read the switch's per-packet aggregation trace."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nina.cli_types import nonnegative_int
from switch.trace_file import TraceError, resolve


def _open(args):
    """The trace, the job filter (--job, else the jobs of a job folder given as RUN) and the
    job names; says on stderr what it read and whether the trace is truncated."""
    from switch.trace_file import truncation
    from switch.trace_jobs import folder_jobs, job_names
    path = resolve(args.run)
    jobs = set(args.job) if getattr(args, "job", None) else None
    run = Path(args.run)
    if jobs is None and run.is_dir() and path.parent.resolve() != run.resolve():
        jobs = folder_jobs(run)
        print(f"trace of the rack: {path}" + (f" (job folder {run}: job "
              f"{', '.join(map(str, sorted(jobs)))} only)" if jobs else ""), file=sys.stderr)
    warn = truncation(path)
    if warn:
        print(warn, file=sys.stderr)
    return path, jobs, job_names(path)


def _summary(args) -> int:
    from switch.trace_tools import format_summary, summarize
    path, jobs, names = _open(args)
    print(format_summary(summarize(path, jobs=jobs), names))
    return 0


def _show(args) -> int:
    from switch.trace_tools import SHOW_LEGEND, slot_life
    path, jobs, names = _open(args)
    job = args.job[0] if args.job else (min(jobs) if jobs and len(jobs) == 1 else None)
    lines = slot_life(path, args.slot, job, args.worker, args.limit)
    if not lines:
        print(f"no records for slot {args.slot}"
              + (f" of job {args.job}" if args.job is not None else "")
              + (f" from worker {args.worker}" if args.worker is not None else ""))
        return 1
    print("\n".join(lines))
    print(SHOW_LEGEND)
    return 0


def _plot(args) -> int:
    from switch.trace_tools import plot
    path, jobs, names = _open(args)
    out = Path(args.out) if args.out else path.parent
    for f in plot(path, out, jobs=jobs, names=names):
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
                                   "folder (holding switch.trace), a job folder inside a rack's "
                                   "run folder (e.g. runs/<rack>/train-1, as `make train` "
                                   "prints it: that job only), or a .trace file. Jobs are "
                                   "named from the run folder's config.json / rack.json.")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION")
    tsub.required = True
    s = tsub.add_parser("summary", help="packets, completions, retransmissions and drops per "
                                        "job and worker; slot occupancy; completion latency")
    s.add_argument("run")
    s.add_argument("--job", type=int, action="append", help="only this job (repeatable)")
    s.set_defaults(func=_guard(_summary))
    s = tsub.add_parser("show", help="the life of one slot, packet by packet")
    s.add_argument("run")
    s.add_argument("--slot", type=int, required=True, help="slot index (relative to the job)")
    s.add_argument("--job", type=int, action="append", help="only this job")
    s.add_argument("--worker", type=int, help="only packets from this worker")
    s.add_argument("--limit", type=nonnegative_int, default=200,
                   help="print at most this many (200)")
    s.set_defaults(func=_guard(_show))
    s = tsub.add_parser("plot", help="slot timeline and completion-latency histogram per job "
                                     "(PNG)")
    s.add_argument("run")
    s.add_argument("--out", help="folder for the PNGs (default: next to the trace)")
    s.add_argument("--job", type=int, action="append", help="only this job (repeatable)")
    s.set_defaults(func=_guard(_plot))
