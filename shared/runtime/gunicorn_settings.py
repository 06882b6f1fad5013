"""The numeric settings gunicorn.conf.py reads, with their bounds, checked the same way everywhere.

gunicorn parses WEB_CONCURRENCY itself, for the default of its `workers`, as soon as it is
imported: before gunicorn.conf.py runs, and with a traceback when the value is not a number. So
the image's command and `make run` check these settings first (`python -m shared.runtime.gunicorn_settings`),
and a bad value stops everything with the same one line gunicorn.conf.py prints.
"""

import os
import sys
from collections.abc import Mapping

from shared.core.setting import Setting

# Whole numbers, each declared once (docs/operations.md's table is checked against them).
GUNICORN_SETTINGS = (
    Setting("PORT", "gunicorn's listening port", 8000, int, 0, 65535),
    Setting("WEB_CONCURRENCY", "gunicorn worker processes", 2, int, 1, 64),
    Setting("GUNICORN_TIMEOUT", "seconds before gunicorn restarts a silent worker process", 30, int, 1, 3600),
    Setting("GUNICORN_GRACEFUL_TIMEOUT", "seconds the workers get to finish after SIGTERM", 20, int, 1, 3600),
    Setting("GUNICORN_THREADS", "threads per worker process", 8, int, 1, 256),
    Setting("CLIENT_READ_TIMEOUT_SECONDS", "how long a client may send nothing mid-request", 10, int, 1, 300),
)
WHOLE_NUMBERS = {setting.name: setting for setting in GUNICORN_SETTINGS}


def whole_number(name: str, environ: Mapping[str, str] | None = None) -> int:
    """The integer value of a gunicorn setting; a bad value exits with one line naming the variable."""
    environ = os.environ if environ is None else environ
    setting = WHOLE_NUMBERS[name]
    raw = environ.get(name, str(setting.default))
    if not raw.isdigit() or setting.out_of_bounds(int(raw)):
        # SystemExit passes through gunicorn's config loader, which prints a traceback for any Exception.
        sys.exit(f"Error: {name} must be a whole number from {setting.low} to {setting.high}, got {raw!r}")
    return int(raw)


def check(environ: Mapping[str, str] | None = None) -> None:
    """Exit with one line if any of the settings is bad."""
    for name in WHOLE_NUMBERS:
        whole_number(name, environ)


if __name__ == "__main__":
    check()
