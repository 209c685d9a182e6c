# NINA make targets. Every target that runs Python first brings .venv up to date (and, as root,
# the Debian packages the rack needs), so a fresh machine needs nothing installed by hand.
PY ?= python3
# this checkout (clean removes nothing outside it, whatever the variables say)
REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 from here is the CPU build (+cpu); PyPI's default would be a CUDA build
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# used where its host resolves; elsewhere (a machine with a local wheel mirror, offline builds)
# pip takes torch==2.13.0 from its configured indexes, which must then hold the CPU build
TORCH_INDEX_OPT := $(if $(PIP_OPTS),,$(shell getent hosts $$(echo '$(TORCH_INDEX)' | cut -d/ -f3) >/dev/null 2>&1 && echo --extra-index-url $(TORCH_INDEX)))
STAMP := $(VENV)/.installed
# pyproject extras the venv gets (the container image takes test only: no torch in its wheelhouse)
EXTRAS ?= test,torch
# nftables/iptables: link loss and delay on kernels without sch_netem; iputils-ping: pingall;
# docker-compose (v1, Python): validates docker-compose.yml in the tests, no Docker engine needed
APT_PACKAGES := mininet iproute2 ethtool tcpdump nftables iptables iputils-ping docker-compose
N ?= 4
MODE ?= auto
DEMO_STEPS ?= 150
STEPS ?= 300
COMPRESSOR ?= nat
# a list of compressors (as --compare takes it): one job each and a comparison table
COMPARE ?=
MODEL ?= mlp
BW ?=
DELAY ?=
LOSS ?=
RACK_LINKS = $(if $(BW),--bw $(BW)) $(if $(DELAY),--delay $(DELAY)) $(if $(LOSS),--loss $(LOSS))
# extra pip options of the install (the Dockerfile's offline build: --no-index --find-links DIR)
PIP_OPTS ?=

.PHONY: help venv sysdeps demo test bench p4 clean rack train trace mutate docker-image docker-demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

sysdeps:  ## Debian packages for the Mininet rack and the compose check (only as root)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "not root: skipping Debian packages ($(APT_PACKAGES)); the rack falls back to local mode"; fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_OPTS) --upgrade pip
	$(BIN)/pip install -q $(PIP_OPTS) -e '.[$(EXTRAS)]' $(TORCH_INDEX_OPT)
	@# Debian's mininet lives in /usr/lib/python3/dist-packages; expose just that package.
	@if [ -d /usr/lib/python3/dist-packages/mininet ]; then \
	  d=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  mkdir -p $$d/nina_mininet && ln -sfn /usr/lib/python3/dist-packages/mininet $$d/nina_mininet/mininet && \
	  echo "$$d/nina_mininet" > $$d/nina-mininet.pth; fi
	@# compile the switch's and the workers' hot loops once, into the user's cache (nina/jit.py):
	@# every module that warms its kernels at import (_warm), so a first demo compiles nothing
	$(BIN)/python -c "import switch.pipeline, switch.packets, switch.packet_rings, nina.udp_batch, worker.window"
	@touch $@

venv: sysdeps $(STAMP)  ## create/update .venv

demo: venv  ## the main job: C_nat vs the INT32 baseline on an N-worker rack: N, MODE, DEMO_STEPS
	$(BIN)/nina demo --workers $(N) --mode $(MODE) --steps $(DEMO_STEPS)

docker-image: venv  ## the NINA image, built offline (as root: installs/starts the Docker engine if needed)
	$(BIN)/nina compose build

docker-demo: venv  ## the demo as containers (docker-compose.yml, 4 workers): DEMO_STEPS, BW (Mbit/s), LOSS (%)
	$(BIN)/nina compose demo --steps $(DEMO_STEPS) $(if $(BW),--bw $(BW)) $(if $(LOSS),--loss $(LOSS))

trace: venv  ## summarise the switch trace of the newest run under runs/ (nina trace summary)
	@run=$$(find runs -name switch.trace -type f -printf '%T@ %h\n' 2>/dev/null | sort -n | \
	  tail -n 1 | cut -d' ' -f2-); \
	if [ -z "$$run" ]; then echo "no run with a switch trace under runs/ yet (make demo writes one)"; \
	  exit 1; fi; \
	echo "nina trace summary $$run"; $(BIN)/nina trace summary "$$run"

rack: venv  ## interactive rack (Mininet as root, else local): N, BW (Mbit/s), DELAY (ms), LOSS (%)
	$(BIN)/nina rack --workers $(N) $(RACK_LINKS)

train: venv  ## a training job on a fresh rack, then teardown: COMPRESSOR or COMPARE, MODEL, STEPS, N (+ BW, DELAY, LOSS)
	$(BIN)/nina rack --workers $(N) $(RACK_LINKS) --run "train $(if $(COMPARE),--compare '$(COMPARE)',--compressor '$(COMPRESSOR)') --model $(MODEL) --steps $(STEPS)"

test: venv  ## all tests
	$(BIN)/python -m pytest -ra -q

MUTATE_VENV := .venv-mutate
MUTATE ?=
# cosmic-ray from pyproject.toml's `mutate` extra, in its own venv (see the comment there)
$(MUTATE_VENV)/.installed: pyproject.toml
	@test -x $(MUTATE_VENV)/bin/python || $(PY) -m venv $(MUTATE_VENV)
	$(MUTATE_VENV)/bin/pip install -q $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["mutate"]))')
	@touch $@

mutate: venv $(MUTATE_VENV)/.installed  ## mutation testing of the core modules (slow, not in CI): MUTATE="wire encodings ..." (docs/testing.md)
	$(BIN)/python tests/mutation/mutate.py $(MUTATE)

bench: venv  ## headline measurements: regenerates bench/REPORT.md and its plots (long)
	$(BIN)/python bench/report.py

p4: venv  ## regenerate p4/nina.p4 and p4/src/*.p4; compile with p4c when on PATH
	$(BIN)/python p4/gen_p4.py
	@if command -v p4c >/dev/null; then $(MAKE) -s p4-compile; \
	else echo "p4c not on PATH: keeping p4/build/nina.json and p4/build/nina.p4info.txtpb"; fi

p4-compile:
	mkdir -p p4/build
	p4c --target bmv2 --arch v1model -o p4/build --p4runtime-files p4/build/nina.p4info.txtpb p4/nina.p4

clean:  ## remove the venv, caches and run folders (of this checkout only)
	cd "$(REPO)" && rm -rf -- .venv .venv-mutate .pytest_cache .hypothesis runs build *.egg-info
