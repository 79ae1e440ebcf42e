# The two set-up commands (README): `make up` runs the app on a local 3-node cluster,
# `make test` runs the test suite. Both create .venv and install grid-serve first.
# `make lint` runs the static checks (ruff, mypy on the pure core, the import contracts); CI runs it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up down lint test test-quick bench-quick bench install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/grid up --local

down: $(STAMP)
	$(BIN)/grid down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/python -m pytest -q -rfE

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster and not multihost"

bench-quick: $(STAMP)
	$(BIN)/python bench/run_all.py --quick

bench: $(STAMP)
	$(BIN)/python bench/run_all.py
