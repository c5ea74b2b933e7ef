# Kairos: every target is .PHONY; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/buf/node_modules/.bin/buf
BENCH ?=

.PHONY: help venv dev test test-unit test-integration bench proto lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Kairos needs Python 3.11 or newer (PYTHON=$(PYTHON) is " + sys.version.split()[0] + ")") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create or update the virtualenv in .venv

dev: $(STAMP) ## run the whole suite locally: embedded NATS, SQLite in .kairos/, all four services
	$(BIN)/kairos dev

test: $(STAMP) ## run every test (PostgreSQL tests need KAIROS_TEST_DATABASE_URL)
	$(BIN)/python -m pytest

test-unit: $(STAMP) ## run the unit tests only
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP) ## run the integration tests only
	$(BIN)/python -m pytest tests/integration

bench: $(STAMP) ## run the benchmarks; BENCH=<name-prefix> runs a subset
	$(BIN)/python -m tests.benchmarks $(BENCH)

proto: $(STAMP) ## regenerate libs/kairos/v1 from protos/ with the pinned grpcio-tools
	$(BIN)/python -m kairos.devtools.protogen

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools/buf @bufbuild/buf@$(BUF_VERSION)

lint: $(STAMP) $(BUF) ## ruff (lint + format check) and buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd protos && ../$(BUF) lint

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove the virtualenv, tools, dev data and caches
	rm -rf $(VENV) .tools .kairos .pytest_cache .ruff_cache .hypothesis *.egg-info
