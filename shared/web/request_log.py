"""Per-request bookkeeping: the X-Request-ID, the ingest request metrics, and one JSON log line per request."""

import logging
import re
import time

from flask import Flask, Response, g, request

from shared.core.errors import new_request_id
from shared.runtime import metrics
from shared.web.probes import PROBE_PATHS
from shared.web.services import service

log = logging.getLogger("aggregator")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def start_request() -> None:
    """Take the caller's X-Request-ID when it is sane, else make one; start the clock."""
    g.request_id = request.headers.get("X-Request-ID", "")
    if not REQUEST_ID.match(g.request_id):
        g.request_id = new_request_id()
    g.started = time.perf_counter()


def finish_request(response: Response) -> Response:
    """Echo the request id; count and log every request but the probes."""
    response.headers["X-Request-ID"] = g.request_id
    if request.path in PROBE_PATHS:
        return response
    svc = service()
    seconds = time.perf_counter() - g.started
    if request.path == svc.path:
        metrics.record_request(svc.package, response.status_code, seconds)
    if not log.isEnabledFor(logging.INFO):
        return response  # the record below costs more than a small ingest's rules
    result = g.get("ingest")  # the IngestResult of an accepted ingest
    log.info(
        "request",
        extra={
            "request_id": g.request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "deployments": result.deployments if result else None,
            "triggered": result.triggered if result else None,
        },
    )
    return response


def init_app(app: Flask) -> None:
    """Run the bookkeeping around every request of the app."""
    app.before_request(start_request)
    app.after_request(finish_request)
