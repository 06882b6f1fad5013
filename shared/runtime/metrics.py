"""Prometheus metrics; their names and labels are a contract with the dashboards.

Under gunicorn every worker is its own process, so prometheus_client runs in multiprocess mode:
gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a directory it wipes at start-up, before
this module is imported, and /metrics adds up what every worker wrote there.
"""

import os
from collections import Counter as Tally
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

from shared.core.episodes import DECISIONS as DECISIONS_KINDS
from shared.core.episodes import NOTIFY_KINDS

if TYPE_CHECKING:
    from shared.flow.ingest import IngestResult

# Ingest of thousands of deployments takes tens of milliseconds; the agent call up to the budget.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25)

INGEST_REQUESTS = Counter("aggregator_ingest_requests", "Ingest requests by answer status.", ["service", "status"])
REQUEST_DURATION = Histogram(
    "aggregator_request_duration_seconds", "Time to answer an ingest request.", ["service"], buckets=REQUEST_BUCKETS
)
DEPLOYMENTS_INGESTED = Counter("aggregator_deployments_ingested", "Deployments in accepted payloads.", ["service"])
RULE_FIRINGS = Counter("aggregator_rule_firings", "Rules that fired, per deployment.", ["service", "rule"])
TRIGGERS = Counter(
    "aggregator_triggers", "Deployments per trigger outcome: delivered, failed, cooldown.", ["service", "outcome"]
)
WEBHOOK_DURATION = Histogram(
    "aggregator_webhook_duration_seconds",
    "Time to deliver to the agent, retries included.",
    ["service"],
    buckets=WEBHOOK_BUCKETS,
)
REDIS_ERRORS = Counter("aggregator_redis_errors", "Requests that found Redis unavailable.", ["service"])
ITEMS = Counter(
    "aggregator_trigger_items",
    "Trigger items the agent took, by what they tell it: first, changed, reminder, escalation, resolved.",
    ["service", "notify"],
)
DECISIONS = Counter("aggregator_decisions", "Decisions the agent recorded, by kind.", ["service", "decision"])
RECLAIMED = Counter(
    "aggregator_triggers_reclaimed",
    "Deployments sent over a claim an earlier request left unsettled (it died, or Redis lost its settle):"
    " the agent may get that item twice, under the same id.",
    ["service"],
)

TRIGGER_OUTCOMES = ("delivered", "failed", "cooldown")
# The statuses the alerts and the dashboard single out (deploy/prometheus/alerts.yml).
WATCHED_STATUSES = ("201", "500", "503")


def start_series(service: str) -> None:
    """Create, at zero, every series the alerts and the dashboard read, so their first increment shows.

    A labelled series exists only once touched; born at 1, increase() sees no change and the
    first failure after a start would raise no alert.
    """
    for status in WATCHED_STATUSES:
        INGEST_REQUESTS.labels(service, status)
    for outcome in TRIGGER_OUTCOMES:
        TRIGGERS.labels(service, outcome)
    REDIS_ERRORS.labels(service)
    RECLAIMED.labels(service)
    for notify in NOTIFY_KINDS:
        ITEMS.labels(service, notify)
    for decision in DECISIONS_KINDS:
        DECISIONS.labels(service, decision)
    REQUEST_DURATION.labels(service)
    WEBHOOK_DURATION.labels(service)
    DEPLOYMENTS_INGESTED.labels(service)


_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
M = TypeVar("M", bound=MetricWrapperBase)


def child(metric: M, *labels: str) -> M:
    """metric.labels(*labels), looked up once: labels() costs microseconds, and thousands add up."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def record_ingest(service: str, result: "IngestResult") -> None:
    """Count what one accepted ingest did (its IngestResult)."""
    child(DEPLOYMENTS_INGESTED, service).inc(result.deployments)
    # One increment per rule, not per firing: a payload of thousands fires a handful of rules.
    fired = Tally(reason["rule"] for reasons in result.firing.values() for reason in reasons)
    for rule, count in fired.items():
        child(RULE_FIRINGS, service, rule).inc(count)
    if result.cooldown:
        child(TRIGGERS, service, "cooldown").inc(len(result.cooldown))
    if result.delivery is not None:
        outcome = "delivered" if result.delivery.ok else "failed"
        child(TRIGGERS, service, outcome).inc(len(result.triggered))
        child(WEBHOOK_DURATION, service).observe(result.delivery.seconds)
        if result.delivery.ok:
            for notify, count in Tally(result.notified.values()).items():
                child(ITEMS, service, notify).inc(count)
    if result.reclaimed:
        child(RECLAIMED, service).inc(len(result.reclaimed))


def record_request(service: str, status: int, seconds: float) -> None:
    """Count one answered ingest request and its duration."""
    child(INGEST_REQUESTS, service, str(status)).inc()
    child(REQUEST_DURATION, service).observe(seconds)


def exposition() -> tuple[bytes, str]:
    """The metrics page: every worker's numbers in multiprocess mode, this process's otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
