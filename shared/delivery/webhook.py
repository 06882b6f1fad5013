"""Delivering the trigger to the AI agent (shared.core.trigger builds it).

Delivery signs each call as Standard Webhooks define it (when a secret is set), retries what is
worth retrying with backoff and jitter, never follows a redirect, and never takes longer than its
budget: a Watchdog (shared.delivery.deadline) cuts whatever an attempt is doing at the deadline.
Each attempt is judged on its own (`Attempt`); how long to wait before the next one, and whether
one still fits, is the RetryPolicy's.
"""

import enum
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from standardwebhooks import Webhook

from shared.delivery.deadline import Watchdog, deadline_session
from shared.delivery.settings import WebhookSettings

BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 2.0
# A wait that leaves less than this before the deadline leaves no time for an attempt.
LEAST_ATTEMPT_SECONDS = 0.05
# The watchdog fires this long after the deadline, so that a timeout ending at the deadline anyway
# keeps its own name in the outcome; the watchdog is for what the timeouts cannot catch.
WATCHDOG_GRACE_SECONDS = 0.1

log = logging.getLogger("aggregator.webhook")


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


class Outcome(enum.Enum):
    """What one attempt leaves the delivery to do."""

    DELIVERED = "delivered"
    RETRY = "retry"  # worth another attempt, if one fits the budget
    GIVE_UP = "give_up"  # another attempt cannot help


@dataclass(frozen=True)
class Attempt:
    """How one attempt went, and why when it did not deliver."""

    outcome: Outcome
    status: int | None = None  # the agent's status, None when it gave none
    error: str | None = None  # why it did not deliver
    retry_after: float | None = None  # seconds the agent asked us to wait, when it did
    location: str | None = None  # where a 3xx answer pointed (never followed)
    exception: requests.RequestException | None = None  # what the attempt raised, for the log


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


def judge_answer(response: requests.Response) -> Attempt:
    """What the agent's answer means: 2xx delivered, 5xx and 429 worth retrying, anything else not."""
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(Outcome.DELIVERED, status)
    if 300 <= status < 400:
        # Following would send the signed trigger (or a GET with its headers) to wherever the agent
        # points; an agent that moved is a configuration to fix, not to retry.
        error = f"HTTP {status} redirect, not followed"
        return Attempt(Outcome.GIVE_UP, status, error, location=response.headers.get("Location"))
    if status == 429 or status >= 500:
        return Attempt(Outcome.RETRY, status, f"HTTP {status}", retry_after=retry_after_seconds(response))
    # Other 4xx mean the agent refuses this message: sending it again cannot help.
    return Attempt(Outcome.GIVE_UP, status, f"HTTP {status}")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before the next attempt, and whether one still fits before the deadline."""

    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_CAP_SECONDS
    jitter: Callable[[float, float], float] = field(default=random.uniform, repr=False)

    def wait(self, attempts: int, retry_after: float | None) -> float:
        """The agent's Retry-After when it gave one, else exponential backoff with jitter."""
        if retry_after is not None:
            return retry_after
        # Jitter, so that many pods retrying do not hit the agent in step.
        ceiling = min(self.cap, self.base * 2 ** (attempts - 1))
        return self.jitter(ceiling / 2, ceiling)

    @staticmethod
    def fits(wait: float, now: float, deadline: float) -> bool:
        """True when, after `wait`, time is left for another attempt before `deadline`."""
        return now + wait + LEAST_ATTEMPT_SECONDS < deadline


class AgentWebhook:
    """POSTs triggers to the agent within a time budget; never raises into the request path."""

    def __init__(
        self,
        url: str,
        connect_timeout: float,
        read_timeout: float,
        budget: float,
        secret: str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        """`sleep` and `clock` are the waits' and the budget's: a test may pass a fake pair."""
        self.url = url
        self.connect_timeout, self.read_timeout, self.budget = connect_timeout, read_timeout, budget
        self.signer = Webhook(secret) if secret else None
        self.session = session or deadline_session()
        self.sleep, self.clock, self.retry = sleep, clock, retry

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
        started = self.clock()
        # One id for the message, the same on every retry, so the agent can drop duplicates.
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        try:
            # A strict JSON agent refuses NaN and Infinity: such a message is a bug, never sent.
            body = json.dumps(message, separators=(",", ":"), allow_nan=False)
        except ValueError:
            log.exception("trigger message not serialisable", extra={"request_id": request_id})
            return Delivery(False, None, "message not serialisable", self.clock() - started, 0, webhook_id)
        attempts, last = self._attempts(body, webhook_id, request_id, started + self.budget)
        seconds = self.clock() - started
        if last.outcome is Outcome.DELIVERED:
            return Delivery(True, last.status, None, seconds, attempts, webhook_id)
        log.error(
            "agent webhook delivery failed",
            extra={"request_id": request_id, "webhook_id": webhook_id, "attempts": attempts, "error": last.error},
        )
        return Delivery(False, last.status, last.error, seconds, attempts, webhook_id, last.location)

    def _attempts(self, body: str, webhook_id: str, request_id: str, deadline: float) -> tuple[int, Attempt]:
        """Attempt until one delivers, gives up, or the next wait would not leave time for another: (count, last)."""
        with Watchdog(self.budget + WATCHDOG_GRACE_SECONDS) as watchdog:
            attempts = 0
            while True:
                attempts += 1
                attempt = self._attempt(body, webhook_id, request_id, deadline, watchdog)
                if attempt.outcome is Outcome.DELIVERED:
                    return attempts, attempt
                log.warning(
                    "agent webhook attempt failed",
                    exc_info=attempt.exception,
                    extra={"request_id": request_id, "attempt": attempts, "error": attempt.error},
                )
                if attempt.outcome is Outcome.GIVE_UP:
                    return attempts, attempt
                wait = self.retry.wait(attempts, attempt.retry_after)
                if not self.retry.fits(wait, self.clock(), deadline):
                    return attempts, attempt
                self.sleep(wait)

    def _attempt(self, body: str, webhook_id: str, request_id: str, deadline: float, watchdog: Watchdog) -> Attempt:
        """One POST, cut to what is left of the budget, judged."""
        remaining = max(0.001, deadline - self.clock())
        timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
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
                return judge_answer(response)
        except requests.RequestException as exc:
            if not watchdog.fired.is_set():
                return Attempt(Outcome.RETRY, error=type(exc).__name__, exception=exc)
            seen = watchdog.statuses[statuses_before:]
            if seen and 200 <= seen[-1] < 300:
                # The agent said 2xx, then dripped its headers until the deadline cut it.
                return Attempt(Outcome.DELIVERED, seen[-1])
            error = f"budget of {self.budget:g} s spent ({type(exc).__name__})"
            return Attempt(Outcome.GIVE_UP, error=error, exception=exc)

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
