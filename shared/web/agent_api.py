"""The AI agent's paths: read one deployment, and record its decision about the deployment's episode.

Served only when AGENT_TOKEN is set, and only to it: the ingest callers' tokens are refused here,
as AGENT_TOKEN is on the ingest paths.
"""

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify
from flask_httpauth import HTTPTokenAuth

from shared.core.clock import iso_seconds
from shared.core.episodes import APPLIED, DEFAULT_NO_CHANGE_SECONDS, MAX_HOLD_SECONDS, NO_CHANGE, SNOOZE
from shared.core.errors import ApiError
from shared.core.schemas import DNS_LABEL, DecisionSchema
from shared.runtime import metrics
from shared.store.repository import DeploymentView
from shared.web.api import accepted, invalid, load_body, refuse
from shared.web.services import service

log = logging.getLogger("aggregator")
agent_auth = HTTPTokenAuth(scheme="Bearer")


@agent_auth.verify_token
def _verify_agent_token(token: str | None) -> bool | None:
    return accepted(token, service().settings.agent_tokens)


agent_auth.error_handler(refuse)


DECISION_SCHEMA = DecisionSchema()


def _until(body: dict[str, Any], now: float) -> float | None:
    """The decision's `until` in Unix seconds, checked against its kind and now; a 422 when it does not fit."""
    moment = body["until"]
    decision = body["decision"]
    if moment is None:
        if decision == SNOOZE:
            raise invalid_until("Required for snooze.")
        return now + DEFAULT_NO_CHANGE_SECONDS if decision == NO_CHANGE else None
    if decision == APPLIED:
        raise invalid_until("Not taken with applied: the episode ends now.")
    until = moment.timestamp()
    if until <= now:
        raise invalid_until("Must be in the future.")
    if until > now + MAX_HOLD_SECONDS:
        raise invalid_until("Must be at most 30 days ahead.")
    return until


def invalid_until(message: str) -> ApiError:
    """The 422 of an `until` that does not fit the decision or the clock."""
    return invalid({"until": [message]})


def _found(namespace: str, name: str) -> DeploymentView:
    """What is stored of the deployment, or a 404."""
    svc = service()
    view = None
    if namespace in svc.settings.allowed_namespaces and DNS_LABEL.match(name):
        view = svc.aggregator.repository.deployment(namespace, name)
    if view is None:
        raise ApiError(404, f"Nothing is stored for deployment {namespace}/{name}.")
    return view


def view_body(namespace: str, name: str, view: DeploymentView) -> dict[str, Any]:
    """The read's body: the app hash as numbers, the open episode and the window's time left."""
    episode = view.episode
    body: dict[str, Any] = {
        "namespace": namespace,
        "deployment": name,
        "state": view.state,
        "episode": None,
        "cooldown_seconds_left": round(view.cooldown_seconds_left, 3),
    }
    if episode and episode.get("id"):
        decision = None
        if episode.get("decision"):
            until = episode.get("until")
            decision = {
                "decision": episode["decision"],
                "until": iso_seconds(float(until)) if until else None,
                "note": episode.get("note", ""),
                "at": iso_seconds(float(episode["decided_at"])),
            }
        body["episode"] = {
            "id": episode["id"],
            "opened_at": iso_seconds(float(episode["opened_at"])),
            "sequence": int(episode.get("sequence", 0)),
            "notify": episode.get("notify"),
            "last_sent_at": iso_seconds(float(episode["last_sent_at"])) if episode.get("last_sent_at") else None,
            "reasons": json.loads(episode["reasons"]) if episode.get("reasons") else [],
            "decision": decision,
        }
    return body


@agent_auth.login_required
def read_view(namespace: str, name: str) -> Response:
    """One deployment: its stored state, its open episode and the agent's decision about it."""
    return jsonify(view_body(namespace, name, _found(namespace, name)))


@agent_auth.login_required
def decision_view(namespace: str, name: str) -> Response:
    """Record the agent's decision about the deployment's open episode; answer as the read does."""
    svc = service()
    now = time.time()
    _found(namespace, name)
    body = load_body(DECISION_SCHEMA)
    until = _until(body, now)
    decision, episode_id = body["decision"], body["episode_id"]
    if not svc.aggregator.decide(namespace, name, episode_id, decision, until, body["note"], now):
        raise ApiError(
            409,
            "That episode is not the deployment's open episode; nothing was changed.",
            code="EPISODE_MISMATCH",
            details={"episode_id": episode_id},
        )
    metrics.child(metrics.DECISIONS, svc.package, decision).inc()
    log.info(
        "decision",
        extra={
            "request_id": g.get("request_id"),
            "namespace": namespace,
            "deployment": name,
            "episode_id": episode_id,
            "decision": decision,
            "until": None if until is None else iso_seconds(until),
            "note_chars": len(body["note"]),
        },
    )
    return jsonify(view_body(namespace, name, _found(namespace, name)))


def blueprint() -> Blueprint:
    """The agent's two paths."""
    agent = Blueprint("agent", __name__)
    agent.add_url_rule("/deployments/<namespace>/<name>", "read", read_view, methods=["GET"])
    agent.add_url_rule("/deployments/<namespace>/<name>/decision", "decision", decision_view, methods=["POST"])
    return agent
