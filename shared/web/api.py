"""The ingest API: one POST route per service, behind its callers' bearer tokens."""

import hmac
import json
from collections.abc import Callable
from typing import Any, NoReturn

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_httpauth import HTTPTokenAuth
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import ClientDisconnected

from shared.core.errors import ApiError
from shared.runtime import metrics
from shared.web.services import service

token_auth = HTTPTokenAuth(scheme="Bearer")


def accepted(token: str | None, tokens: tuple[str, ...]) -> bool | None:
    """True when `token` is one of `tokens` (None otherwise, as Flask-HTTPAuth expects)."""
    presented = (token or "").encode()
    # Compare against every accepted token, so timing says nothing about which one matched.
    matches = [hmac.compare_digest(presented, candidate.encode()) for candidate in tokens]
    return True if any(matches) else None


def refuse(status: int) -> NoReturn:
    """Flask-HTTPAuth's error handler: the one 401 of the JSON error shape."""
    raise ApiError(401, "A valid bearer token is required.", headers={"WWW-Authenticate": "Bearer"})


@token_auth.verify_token
def _verify_token(token: str | None) -> bool | None:
    return accepted(token, service().settings.tokens)


token_auth.error_handler(refuse)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def invalid(fields: dict[str, Any] | list[Any]) -> ApiError:
    """The 422 of a body that failed validation; `fields` says which field and why."""
    return ApiError(422, "Payload failed validation.", details={"fields": fields})


def read_body() -> bytes:
    """The raw request body of a JSON request, or an ApiError saying why there is none to parse."""
    if not request.is_json:
        raise ApiError(415, "Content-Type must be application/json.")
    try:
        raw = request.get_data(cache=False)  # werkzeug refuses a Content-Length over MAX_CONTENT_LENGTH with 413
        # ...but stops reading a chunked body at the limit without a word: one byte more means too large.
        too_large = (
            request.content_length is None
            and len(raw) >= current_app.config["MAX_CONTENT_LENGTH"]
            and request.environ["wsgi.input"].read(1)
        )
    except ClientDisconnected as exc:
        # werkzeug reports the server's client read timeout as a disconnection: a body trickling in
        # (or stalled half way) is cut by that timeout, so that it cannot hold a thread for ever.
        if isinstance(exc.__context__, TimeoutError):
            raise ApiError(408, "The request body did not arrive in time.") from None
        raise
    if too_large:
        raise ApiError(413, "Request body is larger than MAX_BODY_BYTES.")
    return raw


def json_object(raw: bytes, loads: Callable[..., Any]) -> dict[str, Any]:
    """`raw` parsed by `loads` as a JSON object, or an ApiError saying why it is not one."""
    try:
        body = loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "Request body is not valid JSON.", details={"reason": str(exc)[:200]}) from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return body


def load_body(schema: Schema) -> dict[str, Any]:
    """The request's JSON object loaded by `schema`, or the ApiError (400, 408, 413, 415, 422) saying why not."""
    raw = read_body()
    try:
        return schema.load(json_object(raw, current_app.json.loads))
    except ValidationError:
        pass
    # The app's parser reads an integer beyond 64 bits as a float (see json_provider.py): the errors
    # reported are those of the body as the json module reads it.
    try:
        return schema.load(json_object(raw, json.loads))
    except ValidationError as exc:
        raise invalid(exc.messages) from None


@token_auth.login_required
def ingest_view() -> tuple[Response, int]:
    """Validate the payload, store it, evaluate the rules and trigger the agent when due."""
    svc = service()
    # The parsed body is not kept: a payload of thousands of deployments is megabytes of objects,
    # and the loaded payload holds all the ingest needs.
    payload = load_body(svc.schema)
    result = svc.aggregator.ingest(svc.source, payload, g.request_id)
    metrics.record_ingest(svc.package, result)
    g.ingest = result  # for the request's log line
    return jsonify(result.body), 201


def blueprint(path: str) -> Blueprint:
    """The ingest route at this service's path (a blueprint per app: the two services' paths differ)."""
    api = Blueprint("api", __name__)
    api.add_url_rule(path, "ingest", ingest_view, methods=["POST"])
    return api
