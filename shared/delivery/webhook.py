"""The trigger sent to the AI agent: building the message and delivering it are separate steps.

Delivery signs each call as Standard Webhooks define it (when a secret is set), retries what is
worth retrying with backoff and jitter, never follows a redirect, and never takes longer than its
budget: a Watchdog (shared.delivery.deadline) cuts whatever an attempt is doing at the deadline.
"""

import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from standardwebhooks import Webhook

from shared.core.clock import utc_now_iso
from shared.delivery.deadline import Watchdog, deadline_session
from shared.delivery.settings import WebhookSettings

TRIGGER_TYPE = "deployments.thresholds_crossed"
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 2.0
# The watchdog fires this long after the deadline, so that a timeout ending at the deadline anyway
# keeps its own name in the outcome; the watchdog is for what the timeouts cannot catch.
WATCHDOG_GRACE_SECONDS = 0.1

log = logging.getLogger("aggregator.webhook")


def build_trigger(
    source: str, namespace: str, cluster: Mapping[str, Any], items: list[dict[str, Any]]
) -> dict[str, Any]:
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
    location: str | None = None  # where a 3xx answer pointed (never followed)


def retry_after_seconds(response: requests.Response) -> float | None:
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
        self.session = session or deadline_session()
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> "AgentWebhook":
        """The webhook described by WebhookSettings (or the Settings that extend them)."""
        return cls(
            settings.webhook_url,
            settings.webhook_connect_timeout,
            settings.webhook_read_timeout,
            settings.webhook_budget,
            secret=settings.webhook_secret,
        )

    def deliver(self, message: dict[str, Any], request_id: str, webhook_id: str | None = None) -> Delivery:
        """Send one trigger message, retrying within the budget; return a Delivery whatever happens.

        A redelivery passes the `webhook_id` of the first delivery, so the agent can drop a duplicate.
        """
        started = time.monotonic()
        deadline = started + self.budget
        # One id for the message, the same on every retry, so the agent can drop duplicates.
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        try:
            # A strict JSON agent refuses NaN and Infinity: such a message is a bug, never sent.
            body = json.dumps(message, separators=(",", ":"), allow_nan=False)
        except ValueError:
            log.exception("trigger message not serialisable", extra={"request_id": request_id})
            return Delivery(False, None, "message not serialisable", time.monotonic() - started, 0, webhook_id)
        with Watchdog(self.budget + WATCHDOG_GRACE_SECONDS) as watchdog:
            return self._attempts(body, webhook_id, request_id, started, deadline, watchdog)

    def _attempts(self, body, webhook_id, request_id, started, deadline, watchdog):
        attempt, status, error, location = 0, None, None, None
        while True:
            attempt += 1
            remaining = max(0.001, deadline - time.monotonic())
            timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
            wait = None
            statuses_before = len(watchdog.statuses)
            try:
                # stream: the status line is what counts, and a body the agent drips is never read.
                with self.session.post(
                    self.url,
                    data=body,
                    headers=self._headers(webhook_id, body, request_id),
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                ) as response:
                    status = response.status_code
                    headers = response.headers
            except requests.RequestException as exc:
                status, error = None, type(exc).__name__
                if watchdog.fired.is_set():
                    seen = watchdog.statuses[statuses_before:]
                    if seen and 200 <= seen[-1] < 300:
                        # The agent said 2xx, then dripped its headers until the deadline cut it.
                        return Delivery(True, seen[-1], None, time.monotonic() - started, attempt, webhook_id)
                    error = f"budget of {self.budget:g} s spent ({error})"
                log.warning(
                    "agent webhook attempt failed",
                    exc_info=True,
                    extra={"request_id": request_id, "attempt": attempt, "error": error},
                )
            else:
                if 200 <= status < 300:
                    return Delivery(True, status, None, time.monotonic() - started, attempt, webhook_id)
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    # Following would send the signed trigger (or a GET with its headers) to wherever
                    # the agent points; an agent that moved is a configuration to fix, not to retry.
                    location = headers.get("Location")
                    error = f"HTTP {status} redirect, not followed"
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
        return Delivery(False, status, error, seconds, attempt, webhook_id, location)

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
