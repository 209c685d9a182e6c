"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

- the compose file passes a real schema check (Debian's docker-compose v1: `config -q` needs no
  engine), and a broken copy does not;
- the Dockerfile installs with the Makefile's own target (no second recipe);
- every service command parses with the project's real argparse parsers, and the addresses in
  them agree (workers reach the coordinator, the coordinator the switch, ranks 0..N-1).
"""
from __future__ import annotations

import ipaddress
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
    makes = [shlex.split(r) for r in runs if re.search(r"(^|&&\s*)make\s", r)]
    assert makes, f"no RUN invokes make: {runs}"
    targets = [w for argv in makes for w in argv[1:] if not w.startswith("-") and "=" not in w]
    assert "venv" in targets
    makefile = open(os.path.join(REPO, "Makefile")).read()
    for t in targets:
        assert re.search(rf"^{re.escape(t)}:", makefile, re.M), f"no Makefile target {t}"
    for r in runs:   # one install recipe: the Makefile's
        assert "pip install" not in r and "-m venv" not in r, r
    # the target really is the install: a dry run of it from scratch shows the pip install
    dry = subprocess.run(["make", "-n", "-B", *makes[0][1:]], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "pip install" in dry.stdout
    if "APT_PACKAGES=" in makes[0]:      # the image skips the rack's Debian packages
        assert "for p in ; do" in dry.stdout
    # the host's .venv must not reach the image (its stamp would skip the install)
    ignored = open(os.path.join(REPO, ".dockerignore")).read().split()
    assert ".venv" in ignored and "runs" in ignored
    base = re.search(r"^FROM\s+python:(\d+)\.(\d+)", open(DOCKERFILE).read(), re.M)
    assert base, "the image should start from a python:3.x image"
    need = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"',
                     open(os.path.join(REPO, "pyproject.toml")).read())
    assert tuple(map(int, base.groups())) >= tuple(map(int, need.groups()))


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
