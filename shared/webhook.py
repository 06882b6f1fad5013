"""The trigger sent to the AI agent: building the message and delivering it are separate steps.

Delivery signs each call as Standard Webhooks define it (when a secret is set), retries what is
worth retrying with backoff and jitter, and never takes longer than its budget.
"""

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from standardwebhooks import Webhook

TRIGGER_TYPE = "deployments.thresholds_crossed"
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 2.0

log = logging.getLogger("aggregator.webhook")


def utc_now_iso():
    """The current time as ISO-8601 UTC with a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_trigger(source, namespace, cluster, items):
    """The webhook body: `items` are the trigger entries, each given its own id here."""
    return {
        "type": TRIGGER_TYPE,
        "source": source,
        "namespace": namespace,
        "sent_at": utc_now_iso(),
        "cluster": {"hourly_cost_gbp": cluster.get("hourly_cost_gbp"), "vm_count": cluster.get("vm_count")},
        "triggers": [{"id": str(uuid.uuid4()), **item} for item in items],
    }


@dataclass(frozen=True)
class Delivery:
    """How one delivery went, over all its attempts."""

    ok: bool
    status_code: int | None
    error: str | None
    seconds: float
    attempts: int
    webhook_id: str


def retry_after_seconds(response):
    """The Retry-After header in seconds (delta or HTTP date), or None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class AgentWebhook:
    """POSTs triggers to the agent within a time budget; never raises into the request path."""

    def __init__(self, url, connect_timeout, read_timeout, budget, secret=None, session=None, sleep=time.sleep):
        self.url = url
        self.connect_timeout, self.read_timeout, self.budget = connect_timeout, read_timeout, budget
        self.signer = Webhook(secret) if secret else None
        self.session = session or requests.Session()
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings):
        """The webhook described by Settings or WebhookSettings."""
        return cls(
            settings.webhook_url,
            settings.webhook_connect_timeout,
            settings.webhook_read_timeout,
            settings.webhook_budget,
            secret=settings.webhook_secret,
        )

    def deliver(self, message, request_id, webhook_id=None):
        """Send one trigger message, retrying within the budget; return a Delivery whatever happens.

        A redelivery passes the `webhook_id` of the first delivery, so the agent can drop a duplicate.
        """
        started = time.monotonic()
        deadline = started + self.budget
        # One id for the message, the same on every retry, so the agent can drop duplicates.
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        body = json.dumps(message, separators=(",", ":"))
        attempt, status, error = 0, None, None
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
            wait = None
            try:
                response = self.session.post(
                    self.url, data=body, headers=self._headers(webhook_id, body, request_id), timeout=timeout
                )
            except requests.RequestException as exc:
                status, error = None, type(exc).__name__
                log.warning(
                    "agent webhook attempt failed",
                    exc_info=True,
                    extra={"request_id": request_id, "attempt": attempt, "error": error},
                )
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return Delivery(True, status, None, time.monotonic() - started, attempt, webhook_id)
                error = f"HTTP {status}"
                log.warning(
                    "agent webhook attempt failed", extra={"request_id": request_id, "attempt": attempt, "error": error}
                )
                # Other 4xx mean the agent refuses this message: sending it again cannot help.
                if status != 429 and status < 500:
                    break
                wait = retry_after_seconds(response)
            if wait is None:
                # Exponential backoff with jitter, so that many pods retrying do not hit the agent in step.
                ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
                wait = random.uniform(ceiling / 2, ceiling)
            # A wait (or a Retry-After) that would not leave time for another attempt ends the delivery.
            if time.monotonic() + wait + 0.05 >= deadline:
                break
            self.sleep(wait)
        seconds = time.monotonic() - started
        log.error(
            "agent webhook delivery failed",
            extra={"request_id": request_id, "webhook_id": webhook_id, "attempts": attempt, "error": error},
        )
        return Delivery(False, status, error, seconds, attempt, webhook_id)

    def _headers(self, webhook_id, body, request_id):
        # The timestamp is the attempt's own, as Standard Webhooks signs it; the id stays the message's.
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "X-Request-ID": request_id,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if self.signer:
            headers["webhook-signature"] = self.signer.sign(webhook_id, now, body)
        return headers
