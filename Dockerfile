# The NINA image: this checkout installed by the project's own step (`make venv`), nothing
# else, so a container runs exactly what `make demo` runs on a host. The Debian packages of the
# Mininet rack are left out (APT_PACKAGES=): containers are the hosts, docker the network.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /nina
COPY . .
RUN make venv APT_PACKAGES=
ENV PATH=/nina/.venv/bin:$PATH PYTHONUNBUFFERED=1
CMD ["nina", "--help"]
