"""The apps' JSON provider: request bodies parsed by orjson, answers written as Flask's default writes them."""

from typing import Any

import orjson
from flask import Flask
from flask.json.provider import DefaultJSONProvider


class FastJSONProvider(DefaultJSONProvider):
    """Flask's default provider whose `loads` tries orjson first.

    orjson parses a large payload about three times faster than the json module; on input it
    refuses (NaN and Infinity, numbers beyond a double, lone surrogates, UTF-16 bytes) the json
    module takes over, so every such body is parsed or refused exactly as before. One difference
    stays: an integer beyond 64 bits comes back from orjson as a float. No valid payload holds one
    (every number has a bound), so a view whose schema refuses a body parses it again with
    json.loads before reporting the errors (see api.ingest_view). `dumps` is Flask's own: an answer
    is small, and its bytes (ASCII escapes, float spelling) stay as they were.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse `s`; `parse_constant` only matters to the json module, other hooks go to it alone."""
        if kwargs.keys() - {"parse_constant"}:
            return super().loads(s, **kwargs)
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return super().loads(s, **kwargs)


def init_app(app: Flask) -> None:
    """Make FastJSONProvider the app's JSON provider."""
    app.json = FastJSONProvider(app)
