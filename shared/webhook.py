"""The trigger sent to the AI agent: building the message and delivering it are separate steps."""

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

TRIGGER_TYPE = "deployments.thresholds_crossed"

log = logging.getLogger("aggregator.webhook")


def utc_now_iso():
    """The current time as ISO-8601 UTC with a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_trigger(source, namespace, cluster, firing, states):
    """The webhook body for the deployments this request claimed.

    `firing` maps each claimed deployment to its reasons; `states` holds its stored state.
    """
    return {
        "type": TRIGGER_TYPE,
        "source": source,
        "namespace": namespace,
        "sent_at": utc_now_iso(),
        "cluster": cluster,
        "triggers": [
            {"id": str(uuid.uuid4()), "deployment": name, "reasons": reasons, "state": states[name]}
            for name, reasons in firing.items()
        ],
    }


@dataclass(frozen=True)
class Delivery:
    """How one webhook call went."""

    ok: bool
    status_code: int | None
    error: str | None
    seconds: float


class AgentWebhook:
    """POSTs triggers to the agent with bounded timeouts; never raises into the request path."""

    def __init__(self, url, connect_timeout, read_timeout, session=None):
        self.url = url
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()

    def deliver(self, message, request_id):
        """Send one trigger message; return a Delivery whatever happens."""
        started = time.monotonic()
        body = json.dumps(message, separators=(",", ":"))
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        try:
            response = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            log.warning("agent webhook failed request_id=%s error=%s", request_id, type(exc).__name__, exc_info=True)
            return Delivery(False, None, type(exc).__name__, time.monotonic() - started)
        seconds = time.monotonic() - started
        if 200 <= response.status_code < 300:
            return Delivery(True, response.status_code, None, seconds)
        log.warning("agent webhook failed request_id=%s status=%s", request_id, response.status_code)
        return Delivery(False, response.status_code, f"HTTP {response.status_code}", seconds)
