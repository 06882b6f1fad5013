"""Issue 9: quantities too small to mean anything cannot poison a namespace with Infinity or NaN."""

import copy
import json

import pytest

from shared.core.recommend import price, recommend
from shared.delivery.webhook import AgentWebhook
from shared.web.services import COST, FORECAST


def strict_json(raw):
    """Parse JSON as a strict agent does: NaN and Infinity are refused."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(raw, parse_constant=refuse)


@pytest.mark.parametrize("tiny", [1e-320, 5e-324, 1e-10, 0.0009])
def test_sub_millicore_requests_load_as_zero_and_triggers_stay_finite(
    cost_client,
    forecast_client,
    redis_client,
    receiver,
    cost_payload,
    forecast_payload,
    cost_headers,
    forecast_headers,
    tiny,
):
    assert cost_client.post(COST.path, json=cost_payload, headers=cost_headers).status_code == 201
    # A newer cost payload whose only deployment requests next to nothing: the namespace's CPU total
    # (the price's denominator) is what it leaves behind.
    poisoned = copy.deepcopy(cost_payload)
    poisoned["timestamp"] = "2024-01-01T12:01:00Z"
    poisoned["deployments"] = [
        {
            "name": "idle",
            "current_requests": {"cpu_cores": tiny, "memory_mb": 1e-7},
            "current_usage": {"cpu_cores": tiny, "memory_mb": 1e-7},
        }
    ]
    response = cost_client.post(COST.path, json=poisoned, headers=cost_headers)
    assert response.status_code == 201
    assert [entry["deployment"] for entry in response.get_json()["not_evaluated"]] == ["idle"]
    assert redis_client.hget("app:default:idle", "req_cpu") == b"0"
    assert redis_client.hget("app:default:idle", "req_mem") == b"0"
    assert redis_client.get("cluster:default:req_cpu_total") == b"0"
    # As if adservice's cooldown had passed: its next trigger is priced from that total.
    redis_client.delete("trigger:default:adservice")
    redis_client.hdel("app:default:adservice", "last_trigger")
    receiver.calls.clear()
    assert forecast_client.post(FORECAST.path, json=forecast_payload, headers=forecast_headers).status_code == 201
    (call,) = receiver.calls
    (trigger,) = strict_json(call["body"])["triggers"]
    assert trigger["deployment"] == "adservice" and trigger["cost"] is None


def test_a_quantity_at_the_floor_is_kept(cost_client, redis_client, cost_payload, cost_headers):
    payload = copy.deepcopy(cost_payload)
    payload["deployments"][0]["current_requests"]["cpu_cores"] = 0.001
    assert cost_client.post(COST.path, json=payload, headers=cost_headers).status_code == 201
    assert redis_client.hget("app:default:adservice", "req_cpu") == b"0.001"


def test_a_price_that_would_not_be_finite_is_null():
    # State stored before the floor existed: a denormal total makes the price per core Infinity.
    cluster = {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 9.99989e-321}
    state = {"req_cpu": 1e-320, "usage_cpu_curr": 0.5}
    assert price(cluster, state, recommend("default", "x", state, 0.15)) is None


def test_a_message_carrying_nan_is_never_sent(receiver):
    outcome = AgentWebhook(receiver.url, 1, 1, 1.0).deliver({"triggers": [{"cost": float("nan")}]}, "req-1")
    assert not outcome.ok and outcome.error == "message not serialisable"
    assert receiver.calls == []
