# posfed — two commands on a fresh machine:
#   make demo   the embedded demo: SQLite, local folders, Dagster UI (127.0.0.1:3000) + daemon
#   make test   the whole test suite (what CI runs); make check: its fast part, under a minute
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test check lint docs system-deps compat clean

$(INSTALLED): pyproject.toml dev/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./dev
	@touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/posfed demo

system-deps:
	@bash scripts/install-system-deps.sh

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/dg check defs

test: $(INSTALLED) system-deps lint
	$(BIN)/pytest

# docs/cli.md from the parser (with posfed-dev's commands, as make installs it) and
# docs/configuration.md from the config models; each has a test that fails when it is stale.
docs: $(INSTALLED)
	$(BIN)/python -m posfed_pipeline.cli.reference docs/cli.md
	$(BIN)/python -m posfed_pipeline.core.config.reference > docs/configuration.md

# The fast tests while you work (under a minute); `make test` runs everything.
check: $(INSTALLED) lint
	$(BIN)/pytest -m "not slow" -q

# posfed on the newest dagster, dagster-webserver, dagster-postgres, pandera and SQLAlchemy that
# install together, in .venv-compat, against the tests that pin Dagster's private API down
# (scripts/compat.py says how; docs/deployment.md, "Upgrading Dagster under a running store").
# Not part of `make test`: it downloads, and takes about a quarter of an hour.
compat:
	$(PYTHON) scripts/compat.py --venv .venv-compat

clean:
	rm -rf .posfed
