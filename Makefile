# OneCard: the two commands (see README.md).
#   make demo   the platform's main job on its embedded default (SQLite, virtual card, simulated board)
#   make test   every test
#   make bench  the benchmarks
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test-only JavaScript (axe-core, pinned in package.json / package-lock.json).
JS     := node_modules/.installed

.PHONY: demo test bench lint system-deps venv clean

system-deps:
	@PYTHON=$(PYTHON) scripts/system-deps.sh

$(STAMP): pyproject.toml scripts/system-deps.sh
	@PYTHON=$(PYTHON) scripts/system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

$(JS): package.json package-lock.json $(STAMP)
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(STAMP)
	$(BIN)/onecard demo

test: $(STAMP) $(JS)
	$(BIN)/python -m pytest

# The benchmarks run the server in development mode (their keys are throwaway), also on PostgreSQL.
bench: $(STAMP)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; ONECARD_PRODUCTION=0 $(BIN)/python $$b; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var build *.egg-info node_modules
