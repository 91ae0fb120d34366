# The two commands of the README: `make run` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint system-tools clean bench bench-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/authproxy serve

# Tools the tests drive (curl, openssl): installed with apt-get when missing and when we can.
system-tools:
	bash scripts/install-system-tools

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: $(VENV)/.installed-test system-tools
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The benchmark against Squid, tinyproxy, proxy.py and mitmproxy (README, "Performance"): installs what it
# needs (apt-get, and a separate venv bench/.venv-peers), runs for about 12 minutes, writes bench/results/.
# BENCH_ARGS passes options to bench/run.py (see `.venv/bin/python bench/run.py --help`).
bench: $(VENV)/.installed
	PYTHON=$(PYTHON) bash bench/install.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: $(VENV)/.installed
	PYTHON=$(PYTHON) bash bench/install.sh
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
