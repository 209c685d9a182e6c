"""The NINA image, built on a machine whose containers reach no registry and no PyPI.

- Base: the registry's python image (REGISTRY_BASE) when it is present or can be pulled; else a
  Debian bookworm made from Debian's own packages (`debootstrap --variant=minbase` with python3,
  venv, make, iproute2 and nftables), saved as a tarball under build/docker/ (the Makefile's
  folder, never in git) and `docker import`ed from it, so later builds skip the 1-minute
  debootstrap.
- Python packages: a wheelhouse built on the host (`pip wheel` of the project's dependencies,
  the test extra, pip and setuptools) into build/docker/wheels, remade when pyproject.toml
  changes. The host's pip reaches PyPI with the host's own trust settings (proxy, CA); the
  image installs with `--no-index --find-links`, so the build runs with --network none.
- The image: `docker build --network none` of the Dockerfile with BASE and PIP_OPTS set.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys

from topology.docker_engine import EngineError
from topology.runenv import REPO

REGISTRY_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "nina-base:bookworm"
CACHE = os.path.join(REPO, "build", "docker")
BASE_TAR = os.path.join(CACHE, "base-bookworm.tar")
WHEELS = os.path.join(CACHE, "wheels")
WHEELS_STAMP = os.path.join(WHEELS, ".pyproject.sha256")
BASE_PACKAGES = "python3,python3-venv,make,iproute2,nftables"
MIRROR = os.environ.get("NINA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PULL_TIMEOUT = 60.0


class BuildError(RuntimeError):
    """The image could not be built; the message says why."""


def _run(cmd, timeout=600.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _tail(r: subprocess.CompletedProcess, n: int = 3) -> str:
    lines = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return " | ".join(lines[-n:]) or f"exit code {r.returncode}"


def image_exists(name: str) -> bool:
    return _run(["docker", "image", "inspect", name], timeout=30).returncode == 0


def _pull(name: str, log) -> bool:
    log(f"docker pull {name} (up to {PULL_TIMEOUT:.0f} s)")
    try:
        r = _run(["docker", "pull", "-q", name], timeout=PULL_TIMEOUT)
    except subprocess.TimeoutExpired:
        log(f"  no answer from the registry within {PULL_TIMEOUT:.0f} s")
        return False
    if r.returncode:
        log(f"  cannot pull: {_tail(r, 1)}")
    return r.returncode == 0


def _debootstrap_tarball(log) -> None:
    """Debian bookworm (minbase + BASE_PACKAGES) as a tarball at BASE_TAR."""
    if os.geteuid() != 0:
        raise BuildError(f"no base image: {REGISTRY_BASE} cannot be pulled and making one with "
                         f"debootstrap needs root")
    if not shutil.which("debootstrap"):
        log("installing debootstrap (apt-get)")
        r = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"],
                 timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if r.returncode:
            raise BuildError(f"apt-get install debootstrap failed: {_tail(r, 1)}")
    os.makedirs(CACHE, exist_ok=True)
    root = os.path.join(CACHE, "rootfs")
    shutil.rmtree(root, ignore_errors=True)
    log(f"debootstrap --variant=minbase --include={BASE_PACKAGES} bookworm (about a minute; "
        f"cached as {os.path.relpath(BASE_TAR, REPO)})")
    try:
        r = _run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                  root, MIRROR], timeout=1800)
        if r.returncode:
            raise BuildError(f"debootstrap failed: {_tail(r)}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in glob.glob(os.path.join(root, junk, "*")):
                if os.path.isfile(f):
                    os.unlink(f)
        tmp = BASE_TAR + ".part"
        r = _run(["tar", "-C", root, "--numeric-owner", "-cf", tmp, "."], timeout=600)
        if r.returncode:
            raise BuildError(f"tar of the base failed: {_tail(r)}")
        os.replace(tmp, BASE_TAR)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ensure_base(log=print, base: str = "auto", tag: str = LOCAL_BASE) -> str:
    """The base image's name: the registry one (base auto/registry), else `tag` imported from
    the cached Debian tarball (base auto/debian)."""
    if base in ("auto", "registry"):
        if image_exists(REGISTRY_BASE) or _pull(REGISTRY_BASE, log):
            return REGISTRY_BASE
        if base == "registry":
            raise BuildError(f"{REGISTRY_BASE} cannot be pulled (no registry reachable?); "
                             f"--base debian makes a base from Debian's packages")
        log(f"no registry image: using a base made from Debian's packages ({tag})")
    if not os.path.exists(BASE_TAR):
        _debootstrap_tarball(log)
    with open(BASE_TAR, "rb") as f:
        r = subprocess.run(["docker", "import", "-c", "ENV LANG=C.UTF-8", "-", tag], stdin=f,
                           capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise BuildError(f"docker import of {BASE_TAR} failed: {_tail(r)}")
    return tag


def _pyproject_digest() -> str:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ensure_wheels(log=print) -> str:
    """The wheelhouse for the image (made on the host; reused while pyproject.toml is the
    same). The host's interpreter must be the image's Python minor version (3.11)."""
    digest = _pyproject_digest()
    try:
        if open(WHEELS_STAMP).read().strip() == digest:
            return WHEELS
    except OSError:
        pass
    if sys.version_info[:2] != (3, 11):
        raise BuildError(f"the wheelhouse is built with this Python ({sys.version.split()[0]}) "
                         f"for the image's Python 3.11: run with a Python 3.11")
    shutil.rmtree(WHEELS, ignore_errors=True)
    os.makedirs(WHEELS)
    log(f"pip wheel: the project's dependencies into {os.path.relpath(WHEELS, REPO)} "
        f"(on the host, with its pip settings)")
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "-w", WHEELS, f"{REPO}[test]",
              "pip", "setuptools", "wheel"], timeout=1800, cwd=REPO)
    if r.returncode:
        raise BuildError(f"pip wheel failed: {_tail(r)}")
    for own in glob.glob(os.path.join(WHEELS, "nina-*.whl")):   # the image installs the source
        os.unlink(own)
    with open(WHEELS_STAMP, "w") as f:
        f.write(digest + "\n")
    return WHEELS


def build_image(tag: str, log=print, base: str = "auto", base_tag: str = LOCAL_BASE,
                quiet: bool = True) -> str:
    """Build the NINA image as `tag`, offline; returns the base image used."""
    base_image = ensure_base(log, base, base_tag)
    wheels = os.path.relpath(ensure_wheels(log), REPO)
    log(f"docker build --network none -t {tag} (base {base_image}, wheels from {wheels})")
    cmd = ["docker", "build", "--network", "none", "-t", tag,
           "--build-arg", f"BASE={base_image}",
           "--build-arg", f"PIP_OPTS=--no-index --find-links /nina/{wheels}", REPO]
    r = _run(cmd + (["-q"] if quiet else []), timeout=1800, cwd=REPO)
    if r.returncode:
        raise BuildError(f"docker build failed: {_tail(r, 6)}")
    return base_image


__all__ = ["BuildError", "EngineError", "build_image", "ensure_base", "ensure_wheels",
           "image_exists", "REGISTRY_BASE", "LOCAL_BASE"]
