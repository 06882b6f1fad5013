"""What Kubernetes and Prometheus ask a service: liveness, readiness, metrics, and its OpenAPI document."""

from flask import Blueprint, Flask, Response, current_app, jsonify
from redis.exceptions import RedisError

from shared.runtime import metrics
from shared.store.connection import unavailable_code
from shared.web.errors import redis_unavailable
from shared.web.openapi import build_openapi
from shared.web.services import Service, service

# Asked every few seconds by machines: neither logged nor counted as requests.
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")

bp = Blueprint("probes", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: an ingest would succeed now (Redis takes writes and runs our scripts), else a 503 saying why."""
    try:
        service().aggregator.repository.check_ready()
    except RedisError as exc:
        code = unavailable_code(exc)
        if not code:
            raise
        raise redis_unavailable(exc, {"status": "not_ready", "reason": code.lower()}) from None
    return jsonify(status="ready")


@bp.get("/metrics")
def metrics_page() -> tuple[bytes, int, dict[str, str]]:
    """Prometheus metrics of every worker of this service."""
    body, content_type = metrics.exposition()
    return body, 200, {"Content-Type": content_type}


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """This service's OpenAPI 3 document."""
    return jsonify(current_app.config["OPENAPI"])


def init_app(app: Flask, svc: Service) -> None:
    """Serve the probes, with the service's OpenAPI document built once (it changes only with the code and limits)."""
    app.config["OPENAPI"] = build_openapi(
        svc.package, svc.path, svc.schema, f"Ingest a {svc.source.name} payload", agent=bool(svc.settings.agent_tokens)
    )
    app.register_blueprint(bp)
