"""gunicorn settings, flat and read from the environment (PORT, WEB_CONCURRENCY, ...)."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
# Above the webhook's connect + read timeouts, so a slow agent never gets a worker killed.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
# Load the app in the master: a bad setting stops the whole server at once with one message.
preload_app = True
accesslog = None  # the app logs one line per request itself
errorlog = "-"
# No control socket: two services on one host would fight over its default path.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
