# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
LEUKOSTAGE_DATA ?= $(abspath ../shared/data)
export LEUKOSTAGE_DATA

.PHONY: setup run test lint bench clean browser postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,test]"
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium for the real-browser tests (skipped quietly where apt-get is unavailable or not root).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: browser tests will fail under CI"

# Debian's PostgreSQL server binaries for the case tests' throw-away cluster (initdb/pg_ctl; no service is started).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
		echo "postgresql not installed: the PostgreSQL half of the case tests will fail under CI"

run: setup
	$(BIN)/leukostage db upgrade
	$(BIN)/leukostage serve --host $(HOST) --port $(PORT)

# The house rules a machine checks: lint and format (ruff), and the import contracts in pyproject.toml
# (only the CLI imports training/, nothing outside training/ imports torch, no import circles).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: setup browser postgres lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) .pytest_cache
