"""Flask wiring both services share: settings, bearer auth, the one error handler, probes, request logs."""

import hmac
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

from flask import Flask, abort, current_app, g, jsonify, request
from flask_httpauth import HTTPTokenAuth
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import HTTPException

from shared import cli, logs, metrics
from shared.config import DEFAULTS, ConfigError, Settings, parse_settings, read_environment
from shared.ingest import Aggregator, Source
from shared.openapi import build_openapi
from shared.redis_connection import REDIS_UNAVAILABLE, connect_redis
from shared.state import StateRepository
from shared.webhook import AgentWebhook, utc_now_iso

log = logging.getLogger("aggregator")

RETRY_AFTER_SECONDS = "5"
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}

token_auth = HTTPTokenAuth(scheme="Bearer")


class ApiError(Exception):
    """An error the caller should see as it is, in the integration guide's JSON shape."""

    def __init__(self, status, message, *, code=None, details=None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code or ERROR_CODES.get(status, "ERROR")
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


@dataclass
class Service:
    """Everything a service's requests use, built once by the factory."""

    name: str
    path: str
    settings: Settings
    schema: Schema
    source: Source
    aggregator: Aggregator


def service():
    """The Service of the app handling this request."""
    return current_app.extensions["aggregator"]


@token_auth.verify_token
def _verify_token(token):
    presented = (token or "").encode()
    # Compare against every accepted token, so timing says nothing about which one matched.
    matches = [hmac.compare_digest(presented, accepted.encode()) for accepted in service().settings.tokens]
    return True if any(matches) else None


@token_auth.error_handler
def _auth_failed(status):
    raise ApiError(401, "A valid bearer token is required.", headers={"WWW-Authenticate": "Bearer"})


def handle_error(exc):
    """The one error handler: every failure becomes the same JSON shape."""
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, HTTPException):
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        error = ApiError(exc.code, exc.description, headers=headers)
    elif isinstance(exc, REDIS_UNAVAILABLE):
        metrics.REDIS_ERRORS.labels(service().name).inc()
        log.error("redis unavailable: %s: %s", type(exc).__name__, exc, extra={"request_id": g.get("request_id")})
        error = ApiError(
            503,
            "State store unavailable; retry later.",
            code="REDIS_UNAVAILABLE",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    else:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        error = ApiError(500, "Internal error.")
    body = {
        "error": {
            "code": error.code,
            "message": error.message,
            "details": error.details,
            "request_id": g.get("request_id") or new_request_id(),
            "timestamp": utc_now_iso(),
        }
    }
    response = jsonify(body)
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def new_request_id():
    """A fresh request id."""
    return uuid.uuid4().hex


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def read_json_object():
    """The request body as a JSON object, or an ApiError saying why it is not one."""
    if not request.is_json:
        raise ApiError(415, "Content-Type must be application/json.")
    raw = request.get_data(cache=False)  # werkzeug refuses bodies over MAX_CONTENT_LENGTH with 413
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "Request body is not valid JSON.", details={"reason": str(exc)[:200]}) from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return body


@token_auth.login_required
def ingest_view():
    """Validate the payload, store it, evaluate the rules and trigger the agent when due."""
    svc = service()
    body = read_json_object()
    try:
        payload = svc.schema.load(body)
    except ValidationError as exc:
        raise ApiError(422, "Payload failed validation.", details={"fields": exc.messages}) from None
    result = svc.aggregator.ingest(svc.source, payload, g.request_id)
    metrics.record_ingest(svc.name, result)
    g.deployments, g.triggered = result.body["deployments"], result.body["triggered"]
    return jsonify(result.body), 201


def healthz():
    """Liveness: the process serves requests."""
    return jsonify(status="ok")


def readyz():
    """Readiness: Redis answers, so ingest can succeed."""
    service().aggregator.repository.ping()
    return jsonify(status="ready")


def _start_request():
    g.request_id = request.headers.get("X-Request-ID", "")
    if not REQUEST_ID.match(g.request_id):
        g.request_id = new_request_id()
    g.started = time.perf_counter()


def _finish_request(response):
    response.headers["X-Request-ID"] = g.request_id
    if request.path in PROBE_PATHS:
        return response
    svc = service()
    seconds = time.perf_counter() - g.started
    if request.path == svc.path:
        metrics.INGEST_REQUESTS.labels(svc.name, str(response.status_code)).inc()
        metrics.REQUEST_DURATION.labels(svc.name).observe(seconds)
    log.info(
        "request",
        extra={
            "request_id": g.request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "deployments": g.get("deployments"),
            "triggered": g.get("triggered"),
        },
    )
    return response


def openapi_document():
    """This service's OpenAPI 3 document."""
    return jsonify(current_app.config["OPENAPI"])


def metrics_page():
    """Prometheus metrics of every worker of this service."""
    body, content_type = metrics.exposition()
    return body, 200, {"Content-Type": content_type}


def create_service_app(import_name, test_config, *, path, token_setting, schema_class, source):
    """Build a service app: defaults, then the environment, then test_config on top."""
    app = Flask(import_name)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(read_environment())
    app.config.from_mapping(test_config or {})
    cli.register(app)
    try:
        settings = parse_settings(app.config, token_setting)
    except ConfigError as exc:
        if not cli.under_flask_cli():
            raise
        # The operator's commands read only the settings they use (see shared/cli.py): the flask
        # command line gets an app that carries them even without tokens or a webhook URL.
        message = f"The service is not configured: {exc}"
        app.before_request(lambda: abort(503, message))
        return app
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    logs.configure(log, settings.log_level)

    redis = connect_redis(settings)
    webhook = AgentWebhook.from_settings(settings)
    app.extensions["aggregator"] = Service(
        name=import_name,
        path=path,
        settings=settings,
        schema=schema_class(allowed_namespaces=settings.allowed_namespaces, max_deployments=settings.max_deployments),
        source=source,
        aggregator=Aggregator(
            StateRepository(redis, settings.cooldown_seconds),
            webhook,
            settings.thresholds,
            settings.recommendation_headroom,
        ),
    )

    # Built once: the document only changes with the code and the payload limits.
    app.config["OPENAPI"] = build_openapi(
        import_name, path, app.extensions["aggregator"].schema, f"Ingest a {source.name} payload"
    )
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_error_handler(Exception, handle_error)
    app.add_url_rule(path, "ingest", ingest_view, methods=["POST"])
    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/readyz", "readyz", readyz)
    app.add_url_rule("/metrics", "metrics", metrics_page)
    app.add_url_rule("/openapi.json", "openapi", openapi_document)
    # Under the flask command line the app serves nothing: no zero series for it in a live metrics directory.
    if not cli.under_flask_cli():
        metrics.start_series(import_name)
    return app
