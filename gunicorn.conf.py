"""gunicorn settings, flat and read from the environment (PORT, WEB_CONCURRENCY, ...)."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from shared.logs import GUNICORN_LOGGING


def _whole_number(name, default, low, high):
    """An integer setting; a bad value stops gunicorn with one line naming the variable."""
    raw = os.environ.get(name, default)
    if not raw.isdigit() or not low <= int(raw) <= high:
        # SystemExit passes through gunicorn's config loader, which prints a traceback for any Exception.
        sys.exit(f"Error: {name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


bind = f"{os.environ.get('HOST', '0.0.0.0')}:{_whole_number('PORT', '8000', 0, 65535)}"
workers = _whole_number("WEB_CONCURRENCY", "2", 1, 64)
worker_class = "sync"
# Above the webhook's connect + read timeouts, so a slow agent never gets a worker killed.
timeout = _whole_number("GUNICORN_TIMEOUT", "30", 1, 3600)
graceful_timeout = _whole_number("GUNICORN_GRACEFUL_TIMEOUT", "20", 1, 3600)
# Load the app in the master: a bad setting stops the whole server at once with one message.
preload_app = True
accesslog = None  # the app logs one JSON line per request itself
errorlog = "-"
logconfig_dict = GUNICORN_LOGGING
# No control socket: two services on one host would fight over its default path.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# prometheus_client's multiprocess mode: every worker writes its numbers into this directory and
# /metrics adds them up. It must be set before the app imports prometheus_client, and emptied so
# that a restart does not resurrect the counts of workers that are gone.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="aggregator-metrics-")
metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
metrics_dir.mkdir(parents=True, exist_ok=True)
for leftover in metrics_dir.iterdir():
    if leftover.is_dir():
        shutil.rmtree(leftover)
    else:
        leftover.unlink()


def child_exit(server, worker):
    """Drop a dead worker's live gauges (prometheus_client multiprocess bookkeeping)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
