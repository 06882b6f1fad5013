"""gunicorn settings, flat and read from the environment (PORT, WEB_CONCURRENCY, ...)."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from shared.runtime.gunicorn_settings import whole_number
from shared.runtime.logs import GUNICORN_LOGGING

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{whole_number('PORT')}"
workers = whole_number("WEB_CONCURRENCY")
# Threads, so that clients stalled mid-request (no buffering proxy in front of the pods) occupy a
# thread each until CLIENT_READ_TIMEOUT_SECONDS cuts them, never a whole worker; see shared/runtime/gunicorn_worker.py.
worker_class = "shared.runtime.gunicorn_worker.ThreadWorker"
threads = whole_number("GUNICORN_THREADS")
client_read_timeout = whole_number("CLIENT_READ_TIMEOUT_SECONDS")
# The threaded worker's heartbeat does not wait for requests, so this no longer cuts a slow request
# (the webhook's budget and the client read timeout do); it still restarts a worker that hangs.
timeout = whole_number("GUNICORN_TIMEOUT")
graceful_timeout = whole_number("GUNICORN_GRACEFUL_TIMEOUT")
# Load the app in the master: a bad setting stops the whole server at once with one message.
preload_app = True
accesslog = None  # the app logs one JSON line per request itself
logger_class = "shared.runtime.gunicorn_worker.Logger"
errorlog = "-"
logconfig_dict = GUNICORN_LOGGING
# No control socket: two services on one host would fight over its default path.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def _remove_when_the_master_exits(path, master_pid):
    # Workers inherit this exit handler with the fork; a worker that exits must not take the directory.
    if os.getpid() == master_pid:
        shutil.rmtree(path, ignore_errors=True)


# gunicorn's workers keep their heartbeat files in the temporary directory, and the metrics directory
# defaults to one there: on a read-only root filesystem, say what to mount instead of a traceback.
try:
    tempfile.gettempdir()
except FileNotFoundError:
    sys.exit(
        "Error: no writable temporary directory: mount a writable volume at /tmp "
        "(an emptyDir or a tmpfs), or set TMPDIR to a writable directory"
    )

# prometheus_client's multiprocess mode: every worker writes its numbers into this directory and
# /metrics adds them up. It must be set before the app imports prometheus_client, and emptied so
# that a restart does not resurrect the counts of workers that are gone. A directory made here is
# removed again when gunicorn exits; one given in PROMETHEUS_MULTIPROC_DIR is left in place.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    created = tempfile.mkdtemp(prefix="aggregator-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    atexit.register(_remove_when_the_master_exits, created, os.getpid())
metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
try:
    metrics_dir.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    sys.exit(f"Error: PROMETHEUS_MULTIPROC_DIR {str(metrics_dir)!r} cannot be created ({exc.strerror}); mount it")
for leftover in metrics_dir.iterdir():
    if leftover.is_dir():
        shutil.rmtree(leftover)
    else:
        leftover.unlink()


def child_exit(server, worker):
    """Drop a dead worker's live gauges (prometheus_client multiprocess bookkeeping)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Hand the client read timeout to the worker (gunicorn has no setting for it)."""
    worker.client_read_timeout = client_read_timeout
