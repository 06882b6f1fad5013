"""Both services under real gunicorn, several workers each, racing for one deployment's cooldown."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devtools.harness import both_services, service_env, time_passes
from shared.web.services import COST, FORECAST
from tests.conftest import COST_TOKEN, FORECAST_TOKEN

pytestmark = pytest.mark.gunicorn


@pytest.fixture
def redis_client(store):
    """The store the services use: one redis-server, then a Redis Cluster."""
    return store[2]


@pytest.fixture
def services(store, receiver, tmp_path):
    url, cluster, _ = store
    env = service_env(
        url,
        receiver.url,
        REDIS_CLUSTER="true" if cluster else "false",
        LOG_LEVEL="WARNING",
        AGENT_WEBHOOK_BUDGET_SECONDS="1",
    )
    with both_services(env, tmp_path) as running:
        yield running["cost"], running["forecast"]


def test_fifty_concurrent_requests_through_both_services_trigger_once(
    services, redis_client, receiver, cost_payload, forecast_payload
):
    cost, forecast = services
    # Cost state already stored (and no trigger yet), so every forecast request fires too.
    redis_client.hset(
        "app:default:adservice",
        mapping={
            "req_cpu": 2.0,
            "req_mem": 4096,
            "usage_cpu_curr": 0.4,
            "usage_mem_curr": 512,
            "cost_timestamp": 1704110400,
        },
    )
    cost_payload["deployments"] = cost_payload["deployments"][:1]
    forecast_payload["deployments"] = forecast_payload["deployments"][:1]
    calls = [
        (f"{cost.url}{COST.path}", cost_payload, COST_TOKEN),
        (f"{forecast.url}{FORECAST.path}", forecast_payload, FORECAST_TOKEN),
    ] * 25

    def send(call):
        url, payload, token = call
        return requests.post(url, json=payload, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(send, calls))

    assert [r.status_code for r in responses] == [201] * 50
    bodies = [r.json() for r in responses]
    assert sum(len(b["triggered"]) for b in bodies) == 1
    assert sum(len(b["cooldown"]) for b in bodies) == 49
    assert [name for name, _ in receiver.triggered()] == ["adservice"]
    assert redis_client.hget("app:default:adservice", "last_trigger") == redis_client.get("trigger:default:adservice")


def test_failing_agent_releases_the_claim_under_gunicorn(services, redis_client, receiver, cost_payload):
    cost, _ = services
    headers = {"Authorization": f"Bearer {COST_TOKEN}"}
    receiver.status = 503
    first = requests.post(f"{cost.url}{COST.path}", json=cost_payload, headers=headers, timeout=30).json()
    assert first["delivery"] == "failed" and not redis_client.exists("trigger:default:adservice")
    receiver.status = 202
    second = requests.post(f"{cost.url}{COST.path}", json=cost_payload, headers=headers, timeout=30).json()
    assert second["triggered"] == ["adservice"] and second["delivery"] == "ok"
    # The first delivery was retried within its budget, then given up; only the second was accepted.
    assert len(receiver.messages) == 1 and len(receiver.calls) >= 3


def test_concurrent_requests_number_an_episodes_items_once_each(services, redis_client, receiver, cost_payload):
    """Fifty requests at once, twice: one first item, then (the window over) one reminder, numbered 1 and 2."""
    cost, _ = services
    cost_payload["deployments"] = cost_payload["deployments"][:1]

    def send(_):
        return requests.post(
            f"{cost.url}{COST.path}", json=cost_payload, headers={"Authorization": f"Bearer {COST_TOKEN}"}, timeout=30
        )

    for _ in range(2):
        with ThreadPoolExecutor(max_workers=50) as pool:
            bodies = [response.json() for response in pool.map(send, range(50))]
        assert sum(len(body["triggered"]) for body in bodies) == 1
        time_passes(redis_client, ["adservice"], 3600)
    episodes = [item["episode"] for message in receiver.messages for item in message["triggers"]]
    assert [(e["notify"], e["sequence"]) for e in episodes] == [("first", 1), ("reminder", 2)]
    assert episodes[0]["id"] == episodes[1]["id"]
