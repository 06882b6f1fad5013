"""Issue 9: an agent that drips, hangs or redirects holds no request past the budget and is never followed."""

import json
import time

import pytest
import requests

from cost_service import create_app as create_cost_app
from devtools.harness import GunicornService, service_env
from shared.web.services import COST, service_of
from tests.conftest import COST_TOKEN

BUDGET = 1.5


def app_for(base_config, url):
    return create_cost_app({**base_config, "AGENT_WEBHOOK_URL": url, "AGENT_WEBHOOK_BUDGET_SECONDS": str(BUDGET)})


def test_a_dripping_agent_counts_from_its_status_line_and_holds_nothing(
    base_config, redis_client, agent, cost_payload, cost_headers
):
    dripping = agent("drip", interval=1.0, drip_bytes=20)
    client = app_for(base_config, dripping.url).test_client()
    started = time.monotonic()
    response = client.post(COST.path, json=cost_payload, headers=cost_headers)
    seconds = time.monotonic() - started
    assert response.status_code == 201
    assert response.json["delivery"] == "ok" and response.json["triggered"] == ["adservice"]
    # A 200 status line is a delivery: the body the agent drips for 20 s is never waited for.
    assert seconds < BUDGET
    assert redis_client.hget("app:default:adservice", "last_trigger") is not None
    assert len(dripping.requests) == 1


def post_timed(base_config, url, cost_payload, cost_headers):
    """POST the payload to a cost app whose per-read timeout (30 s) only the budget's deadline can beat."""
    client = app_for(base_config, url).test_client()
    service_of(client.application).aggregator.webhook.read_timeout = 30
    started = time.monotonic()
    response = client.post(COST.path, json=cost_payload, headers=cost_headers)
    return response, time.monotonic() - started


def test_a_2xx_status_line_counts_even_when_the_headers_drip_past_the_budget(
    base_config, redis_client, agent, cost_payload, cost_headers
):
    dripping = agent("drip_headers", interval=0.2, drip_bytes=100)
    response, seconds = post_timed(base_config, dripping.url, cost_payload, cost_headers)
    assert response.status_code == 201 and response.json["delivery"] == "ok"
    assert BUDGET - 0.1 < seconds < BUDGET + 0.5
    assert redis_client.hget("app:default:adservice", "last_trigger") is not None


def test_a_status_line_dripping_past_the_budget_is_a_failed_delivery(
    base_config, redis_client, agent, cost_payload, cost_headers
):
    dripping = agent("drip_status", interval=0.2)
    response, seconds = post_timed(base_config, dripping.url, cost_payload, cost_headers)
    assert response.status_code == 201 and response.json["delivery"] == "failed"
    assert BUDGET - 0.1 < seconds < BUDGET + 0.5
    # The window is given back, so that the next payload triggers again.
    assert redis_client.keys("trigger:*") == []
    (record,) = [json.loads(raw) for raw in redis_client.lrange("triggers:default:failed", 0, -1)]
    assert record["error"].startswith(f"budget of {BUDGET:g} s spent")


def test_a_silent_agent_is_a_failed_delivery_at_the_budget(
    base_config, redis_client, agent, cost_payload, cost_headers
):
    response, seconds = post_timed(base_config, agent("hang").url, cost_payload, cost_headers)
    assert response.status_code == 201 and response.json["delivery"] == "failed"
    assert BUDGET - 0.1 < seconds < BUDGET + 0.5
    assert redis_client.keys("trigger:*") == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_delivery_never_followed(
    base_config, redis_client, agent, receiver, cost_payload, cost_headers, status
):
    # The Location points at a live receiver, which must see nothing: no GET, no re-POST.
    redirecting = agent("redirect", status=status, location=receiver.url)
    client = app_for(base_config, redirecting.url).test_client()
    response = client.post(COST.path, json=cost_payload, headers=cost_headers)
    assert response.status_code == 201 and response.json["delivery"] == "failed"
    assert len(redirecting.requests) == 1  # not retried
    assert receiver.calls == []
    (record,) = [json.loads(raw) for raw in redis_client.lrange("triggers:default:failed", 0, -1)]
    assert record["location"] == receiver.url
    assert record["error"] == f"HTTP {status} redirect, not followed"
    assert redis_client.keys("trigger:*") == []


@pytest.mark.gunicorn
def test_a_dripping_agent_cannot_hold_a_gunicorn_worker(redis_server, redis_client, agent, cost_payload, tmp_path):
    dripping = agent("drip", interval=1.0, drip_bytes=20)
    hanging = agent("hang")
    env = service_env(
        redis_server.url,
        dripping.url,
        AGENT_WEBHOOK_BUDGET_SECONDS=str(BUDGET),
        AGENT_WEBHOOK_READ_TIMEOUT_SECONDS="30",
        # The value the README allowed when a dripping agent got a worker killed mid-delivery.
        GUNICORN_TIMEOUT="10",
    )
    headers = {"Authorization": f"Bearer {COST_TOKEN}"}
    services = [
        GunicornService(COST.app, env, workers=1).start(tmp_path / "drip.log"),
        GunicornService(COST.app, {**env, "AGENT_WEBHOOK_URL": hanging.url}, workers=1).start(tmp_path / "hang.log"),
    ]
    try:
        outcomes = []
        for service in services:
            redis_client.flushdb()
            started = time.monotonic()
            response = requests.post(f"{service.url}{COST.path}", json=cost_payload, headers=headers, timeout=30)
            outcomes.append((response.status_code, response.json()["delivery"], time.monotonic() - started))
            claims = redis_client.keys("trigger:*")
            last_trigger = redis_client.hget("app:default:adservice", "last_trigger")
            # Delivered: the window is held and noted; failed: it is given back. Never held unnoted.
            assert (claims != []) == (last_trigger is not None)
    finally:
        for service in services:
            service.stop()
    (drip_status, drip_delivery, drip_seconds), (hang_status, hang_delivery, hang_seconds) = outcomes
    assert (drip_status, drip_delivery) == (201, "ok") and drip_seconds < BUDGET + 0.5
    assert (hang_status, hang_delivery) == (201, "failed") and hang_seconds < BUDGET + 0.5
