# The two quick-start commands: `make run` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck clean bench lock

# Installs exactly the versions in the lock files (requirements/*.txt, hashes checked),
# then notifier itself; `make lock` writes the lock files again from pyproject.toml.
LOCK := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes

$(STAMP): pyproject.toml requirements/dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "notifier needs Python 3.11 or newer (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Pins already in a lock file are kept unless pyproject.toml no longer allows them;
# `make lock UPGRADE=--upgrade` moves every pin to the newest release allowed.
lock: $(STAMP)
	$(LOCK) $(UPGRADE) pyproject.toml -o requirements/runtime.txt
	$(LOCK) $(UPGRADE) --extra dev pyproject.toml -o requirements/dev.txt
	$(LOCK) $(UPGRADE) --extra dev --extra bench pyproject.toml -o requirements/bench.txt

run: $(STAMP)
	$(BIN)/notifier serve --dev

test: lint typecheck
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Benchmarks (benchmarks/RESULTS.md); BENCH_QUICK=1 for a smoke run. wrk is installed with
# apt-get when possible; without it the Python load generator is used.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/bench.txt
	touch $@

bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null 2>&1; } \
		|| echo "wrk is not available: using the Python load generator"
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
