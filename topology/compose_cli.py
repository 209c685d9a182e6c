"""`nina compose`: the compose rack (docker-compose.yml) from the command line.

    nina compose build                     # the image, offline (make docker-image)
    nina compose demo [--steps N] [--bw MBIT] [--loss PCT]    (make docker-demo)

The work is in topology/compose.py (the run), topology/docker_engine.py (the engine) and
topology/docker_image.py (the image); this file only parses and reports.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from nina.cli_types import nonnegative_int, percentage, positive_float, positive_int
from topology.compose import (BMV2_IMAGE, DEFAULT_IMAGE, DEFAULT_PROJECT, ComposeError,
                              run_compose_demo)
from topology.runenv import REPO

EPILOG = """examples:
  nina compose build                       # the image nina:latest, built offline
  nina compose demo --steps 40             # switch, 4 workers and the coordinator as containers
  nina compose demo --bw 50 --loss 1       # each worker link: 50 Mbit/s, 1% loss per direction
  nina trace summary runs/<time>-compose   # the switch's view of the demo's packets
As root, a missing Docker engine is installed (Debian's docker.io) and started for the run with
--iptables=false --ip-masq=false --ip-forward=false --bridge=none, then stopped again."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compose", help="the demo as containers (docker-compose.yml), engine to teardown",
        description="Runs docker-compose.yml on this machine: a Docker engine (started for "
                    "the run as root when none answers), the NINA image built without "
                    "network access from the containers, the switch, 4 workers and the "
                    "coordinator as containers, the summary table, the run folder on the "
                    "host, and nothing of the project left behind.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="compose_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="build the image (base from the registry or Debian)")
    _image_args(b)
    b.set_defaults(func=cmd_build)
    d = sub.add_parser("demo", help="the C_nat vs INT32 demo on the compose rack")
    d.add_argument("--steps", type=positive_int, default=150, help="steps per job (default 150)")
    d.add_argument("--bw", type=positive_float, default=None, metavar="MBIT",
                   help="bandwidth of each worker link (its uplink and the switch's downlink "
                        "to it), Mbit/s (default unlimited)")
    d.add_argument("--loss", type=percentage, default=0.0, metavar="PCT",
                   help="packet loss of each worker link direction (percent)")
    d.add_argument("--exact", type=nonnegative_int, default=20_000, metavar="N",
                   help="before training, all-reduce N elements per worker and check the sums "
                        "bit for bit (default 20000; 0: skip)")
    d.add_argument("--runs-dir", default=os.path.join(REPO, "runs"),
                   help="host folder of the run folders (default this checkout's runs/)")
    d.add_argument("--project", default=DEFAULT_PROJECT,
                   help=f"compose project name (default {DEFAULT_PROJECT})")
    d.add_argument("--switch", choices=["embedded", "bmv2"], default="embedded",
                   help="the data plane: the embedded NINA switch service (default) or the "
                        f"bmv2 profile (needs the image {BMV2_IMAGE}; not on this project's "
                        "CI machine)")
    d.add_argument("--build", choices=["always", "missing"], default="always",
                   help="build the image every time (default: docker's layer cache makes an "
                        "unchanged checkout quick) or only when it is missing")
    d.add_argument("--remove-image", action="store_true",
                   help="remove the image tags this run built, at the end")
    _image_args(d)
    d.set_defaults(func=cmd_demo)


def _image_args(p) -> None:
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    p.add_argument("--base", choices=["auto", "registry", "debian"], default="auto",
                   help="base image: the registry's python:3.11-slim-bookworm when it can be "
                        "pulled, else Debian bookworm from debootstrap (auto, default)")


def _fail(msg: str) -> int:
    print(f"nina compose: error: {msg}", file=sys.stderr)
    return 2


def _errors():
    from topology.docker_engine import EngineError
    from topology.docker_image import BuildError
    return (EngineError, BuildError, ComposeError, subprocess.TimeoutExpired, OSError)


def cmd_build(args) -> int:
    from topology.docker_engine import Engine
    from topology.docker_image import build_image
    try:
        with Engine() as engine:
            base = build_image(args.image, base=args.base)
            print(f"built {args.image} (base {base})"
                  + ("; dockerd stopped again, the image stays in /var/lib/docker"
                     if engine.started else ""))
    except _errors() as e:
        return _fail(str(e))
    return 0


def cmd_demo(args) -> int:
    try:
        rep = run_compose_demo(steps=args.steps, bw=args.bw, loss=args.loss, image=args.image,
                               build=args.build, base=args.base, runs_dir=args.runs_dir,
                               project=args.project, exact=args.exact,
                               remove_image=args.remove_image, switch=args.switch)
    except _errors() as e:
        return _fail(str(e))
    folder = rep["folder"]
    bad = {s: c for s, c in rep["codes"].items() if s != "switch" and c != 0}
    if rep["rc"] != 0 or bad:
        return _fail(f"the compose demo failed (exit codes {rep['codes']}); container logs in "
                     f"{folder}/container-*.log")
    trace = os.path.join(folder, "switch.trace")
    if os.path.exists(trace):
        from nina.decisions import TRACE_DTYPE
        print(f"switch trace: {trace} ({os.path.getsize(trace) // TRACE_DTYPE.itemsize} "
              f"packet records)")
    print(f"run folder on the host: {folder} (the containers' /nina/runs/{rep['name']})")
    print(f"container logs: {folder}/container-<service>.log")
    for service, log in rep["logs"].items():
        for line in log.splitlines():
            if "container_link:" in line:
                print(f"  {service}: {line.split('container_link:', 1)[1].strip()}")
    if rep["left"] and any(rep["left"].values()):
        return _fail(f"left behind: {rep['left']}")
    rel = os.path.relpath(folder)
    print(f"next: nina trace summary {folder if rel.startswith('..') else rel}")
    return 0
