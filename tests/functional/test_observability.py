"""Metrics and logs of a service under gunicorn with several workers."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devtools.harness import GunicornService, free_port, service_env
from shared.web.services import COST
from tests.conftest import COST_TOKEN

pytestmark = pytest.mark.gunicorn


def sample(page, name, **labels):
    """The value of one sample on a Prometheus text page (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in page.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


@pytest.fixture
def cost(redis_server, redis_client, receiver, tmp_path):
    env = service_env(redis_server.url, receiver.url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    service = GunicornService(COST.app, env, workers=2).start(tmp_path / "cost.log")
    yield service
    service.stop()


def test_counters_add_up_across_workers(cost, cost_payload, tmp_path):
    headers = {"Authorization": f"Bearer {COST_TOKEN}"}
    refused = 7

    def ingest(_):
        return requests.post(f"{cost.url}{COST.path}", json=cost_payload, headers=headers, timeout=10).status_code

    # Each process that counted something has its own file (the master's holds the series it starts
    # at zero): the page below must be their sum. Four at a time, and on until both workers have
    # counted, so that the sum is of two. One timestamp for all: none is stale, whatever the order.
    def workers_counting():
        files = {path.name for path in (tmp_path / "metrics").glob("counter_*.db")}
        return files - {f"counter_{cost.process.pid}.db"}

    accepted = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        while len(workers_counting()) < 2 or accepted < 30:
            assert accepted < 400, f"one worker took every request: {workers_counting()}"
            assert list(pool.map(ingest, range(4))) == [201] * 4
            accepted += 4
    assert len(workers_counting()) == 2, workers_counting()
    for _ in range(refused):
        assert requests.post(f"{cost.url}{COST.path}", json={}, headers=headers, timeout=10).status_code == 422
    for _ in range(6):  # several scrapes, so both workers answer some; each must see the sum
        response = requests.get(f"{cost.url}/metrics", timeout=10)
        assert response.headers["Content-Type"].startswith("text/plain")
        page = response.text
        assert sample(page, "aggregator_ingest_requests_total", service="cost_service", status="201") == accepted
        assert sample(page, "aggregator_ingest_requests_total", service="cost_service", status="422") == refused
        assert sample(page, "aggregator_request_duration_seconds_count", service="cost_service") == accepted + refused
        assert sample(page, "aggregator_deployments_ingested_total", service="cost_service") == 2 * accepted
        # adservice fires cpu_waste on every payload: one delivery, then the cooldown holds it.
        assert sample(page, "aggregator_rule_firings_total", service="cost_service", rule="cpu_waste") == accepted
        assert sample(page, "aggregator_triggers_total", service="cost_service", outcome="delivered") == 1
        assert sample(page, "aggregator_triggers_total", service="cost_service", outcome="cooldown") == accepted - 1
        assert sample(page, "aggregator_webhook_duration_seconds_count", service="cost_service") == 1
    # One JSON line per request, and JSON for gunicorn's own lines too.
    records = [json.loads(line) for line in (tmp_path / "cost.log").read_text().splitlines()]
    requests_logged = [r for r in records if r["message"] == "request"]
    assert len(requests_logged) == accepted + refused
    for record in requests_logged:
        assert {"time", "level", "service", "request_id", "method", "path", "status", "duration_ms"} <= set(record)
        assert record["service"] == "cost_service" and record["path"] == COST.path
    assert all(r["deployments"] == 2 and "triggered" in r for r in requests_logged if r["status"] == 201)
    assert any(r["logger"] == "gunicorn.error" for r in records)


def test_redis_errors_are_counted(redis_server, receiver, tmp_path, cost_payload):
    env = service_env(
        f"redis://127.0.0.1:{free_port()}/0", receiver.url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics")
    )
    service = GunicornService(COST.app, env, workers=2).start(tmp_path / "cost.log")
    try:
        headers = {"Authorization": f"Bearer {COST_TOKEN}"}
        for _ in range(5):
            assert (
                requests.post(f"{service.url}{COST.path}", json=cost_payload, headers=headers, timeout=10).status_code
                == 503
            )
        page = requests.get(f"{service.url}/metrics", timeout=10).text
    finally:
        service.stop()
    assert sample(page, "aggregator_redis_errors_total", service="cost_service") == 5
    assert sample(page, "aggregator_ingest_requests_total", service="cost_service", status="503") == 5
