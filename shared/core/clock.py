"""Times as the API and the trigger write them: ISO-8601 UTC with a Z suffix."""

from datetime import UTC, datetime


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_seconds(seconds: float) -> str:
    """Unix seconds as ISO-8601 UTC with a Z suffix, to the second."""
    return datetime.fromtimestamp(int(seconds), UTC).isoformat().replace("+00:00", "Z")
