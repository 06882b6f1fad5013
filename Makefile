# Everyday commands; `make` alone lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` needs only what runs in production; test, lint and bench add the dev tools.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test lint fmt clean redis-server promtool bench prometheus-rule

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(DEV_STAMP) ## Create .venv with requirements-dev.txt (again only when a requirements file changes)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(RUN_STAMP)

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

# promtool (Debian's prometheus package) runs the alert rules' unit tests; the same rule as redis-server.
promtool:
	@command -v promtool >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "promtool is missing; installing the prometheus package with apt-get"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
	else \
		echo "error: promtool is not installed. Install it (e.g. sudo apt-get install -y prometheus) and rerun." >&2; \
		exit 1; \
	fi

# A REDIS_URL of your own means no local redis-server is needed.
run: $(RUN_STAMP) $(if $(REDIS_URL),,redis-server) ## Run Redis, the agent receiver and both services locally (Ctrl-C stops all)
	$(BIN)/python -m devtools.run_local

test: $(DEV_STAMP) redis-server promtool ## Run the tests against a throwaway redis-server (extra pytest options: PYTEST_ARGS=...)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP) ## Check code and formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(DEV_STAMP) ## Sort imports and format the code with ruff
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

clean: ## Remove caches (keeps .venv; rm -rf .venv to start over)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .hypothesis

bench: $(DEV_STAMP) redis-server ## Benchmark both ingest endpoints against a bare-Flask ceiling (a few minutes; writes bench/RESULTS.md)
	$(BIN)/python bench/run.py

prometheus-rule: ## Regenerate the PrometheusRule of deploy/k8s/components from deploy/prometheus/alerts.yml
	$(PYTHON) -m devtools.prometheus_rule
