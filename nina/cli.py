"""The `nina` command: one entry point, a subcommand per part."""
from __future__ import annotations

import argparse
import importlib
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
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nina", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in REGISTRARS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
