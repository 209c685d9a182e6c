"""`nina compose`: the compose rack (docker-compose.yml) end to end on this machine.

    nina compose build                     # the image, offline (make docker-image)
    nina compose demo [--steps N] [--bw MBIT] [--loss PCT]    (make docker-demo)

`demo` brings up a Docker engine if none answers (topology/docker_engine.py: as root, installs
docker.io and starts dockerd without its iptables handling, stopped again at the end), builds
the image when it is missing (topology/docker_image.py), runs docker-compose.yml under a project
name of its own with the run folder on the host (NINA_RUNS), waits for the coordinator, prints
its output (the summary table of `make demo`), saves every container's log in the run folder
and removes the project's containers and network (and, with --remove-image, the image tags it
made). The run folder holds the switch's trace, so `nina trace summary <run folder>` reads it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from nina.cli_types import percentage, positive_int
from topology.runenv import REPO

COMPOSE_FILE = os.path.join(REPO, "docker-compose.yml")
SERVICES = ("switch", "coordinator", "worker1", "worker2", "worker3", "worker4")
BMV2_IMAGE = "p4lang/behavioral-model"     # docker-compose.yml's bmv2 service
BMV2_IP = "172.29.77.3"
WORKERS = 4                         # the worker services of docker-compose.yml
DEFAULT_IMAGE = "nina:latest"
DEFAULT_PROJECT = "nina"
DEMO_TIMEOUT = 1800.0
EPILOG = """examples:
  nina compose build                       # the image nina:latest, built offline
  nina compose demo --steps 40             # switch, 4 workers and the coordinator as containers
  nina compose demo --bw 50 --loss 1       # each worker link: 50 Mbit/s, 1% loss per direction
  nina trace summary runs/<time>-compose   # the switch's view of the demo's packets
As root, a missing Docker engine is installed (Debian's docker.io) and started for the run with
--iptables=false --ip-masq=false --ip-forward=false --bridge=none, then stopped again."""


class ComposeError(RuntimeError):
    """The compose rack failed; the message says where."""


def compose_cmd(log=print) -> list[str]:
    """`docker compose` (the plugin) when present, else Debian's docker-compose (v1)."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing Debian's docker-compose (apt-get)")
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            "docker-compose"], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if r.returncode == 0 and shutil.which("docker-compose"):
            return ["docker-compose"]
    raise ComposeError("neither `docker compose` nor `docker-compose` is installed "
                       "(Debian: apt-get install docker-compose)")


def compose_version(cmd: list[str]) -> str:
    r = subprocess.run(cmd + ["version", "--short"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip() or "?"


class ComposeRack:
    """One run of docker-compose.yml: `with ComposeRack(...) as r: r.up(); r.wait()`.

    Exit removes the project's containers and network, whatever happened."""

    def __init__(self, image: str, runs_dir: str, project: str = DEFAULT_PROJECT,
                 env: dict | None = None, log=print, bmv2: bool = False):
        self.image, self.project, self.log = image, project, log
        self.runs_dir = os.path.abspath(runs_dir)
        self.cmd = compose_cmd(log) + ["-f", COMPOSE_FILE, "-p", project] + \
            (["--profile", "bmv2"] if bmv2 else [])
        self.services = SERVICES + (("bmv2",) if bmv2 else ())
        self.env = {**os.environ, "NINA_IMAGE": image, "NINA_RUNS": self.runs_dir,
                    **(env or {})}
        self.up_done = False

    def _compose(self, *args: str, timeout: float = 300.0,
                 check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(self.cmd + list(args), capture_output=True, text=True,
                           timeout=timeout, env=self.env, cwd=REPO)
        if check and r.returncode:
            tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-4:]
            raise ComposeError(f"{' '.join(self.cmd[:1] + list(args[:1]))}: "
                               + " | ".join(tail))
        return r

    def __enter__(self) -> "ComposeRack":
        return self

    def up(self) -> None:
        os.makedirs(self.runs_dir, exist_ok=True)
        self.up_done = True
        self._compose("up", "-d", "--no-build", *self.services, timeout=600)

    def container(self, service: str) -> str:
        cid = self._compose("ps", "-q", service).stdout.strip()
        if not cid:
            raise ComposeError(f"no container for the {service} service")
        return cid

    def wait(self, service: str = "coordinator", timeout: float = DEMO_TIMEOUT,
             echo=sys.stdout) -> tuple[int, str]:
        """Follow the service's output until it exits: (exit code, output)."""
        cid = self.container(service)
        out = []
        follow = subprocess.Popen(["docker", "logs", "-f", cid], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        try:
            for line in follow.stdout:
                out.append(line)
                if echo is not None:
                    echo.write(line)
                    echo.flush()
                if time.monotonic() > deadline:
                    raise ComposeError(f"the {service} did not finish within {timeout:.0f} s")
        finally:
            if follow.poll() is None:
                follow.terminate()
            follow.wait(timeout=10)
        r = subprocess.run(["docker", "wait", cid], capture_output=True, text=True,
                           timeout=max(10.0, deadline - time.monotonic()))
        return int(r.stdout.strip() or 1), "".join(out)

    def save_logs(self, folder: str) -> dict[str, str]:
        """Every service's log (and exit code) to folder/container-<service>.log."""
        os.makedirs(folder, exist_ok=True)
        logs = {}
        for s in self.services:
            r = self._compose("logs", "--no-color", s, check=False)
            path = os.path.join(folder, f"container-{s}.log")
            with open(path, "w") as f:
                f.write(r.stdout)
            logs[s] = r.stdout
        return logs

    def exit_codes(self) -> dict[str, int | None]:
        codes = {}
        for s in self.services:
            cid = self._compose("ps", "-q", s, check=False).stdout.strip()
            r = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}} "
                                "{{.State.Running}}", cid], capture_output=True, text=True,
                               timeout=30) if cid else None
            if r is None or r.returncode:
                codes[s] = None
                continue
            code, running = r.stdout.split()
            codes[s] = None if running == "true" else int(code)
        return codes

    def stop(self) -> None:
        """Stop the services (SIGTERM: the switch closes its trace, each link reports what it
        carried); the containers stay for their logs until down()."""
        if self.up_done:
            self._compose("stop", "-t", "20", timeout=300, check=False)

    def down(self) -> None:
        """Stop (SIGTERM: the switch flushes its trace) and remove containers and network."""
        if self.up_done:
            self.up_done = False
            self._compose("down", "--remove-orphans", "-t", "20", timeout=300, check=False)

    def __exit__(self, *exc) -> None:
        self.down()


def project_resources(project: str) -> dict[str, list[str]]:
    """The containers and networks docker knows under this compose project (empty: none)."""
    label = f"label=com.docker.compose.project={project}"
    out = {}
    for kind, cmd in (("containers", ["docker", "ps", "-a", "-q", "--filter", label]),
                      ("networks", ["docker", "network", "ls", "-q", "--filter", label])):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        out[kind] = r.stdout.split()
    return out


def remove_images(tags: list[str], log=print) -> None:
    for t in tags:
        r = subprocess.run(["docker", "rmi", t], capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            log(f"removed image {t}")


def run_compose_demo(steps: int = 150, bw: float | None = None, loss: float = 0.0,
                     image: str = DEFAULT_IMAGE, build: str = "missing", base: str = "auto",
                     base_tag: str | None = None, runs_dir: str = os.path.join(REPO, "runs"),
                     name: str | None = None, project: str = DEFAULT_PROJECT, exact: int = 0,
                     remove_image: bool = False, switch: str = "embedded", log=print,
                     echo=sys.stdout) -> dict:
    """The compose demo, engine to teardown. Returns a report: rc, folder, output, logs, codes,
    engine_started, images_made, left (project resources after the teardown), versions."""
    from topology.docker_engine import Engine, server_version
    from topology.docker_image import LOCAL_BASE, build_image, image_exists
    name = name or time.strftime("%Y%m%d-%H%M%S") + "-compose"
    folder = os.path.join(os.path.abspath(runs_dir), name)
    rep = {"rc": 2, "folder": folder, "name": name, "output": "", "logs": {}, "codes": {},
           "images_made": [], "left": {}, "engine_started": False}
    base_tag = base_tag or LOCAL_BASE
    seconds = rep["seconds"] = {}
    t = [time.monotonic()]

    def lap(what: str) -> None:
        now = time.monotonic()
        seconds[what] = round(now - t[0], 1)
        t[0] = now
    with Engine(log=log) as engine:
        lap("engine")
        rep["engine_started"] = engine.started
        made = rep["images_made"]
        try:
            cmd = compose_cmd(log)
            rep["versions"] = {"engine": server_version(), "compose": " ".join(cmd) + " " +
                               compose_version(cmd)}
            log(f"Docker engine {rep['versions']['engine']}, {rep['versions']['compose']}")
            if switch == "bmv2":
                _need_bmv2_image(log)
            if build == "always" or not image_exists(image):
                had_base = image_exists(base_tag)
                used = build_image(image, log=log, base=base, base_tag=base_tag)
                made.append(image)
                if used == base_tag and not had_base:
                    made.append(base_tag)
            lap("build")
            demo_args = [f"--out runs/{name}"] + ([f"--exact {exact}"] if exact else [])
            if switch == "bmv2":
                demo_args.append("--bmv2-json p4/build/nina.json --macs-from-arp")
            env = {"NINA_DEMO_STEPS": str(steps), "NINA_TRACE": f"runs/{name}/switch.trace",
                   "NINA_DEMO_ARGS": " ".join(demo_args),
                   "NINA_BW": f"{bw:g}" if bw else "", "NINA_LOSS": f"{loss:g}" if loss else ""}
            if switch == "bmv2":
                env["NINA_SWITCH_IP"] = BMV2_IP
            log(f"docker compose: project {project}, image {image}, {WORKERS} workers, "
                f"{steps} steps per job" + (f", links {bw:g} Mbit/s" if bw else "")
                + (f", loss {loss:g}%" if loss else "") + f"; run folder {folder}")
            rack = ComposeRack(image, runs_dir, project, env, log, bmv2=switch == "bmv2")
            with rack:
                rack.up()
                lap("up")
                rep["rc"], rep["output"] = rack.wait("coordinator", echo=echo)
                lap("coordinator")
                rack.stop()          # the switch ends (SIGTERM) and closes its trace
                rep["codes"] = rack.exit_codes()
                rep["logs"] = rack.save_logs(folder)
                rack.down()
            rep["left"] = project_resources(project)
        finally:
            if remove_image:
                remove_images(made, log)
            lap("teardown")
    lap("engine stop")
    log("seconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items()))
    return rep


def _need_bmv2_image(log) -> None:
    """The bmv2 profile's image must be here (or pullable): say so in one line otherwise."""
    from topology.docker_image import _pull, image_exists
    if image_exists(BMV2_IMAGE) or _pull(BMV2_IMAGE, log):
        return
    raise ComposeError(f"--switch bmv2 needs the image {BMV2_IMAGE} (simple_switch_grpc), "
                       f"which is not here and cannot be pulled: where a registry is "
                       f"reachable `docker pull {BMV2_IMAGE}`; else build it from "
                       f"github.com/p4lang/behavioral-model's Dockerfile on a machine that "
                       f"has one and `docker save`/`docker load` it here")


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
    d.add_argument("--bw", type=_mbit, default=None, metavar="MBIT",
                   help="bandwidth of each worker link (its uplink and the switch's downlink "
                        "to it), Mbit/s (default unlimited)")
    d.add_argument("--loss", type=percentage, default=0.0, metavar="PCT",
                   help="packet loss of each worker link direction (percent)")
    d.add_argument("--exact", type=int, default=20_000, metavar="N",
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


def _mbit(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 Mbit/s, got {text}")
    return v


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
    if args.exact < 0:
        return _fail(f"--exact must be >= 0, got {args.exact}")
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
