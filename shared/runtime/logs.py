"""JSON log lines, one object per line, for the services and for gunicorn's own messages."""

import logging
import sys

from flask import current_app, has_app_context
from pythonjsonlogger.json import JsonFormatter

FORMAT = "%(levelname)s %(name)s %(message)s"
RENAMED = {"levelname": "level", "name": "logger"}


def json_formatter() -> JsonFormatter:
    """The formatter every log line goes through: time, level, logger, message and any extras."""
    return JsonFormatter(FORMAT, rename_fields=RENAMED, timestamp="time")


class ServiceField(logging.Filter):
    """Stamp each record with the service whose app is handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add `service` when an app is active; never drop a record."""
        if has_app_context() and not hasattr(record, "service"):
            # The app's name is its service's package (ServiceSpec.package), as the metrics label it.
            record.service = current_app.name
        return True


def configure(logger: logging.Logger, level: str | int) -> None:
    """Send `logger`'s records to stdout as JSON lines, once per process."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(json_formatter())
        handler.addFilter(ServiceField())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


# gunicorn's logconfig_dict: its own messages (boot, worker exits, signals) as JSON on stdout too.
GUNICORN_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "shared.runtime.logs.json_formatter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        # The app logs one richer line per request itself; gunicorn's access lines would double them.
        "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    },
    "root": {"handlers": ["stdout"], "level": "WARNING"},
}
