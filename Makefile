# prune-run. `make help` lists the targets. Every target creates .venv and installs the package
# (with its dev tools) the first time, so `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format bench clean

help: ## list the targets with what they do and how long they take
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  %-28s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install prune-run with its dev tools (first time: minutes)

demo: $(STAMP) ## the demonstration: LeNet-5 on bundled digits, dense + 3 pruning levels (~15 s)
	$(VENV)/bin/prune-run

test: $(STAMP) ## lint, then the whole test suite on the CPU (a few minutes)
	$(VENV)/bin/ruff check prune_cli tests scripts
	$(VENV)/bin/ruff format --check prune_cli tests scripts
	$(VENV)/bin/pytest -q

test-fast: $(STAMP) ## the tests without the end-to-end CLI runs (under a minute)
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check prune_cli tests scripts
	$(VENV)/bin/ruff format --check prune_cli tests scripts

format: $(STAMP) ## format the code with ruff
	$(VENV)/bin/ruff check --fix prune_cli tests scripts
	$(VENV)/bin/ruff format prune_cli tests scripts

bench: $(STAMP) ## prune-run's training step against a plain PyTorch loop (CPU ~1 min; GPU when present)
	$(PY) scripts/bench_train.py

clean: ## remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
