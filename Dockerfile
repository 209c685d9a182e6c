# The NINA image: this checkout installed by the project's own step (`make venv`), nothing
# else, so a container runs exactly what `make demo` runs on a host. The Debian packages of the
# Mininet rack are left out (APT_PACKAGES=): containers are the hosts, docker the network.
#
# Two ways to build it:
# - `make docker-image` (or `nina compose build`): BASE is the registry's python image when it
#   can be pulled, else one made from Debian's packages (debootstrap + docker import, cached in
#   build/docker/); the Python packages come from a wheelhouse built on the host
#   (build/docker/wheels, PIP_OPTS="--no-index --find-links ..."), so the build runs with
#   --network none and needs neither a registry nor the host's TLS trust inside the container.
# - `docker compose build` / `up --build` with the defaults below: the registry's python image,
#   Debian's packages from apt and the Python packages from PyPI, for a machine whose containers
#   reach both.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
# make: the install step; iproute2 (tc) and nftables: per-container link impairment
# (topology/container_link.py). A debootstrapped base already has them (no apt needed).
RUN command -v make >/dev/null && command -v tc >/dev/null && command -v nft >/dev/null || \
    (apt-get update && apt-get install -y --no-install-recommends make iproute2 nftables \
     && rm -rf /var/lib/apt/lists/*)
WORKDIR /nina
COPY . .
ARG PIP_OPTS=
RUN make venv APT_PACKAGES= PY=python3 EXTRAS=test PIP_OPTS="${PIP_OPTS}" && rm -rf build/docker
ENV PATH=/nina/.venv/bin:$PATH PYTHONUNBUFFERED=1
CMD ["nina", "--help"]
