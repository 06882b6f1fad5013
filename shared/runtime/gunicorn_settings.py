"""The numeric settings gunicorn.conf.py reads, with their bounds, checked the same way everywhere.

gunicorn parses WEB_CONCURRENCY itself, for the default of its `workers`, as soon as it is
imported: before gunicorn.conf.py runs, and with a traceback when the value is not a number. So
the image's command and `make run` check these settings first (`python -m shared.runtime.gunicorn_settings`),
and a bad value stops everything with the same one line gunicorn.conf.py prints.
"""

import os
import sys
from collections.abc import Mapping

# name: (default, lowest, highest)
WHOLE_NUMBERS = {
    "PORT": ("8000", 0, 65535),
    "WEB_CONCURRENCY": ("2", 1, 64),
    "GUNICORN_TIMEOUT": ("30", 1, 3600),
    "GUNICORN_GRACEFUL_TIMEOUT": ("20", 1, 3600),
    "GUNICORN_THREADS": ("8", 1, 256),
    "CLIENT_READ_TIMEOUT_SECONDS": ("10", 1, 300),
}


def whole_number(name: str, environ: Mapping[str, str] | None = None) -> int:
    """The integer value of a gunicorn setting; a bad value exits with one line naming the variable."""
    environ = os.environ if environ is None else environ
    default, low, high = WHOLE_NUMBERS[name]
    raw = environ.get(name, default)
    if not raw.isdigit() or not low <= int(raw) <= high:
        # SystemExit passes through gunicorn's config loader, which prints a traceback for any Exception.
        sys.exit(f"Error: {name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


def check(environ: Mapping[str, str] | None = None) -> None:
    """Exit with one line if any of the settings is bad."""
    for name in WHOLE_NUMBERS:
        whole_number(name, environ)


if __name__ == "__main__":
    check()
