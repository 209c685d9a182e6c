# NINA make targets. Every target that runs Python first brings .venv up to date (and, as root,
# the Debian packages the rack needs), so a fresh machine needs nothing installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# nftables/iptables: link loss and delay on kernels without sch_netem; iputils-ping: pingall
APT_PACKAGES := mininet iproute2 ethtool tcpdump nftables iptables iputils-ping
N ?= 4
STEPS ?= 300
COMPRESSOR ?= nat
MODEL ?= mlp
BW ?=
DELAY ?=
LOSS ?=
RACK_LINKS = $(if $(BW),--bw $(BW)) $(if $(DELAY),--delay $(DELAY)) $(if $(LOSS),--loss $(LOSS))

.PHONY: help venv sysdeps demo test bench p4 clean rack train

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

sysdeps:  ## Debian packages for the Mininet rack (only as root; skipped otherwise)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "not root: skipping Debian packages ($(APT_PACKAGES)); the rack falls back to local mode"; fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# Debian's mininet lives in /usr/lib/python3/dist-packages; expose just that package.
	@if [ -d /usr/lib/python3/dist-packages/mininet ]; then \
	  d=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  mkdir -p $$d/nina_mininet && ln -sfn /usr/lib/python3/dist-packages/mininet $$d/nina_mininet/mininet && \
	  echo "$$d/nina_mininet" > $$d/nina-mininet.pth; fi
	@touch $@

venv: sysdeps $(STAMP)  ## create/update .venv

demo: venv  ## the main job: a short C_nat training job vs the INT32 baseline
	$(BIN)/nina demo --workers $(N)

rack: venv  ## interactive rack (Mininet as root, else local): N, BW (Mbit/s), DELAY (ms), LOSS (%)
	$(BIN)/nina rack --workers $(N) $(RACK_LINKS)

train: venv  ## a training job on a fresh rack, then teardown: COMPRESSOR, MODEL, STEPS, N (+ BW, DELAY, LOSS)
	$(BIN)/nina rack --workers $(N) $(RACK_LINKS) --run "train --compressor $(COMPRESSOR) --model $(MODEL) --steps $(STEPS)"

test: venv  ## all tests
	$(BIN)/python -m pytest -ra -q

bench: venv  ## headline measurements: regenerates bench/REPORT.md and its plots (long)
	$(BIN)/python bench/report.py

p4: venv  ## regenerate p4/nina.p4; compile with p4c when on PATH
	$(BIN)/python p4/gen_p4.py
	@if command -v p4c >/dev/null; then $(MAKE) -s p4-compile; \
	else echo "p4c not on PATH: keeping p4/build/nina.json and p4/build/nina.p4info.txtpb"; fi

p4-compile:
	mkdir -p p4/build
	p4c --target bmv2 --arch v1model -o p4/build --p4runtime-files p4/build/nina.p4info.txtpb p4/nina.p4

clean:  ## remove the venv, caches and run folders
	rm -rf $(VENV) .pytest_cache .hypothesis runs build *.egg-info
