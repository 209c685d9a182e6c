"""The `nina` command: one entry point, a subcommand per part."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that add subcommands: each has register(subparsers). Imported lazily per module so a
# broken optional part does not take the whole CLI down.
REGISTRARS = [
    "jobs.cli",
    "switch.cli",
    "switch.trace_cli",
    "switch.ctl_cli",
    "topology.rack_cli",
    "topology.demo_cli",
    "topology.compose_cli",
]


def build_parser() -> argparse.ArgumentParser:
    from nina import __version__
    from nina.wire import VERSION
    parser = argparse.ArgumentParser(prog="nina", description=__doc__)
    parser.add_argument("--version", action="version",
                        version=f"nina {__version__} (wire protocol version {VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in REGISTRARS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args) or 0
        sys.stdout.flush()   # here, where a closed pipe is still ours to handle
        return rc
    except BrokenPipeError:
        # the reader went away (`nina ctl job show | head -2`): stop quietly, and keep the
        # interpreter's final flush of stdout from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141   # 128 + SIGPIPE, as a shell reports it
    except OSError as e:
        # a path the user gave that cannot be created, read or written (--out /etc/passwd/x)
        where = f"{e.filename}: " if e.filename else ""
        print(f"nina {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
