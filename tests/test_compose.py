"""docker-compose.yml, the Dockerfile and the compose rack.

Without an engine:
- the compose file passes a real schema check (Debian's docker-compose v1: `config -q` needs no
  engine), and a broken copy does not;
- the Dockerfile installs with the Makefile's own target (no second recipe), offline options
  reaching both pip calls;
- every service command parses with the project's real argparse parsers, and the addresses in
  them agree (workers reach the coordinator, the coordinator the switch, ranks 0..N-1);
- the per-container link commands (tc/nft) and their refusals of bad values.
With an engine (started by the test as root when none runs): the compose demo end to end.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML missing (pip install -e '.[test]')")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE = os.path.join(REPO, "docker-compose.yml")
DOCKERFILE = os.path.join(REPO, "Dockerfile")
BMV2_ENV = {"NINA_SWITCH_IP": "172.29.77.3",
            "NINA_DEMO_ARGS": "--bmv2-json p4/build/nina.json --macs-from-arp"}


def _interpolate(text: str, env: dict) -> str:
    """Compose's ${VAR}, ${VAR:-default} and $$ (the subset the file uses)."""
    def sub(m):
        name, default = m.group(1), m.group(3)
        v = env.get(name)
        return v if v else (default or "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, text).replace("$$", "$")


def _services() -> dict:
    with open(COMPOSE) as f:
        doc = yaml.safe_load(f)
    return doc["services"]


def _argv(service: dict, env: dict) -> list[str]:
    cmd = service["command"]
    if isinstance(cmd, str):               # compose splits a string command like a shell
        return shlex.split(_interpolate(cmd, env))
    return [_interpolate(c, env) for c in cmd]


def _ip(service: dict) -> str:
    return service["networks"]["rack"]["ipv4_address"]


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _compose_tool() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (Debian's, v1) is not installed: as root `make sysdeps` "
                    "installs it; the schema check is skipped")
    return tool


def test_compose_file_passes_the_schema_check_and_a_broken_copy_does_not(tmp_path):
    tool = _compose_tool()
    for extra in ([], ["--profile", "bmv2"]):
        r = subprocess.run([tool, "-f", COMPOSE, *extra, "config", "-q"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(open(COMPOSE).read().replace("    healthcheck:", "    healtcheck:"))
    r = subprocess.run([tool, "-f", str(broken), "--project-directory", REPO, "config", "-q"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "healtcheck" in r.stderr, r.stderr


def _run_lines(path: str) -> list[str]:
    """The Dockerfile's RUN commands, continuation lines joined."""
    text = re.sub(r"\\\n", " ", open(path).read())
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.strip().upper().startswith("RUN ")]


def test_dockerfile_installs_with_the_makefile_target():
    runs = _run_lines(DOCKERFILE)
    # the make command of each RUN (a RUN may go on with `&& other commands`)
    makes = [shlex.split(part) for r in runs for part in r.split("&&")
             if shlex.split(part)[:1] == ["make"]]
    assert makes, f"no RUN invokes make: {runs}"
    targets = [w for argv in makes for w in argv[1:] if not w.startswith("-") and "=" not in w]
    assert "venv" in targets
    makefile = open(os.path.join(REPO, "Makefile")).read()
    for t in targets:
        assert re.search(rf"^{re.escape(t)}:", makefile, re.M), f"no Makefile target {t}"
    for r in runs:   # one install recipe: the Makefile's
        assert "pip install" not in r and "-m venv" not in r, r
    # the target really is the install, with the offline build's pip options in both pip calls
    offline = "--no-index --find-links /nina/build/docker/wheels"
    argv = [a.replace("${PIP_OPTS}", offline) for a in makes[0][1:]]
    dry = subprocess.run(["make", "-n", "-B", *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    pips = [line for line in dry.stdout.splitlines() if "pip install" in line]
    assert len(pips) == 2 and all(offline in line for line in pips), dry.stdout
    if "APT_PACKAGES=" in makes[0]:      # the image skips the rack's Debian packages
        assert "for p in ; do" in dry.stdout
    # the host's .venv must not reach the image (its stamp would skip the install); of build/
    # only the wheelhouse goes in (not the base tarball)
    ignored = open(os.path.join(REPO, ".dockerignore")).read().split()
    assert ".venv" in ignored and "runs" in ignored
    assert "build" in ignored and "!build/docker/wheels" in ignored
    text = open(DOCKERFILE).read()
    assert re.search(r"^FROM\s+\$\{BASE\}", text, re.M), "FROM ${BASE} (the build's choice)"
    base = re.search(r"^ARG\s+BASE=python:(\d+)\.(\d+)", text, re.M)
    assert base, "the default base should be a python:3.x image"
    need = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"',
                     open(os.path.join(REPO, "pyproject.toml")).read())
    assert tuple(map(int, base.groups())) >= tuple(map(int, need.groups()))
    from topology.docker_image import REGISTRY_BASE
    assert text.count(f"ARG BASE={REGISTRY_BASE}") == 1


@pytest.mark.parametrize("env", [{}, BMV2_ENV], ids=["embedded", "bmv2"])
def test_service_commands_parse_and_their_addresses_agree(env):
    from nina.cli import build_parser
    from worker import worker_proc
    services = _services()
    ours = {name: s for name, s in services.items() if "build" in s or
            s.get("image", "").startswith("nina")}
    parsed = {}
    for name, s in ours.items():
        argv = _argv(s, env)
        if argv[0] == "nina":
            parsed[name] = ("nina", build_parser().parse_args(argv[1:]), argv)
        elif argv[:3] == ["python", "-m", "worker.worker_proc"]:
            parsed[name] = ("worker", worker_proc.parser().parse_args(argv[3:]), argv)
        else:
            pytest.fail(f"service {name}: unknown command {argv}")
    switch = parsed["switch"][1]
    assert switch.command == "switch" and switch.mode == "local"
    coord = parsed["coordinator"][1]
    assert coord.command == "demo" and coord.external_workers
    workers = {n: a for n, (kind, a, _) in parsed.items() if kind == "worker"}
    assert len(workers) == coord.workers >= 1
    assert sorted(a.rank for a in workers.values()) == list(range(coord.workers))
    endpoint = f"tcp://{_ip(services['coordinator'])}:{coord.coord_bind[1]}"
    for n, a in workers.items():
        assert a.coord == endpoint, n
        assert a.ip == _ip(services[n]) and a.serve, n    # the address it announces is its own
    if env:   # BMv2: the coordinator's switch is the bmv2 service
        bmv2 = services["bmv2"]
        argv = _argv(bmv2, env)
        assert coord.switch[0] == _ip(bmv2) and coord.grpc == f"{_ip(bmv2)}:9559"
        assert argv[0] == "simple_switch_grpc" and "0.0.0.0:9559" in argv
        assert "/p4/nina.json" in argv and "./p4/build:/p4:ro" in bmv2["volumes"]
        assert coord.bmv2_json == "p4/build/nina.json" and coord.macs_from_arp
        assert bmv2["profiles"] == ["bmv2"]
    else:
        assert coord.switch == (_ip(services["switch"]), switch.listen[1])
        assert coord.grpc.rsplit(":", 1)[1] == switch.grpc.rsplit(":", 1)[1]
        assert switch.trace and switch.trace.endswith("switch.trace")
    net = ipaddress.ip_network(yaml.safe_load(open(COMPOSE))["networks"]["rack"]["ipam"]
                               ["config"][0]["subnet"])
    ips = [_ip(s) for s in services.values()]
    assert len(set(ips)) == len(ips) and all(ipaddress.ip_address(i) in net for i in ips)


# ---- per-container links (no engine needed) -------------------------------------------------

def test_container_link_commands_shape_each_peer_and_refuse_bad_values():
    from topology.container_link import link_commands, shape_from_env
    shape, peers = shape_from_env({"NINA_LINK_BW": "50", "NINA_LINK_LOSS": "1",
                                   "NINA_LINK_PEERS": "172.29.77.11, 172.29.77.12"})
    assert shape.bw_mbit == 50 and shape.loss_pct == 1 and peers == ["172.29.77.11",
                                                                      "172.29.77.12"]
    cmds, nft = link_commands(shape, peers, "eth0", netem=False)
    text = [" ".join(c) for c in cmds]
    # the switch side: one 50 Mbit/s class per worker, everything else unshaped (default 0)
    assert text[0] == "tc qdisc add dev eth0 root handle 5: htb default 0"
    assert sum("htb rate 50.0mbit" in t for t in text) == 2
    assert any("match ip dst 172.29.77.12/32 flowid 5:11" in t for t in text)
    assert "ip daddr { 172.29.77.11, 172.29.77.12 }" in nft and "drop" in nft
    # a worker: its whole egress in one class; netem (where the kernel has it) under it
    cmds, nft = link_commands(shape, [], "eth0", netem=True)
    assert nft is None and cmds[0][-1] == "1"
    assert " ".join(cmds[-1]).endswith("parent 5:1 handle 20: netem loss 1.0%")
    assert shape_from_env({})[0].bw_mbit is None
    for env, word in (({"NINA_LINK_BW": "fast"}, "NINA_LINK_BW"),
                      ({"NINA_LINK_BW": "-5"}, "NINA_LINK_BW"),
                      ({"NINA_LINK_LOSS": "100"}, "NINA_LINK_LOSS"),
                      ({"NINA_LINK_PEERS": "worker1"}, "NINA_LINK_PEERS")):
        with pytest.raises(ValueError, match=word):
            shape_from_env(env)


def test_container_link_runs_the_command_and_reports_a_bad_value_in_one_line():
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("NINA_LINK_")}
    r = subprocess.run([sys.executable, "-m", "topology.container_link", "--", "sh", "-c",
                        "exit 7"], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 7, r.stderr               # unshaped: it becomes the command
    r = subprocess.run([sys.executable, "-m", "topology.container_link", "--", "true"],
                       env={**env, "NINA_LINK_BW": "0"}, cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "container_link: error: NINA_LINK_BW must be > 0 Mbit/s, got 0.0"


def test_no_engine_and_not_root_is_one_clear_error(monkeypatch):
    from topology import docker_engine
    monkeypatch.setattr(docker_engine, "engine_answers", lambda: False)
    monkeypatch.setattr(docker_engine.os, "geteuid", lambda: 1000)
    with pytest.raises(docker_engine.EngineError, match="no Docker engine answers.*as root"):
        docker_engine.Engine(log=lambda *a: None).__enter__()


def test_compose_cli_refuses_bad_values_in_one_line():
    import sys
    for argv, why in ((["--bw", "0"], "must be a number > 0"), (["--bw", "x"], "not a number"),
                      (["--loss", "100"], "not a percentage"), (["--exact", "-1"], ">= 0")):
        r = subprocess.run([sys.executable, "-m", "nina.cli", "compose", "demo", *argv],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
        errors = [line for line in r.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0] == r.stderr.strip().splitlines()[-1], r.stderr


# ---- the compose rack for real ---------------------------------------------------------------

def _engine_or_skip():
    from topology.docker_engine import engine_answers
    if engine_answers():
        return
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers and not root (as root the test installs "
                    "docker.io and starts dockerd for the run)")


@pytest.mark.root
@pytest.mark.timeout(1500)
def test_compose_demo_end_to_end_on_a_docker_engine(tmp_path):
    """Engine (started here if none runs), offline image build, switch + 4 workers + the
    coordinator as containers with 200 Mbit/s links: exact all-reduces, identical models, the
    summary table, the run folder and trace on the host; nothing of the run left behind."""
    import time

    import numpy as np

    from nina.decisions import TRACE_DTYPE
    from topology import docker_engine
    from topology.compose import run_compose_demo
    from topology.docker_engine import EngineError
    from topology.docker_image import BuildError, image_exists
    _engine_or_skip()
    tag = f"nina-test-{os.getpid()}"
    image, base_tag, project = f"{tag}:latest", f"{tag}-base:bookworm", f"ninatest{os.getpid()}"
    before = docker_engine._firewall_state()
    had_engine = docker_engine.engine_answers()
    t0 = time.monotonic()
    try:
        rep = run_compose_demo(steps=4, bw=200, image=image, build="always", base="auto",
                               base_tag=base_tag, runs_dir=str(tmp_path), name="demo",
                               project=project, exact=5000, remove_image=True, log=print)
    except (EngineError, BuildError) as e:
        if "apt-get" in str(e) or "debootstrap" in str(e):
            pytest.skip(f"no Docker engine or base image here: {e}")
        raise
    print(f"compose demo test: {time.monotonic() - t0:.0f} s (engine started here: "
          f"{rep['engine_started']})")
    out, folder = rep["output"], tmp_path / "demo"
    print(out[-4000:])
    assert rep["rc"] == 0, {s: log[-1500:] for s, log in rep["logs"].items()}
    assert rep["codes"] == {s: 0 for s in rep["codes"]}, rep["codes"]
    # exact sums on every worker, both encodings; then the demo's table
    assert "EXACT: nat8" in out and "EXACT: int32" in out and "WRONG" not in out
    assert "compressor" in out and "bit/el up" in out and "train s" in out
    rows = json.loads((folder / "comparison.json").read_text())
    assert [r["compressor"] for r in rows] == ["nat", "int32"]
    for r in rows:   # the coordinator compared every worker's model hash (aborts otherwise)
        assert r["steps"] == 4 and r["packets_up"] > 0
        assert f"models identical on all workers (hash {r['model_hash']})" in out
    assert rows[1]["packets_up"] > 3 * rows[0]["packets_up"]   # 4x the elements per packet
    for name in ("nat", "int32"):
        assert (folder / name / "metrics.json").exists()
    # the switch's trace is in the run folder on the host and holds every job's packets
    recs = np.fromfile(folder / "switch.trace", TRACE_DTYPE)
    assert set(np.unique(recs["job"])) == {1, 2, 101, 102}
    # each worker's uplink and the switch's downlinks were shaped inside the containers
    for w in ("worker1", "worker2", "worker3", "worker4"):
        log = (folder / f"container-{w}.log").read_text()
        assert "link eth0 egress: bw 200 Mbit/s (htb)" in log, log[-800:]
        sent = re.search(r"class 5:1 rate 200Mbit: sent (\d+) bytes", log)
        assert sent and int(sent.group(1)) > 100_000, log[-800:]
    log = (folder / "container-switch.log").read_text()
    assert "link eth0 to each of 4 peers: bw 200 Mbit/s (htb)" in log
    assert len(re.findall(r"class 5:1\d rate 200Mbit: sent [1-9]\d* bytes", log)) == 4, log
    # nothing left: containers, network, image tags; the engine and firewall as before
    assert rep["left"] == {"containers": [], "networks": []}
    assert rep["images_made"][:1] == [image]
    assert not any(image_exists(t) for t in (image, base_tag))
    assert docker_engine.engine_answers() == had_engine
    assert docker_engine._firewall_state() == before
