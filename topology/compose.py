"""The compose rack (docker-compose.yml) end to end on this machine (`nina compose demo`,
topology/compose_cli.py).

run_compose_demo brings up a Docker engine if none answers (topology/docker_engine.py: as root, installs
docker.io and starts dockerd without its iptables handling, stopped again at the end), builds
the image when it is missing (topology/docker_image.py), runs docker-compose.yml under a project
name of its own with the run folder on the host (NINA_RUNS), waits for the coordinator, prints
its output (the summary table of `make demo`), saves every container's log in the run folder
and removes the project's containers and network (and, with --remove-image, the image tags it
made). The run folder holds the switch's trace, so `nina trace summary <run folder>` reads it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

from topology.runenv import REPO

COMPOSE_FILE = os.path.join(REPO, "docker-compose.yml")
SERVICES = ("switch", "coordinator", "worker1", "worker2", "worker3", "worker4")
BMV2_IMAGE = "p4lang/behavioral-model"     # docker-compose.yml's bmv2 service
BMV2_IP = "172.29.77.3"
WORKERS = 4                         # the worker services of docker-compose.yml
DEFAULT_IMAGE = "nina:latest"
DEFAULT_PROJECT = "nina"
DEMO_TIMEOUT = 1800.0



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
             echo="stdout") -> tuple[int, str]:
        """Follow the service's output until it exits: (exit code, output)."""
        if echo == "stdout":   # looked up now: the sys.stdout of import time may be closed
            echo = sys.stdout
        cid = self.container(service)
        out = []
        follow = subprocess.Popen(["docker", "logs", "-f", cid], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        # a silent hang must end too: the watchdog ends the log stream at the deadline
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            follow.terminate()
        watchdog = threading.Timer(timeout, expire)
        watchdog.start()
        try:
            for line in follow.stdout:
                out.append(line)
                if echo is not None:
                    echo.write(line)
                    echo.flush()
        finally:
            watchdog.cancel()
            if follow.poll() is None:
                follow.terminate()
            follow.wait(timeout=10)
        if fired.is_set():
            raise ComposeError(f"the {service} did not finish within {timeout:.0f} s")
        try:   # the stream ended with the container: its exit code
            r = subprocess.run(["docker", "wait", cid], capture_output=True, text=True,
                               timeout=30)
        except subprocess.TimeoutExpired:
            raise ComposeError(f"the {service}'s log ended but it still runs") from None
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
                     echo="stdout") -> dict:
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
            try:
                rack.up()
                lap("up")
                rep["rc"], rep["output"] = rack.wait("coordinator", echo=echo)
                lap("coordinator")
            finally:             # also after a failure: the logs say why
                rack.stop()      # the switch ends (SIGTERM) and closes its trace
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
