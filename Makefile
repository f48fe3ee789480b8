# `make demo` and `make test` set up .venv themselves on a fresh machine (Python >= 3.11).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
JOBS := examples/jobs

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tamc machines
	$(BIN)/tamc quote prusa-01 $(JOBS)/print-bracket.json
	$(BIN)/tamc quote shapeoko-01 $(JOBS)/mill-plate.json
	$(BIN)/tamc quote glowforge-01 $(JOBS)/cut-sign.json
	$(BIN)/tamc quote taxi-01 $(JOBS)/ride-station.json
	$(BIN)/tamc quote drone-01 $(JOBS)/drone-parcel.json
	$(BIN)/tamc quote bambu-02 $(JOBS)/print-bracket.json

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/ledger.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
