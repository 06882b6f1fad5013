"""The one error handler: every failure, ours, werkzeug's or Redis's, becomes the integration guide's JSON shape."""

import logging
from typing import Any

from flask import Flask, Response, g, jsonify
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from shared.core.errors import ApiError, error_body, new_request_id
from shared.runtime import metrics
from shared.store.connection import unavailable_code
from shared.web.services import service

log = logging.getLogger("aggregator")

RETRY_AFTER_SECONDS = "5"


def handle_error(exc: Exception) -> Response:
    """The one error handler: every failure becomes the same JSON shape."""
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, HTTPException):
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        error = ApiError(exc.code or 500, exc.description or "", headers=headers)
    elif isinstance(exc, RedisError) and unavailable_code(exc):
        error = redis_unavailable(exc)
    else:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        error = ApiError(500, "Internal error.")
    response = jsonify(error_body(error, g.get("request_id") or new_request_id()))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def redis_unavailable(exc: RedisError, details: dict[str, Any] | None = None) -> ApiError:
    """The 503 for a Redis error that means "retry later", named by its code; counted and logged."""
    code = unavailable_code(exc)
    metrics.REDIS_ERRORS.labels(service().package).inc()
    log.error("redis unavailable: %s: %s", code, exc, extra={"request_id": g.get("request_id")})
    return ApiError(
        503,
        "State store unavailable; retry later.",
        code=code,
        details=details,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def init_app(app: Flask) -> None:
    """Send every exception the app raises through the one handler."""
    app.register_error_handler(Exception, handle_error)
