# SparseVLM benchmark harness. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint format clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,harness]"
	$(BIN)/pip install --quiet --no-deps lmms-eval==0.7.3
	touch $(STAMP)

install: $(STAMP)  ## create .venv: the project (editable), the harness stack (Hydra, lmms-eval, W&B) and dev tools

test: $(STAMP)  ## run the CPU test suite (installs first if needed)
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## the suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
