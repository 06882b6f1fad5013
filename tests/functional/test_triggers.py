"""Issue 5 through the real services: signed, retried, enriched triggers, escalation and failed deliveries."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from standardwebhooks import Webhook

from cost_service import create_app as create_cost_app
from devtools.agent_receiver import AgentReceiver
from devtools.harness import ROOT, GunicornService, service_env, wait_until
from forecast_service import create_app as create_forecast_app
from shared.web.services import COST, FORECAST
from tests.conftest import COST_TOKEN, SEED_ADSERVICE_PRICE

SECRET = "whsec_dHJpZ2dlci10ZXN0LXNpZ25pbmcta2V5LTAx"


@pytest.fixture
def signed_receiver():
    agent = AgentReceiver(secret=SECRET).start()
    yield agent
    agent.stop()


@pytest.mark.gunicorn
def test_signed_enriched_trigger_from_gunicorn(redis_server, redis_client, signed_receiver, cost_payload, tmp_path):
    env = service_env(redis_server.url, signed_receiver.url, AGENT_WEBHOOK_SECRET=SECRET)
    cost = GunicornService(COST.app, env).start(tmp_path / "cost.log")
    try:
        body = requests.post(
            f"{cost.url}{COST.path}", json=cost_payload, headers={"Authorization": f"Bearer {COST_TOKEN}"}, timeout=10
        ).json()
    finally:
        cost.stop()
    assert body["delivery"] == "ok"
    [call] = signed_receiver.calls
    assert call["status"] == 202  # the receiver verified the signature
    message = Webhook(SECRET).verify(call["body"], call["headers"])
    [item] = message["triggers"]
    recommendation = item["recommendation"]
    assert {k: recommendation[k] for k in ("cpu_cores", "memory_mb", "headroom", "kubectl", "basis")} == {
        "cpu_cores": 0.46,
        "memory_mb": 589,
        "headroom": 0.15,
        "kubectl": "kubectl -n default set resources deployment/adservice --requests=cpu=460m,memory=589Mi",
        "basis": "single_sample",
    }
    assert recommendation["cpu"] == {"target": 0.46, "lower": 0.46, "upper": 0.46}
    assert recommendation["memory"] == {"target": 589, "lower": 589, "upper": 589}
    assert recommendation["history"] == {
        "samples": 1,
        "first_sample": "2024-01-01T12:00:00Z",
        "last_sample": "2024-01-01T12:00:00Z",
        "span_hours": 0.0,
        "confidence": 0.0,
    }
    cost = item["cost"]
    assert {k: v for k, v in cost.items() if k not in ("basis", "by_resource")} == SEED_ADSERVICE_PRICE
    assert cost["by_resource"] == {
        "cpu": {
            "current_gbp_per_hour": 0.580816,
            "recommended_gbp_per_hour": 0.133588,
            "delta_gbp_per_hour": -0.447228,
        },
        "memory": {
            "current_gbp_per_hour": 0.155715,
            "recommended_gbp_per_hour": 0.022392,
            "delta_gbp_per_hour": -0.133323,
        },
    }
    assert "£1.25/hour" in cost["basis"] and "3.5 CPU cores and 6 GiB" in cost["basis"] and "7.46" in cost["basis"]
    assert "escalation" not in item


def test_a_wrong_secret_fails_delivery_and_releases_the_claim(
    base_config, cost_headers, cost_payload, signed_receiver, redis_client
):
    config = {**base_config, "AGENT_WEBHOOK_URL": signed_receiver.url, "AGENT_WEBHOOK_SECRET": SECRET[:-4] + "AAAA"}
    body = create_cost_app(config).test_client().post(COST.path, json=cost_payload, headers=cost_headers).json
    assert body["delivery"] == "failed" and [c["status"] for c in signed_receiver.calls] == [401]
    assert not redis_client.exists("trigger:default:adservice")


@pytest.fixture
def clients(base_config):
    return create_cost_app(base_config).test_client(), create_forecast_app(base_config).test_client()


def forecast_peak(forecast_payload, cpu):
    forecast_payload["deployments"][0]["predict_peak_24h"]["cpu_cores"] = cpu
    return forecast_payload


def test_risk_escalates_a_window_opened_by_waste_once(
    clients, cost_headers, forecast_headers, cost_payload, forecast_payload, receiver, redis_client
):
    cost, forecast = clients
    assert cost.post(COST.path, json=cost_payload, headers=cost_headers).json["triggered"] == ["adservice"]
    # Inside that window the forecaster predicts a spike: the agent must hear of it before downscaling.
    spike = forecast_peak(forecast_payload, 1.9)
    body = forecast.post(FORECAST.path, json=spike, headers=forecast_headers).json
    assert body["triggered"] == ["adservice"] and body["cooldown"] == []
    [item] = receiver.messages[-1]["triggers"]
    assert item["escalation"] is True and item["reasons"][0]["rule"] == "predicted_cpu_spike"
    # Once per window: the next spike is held by the cooldown.
    again = forecast.post(FORECAST.path, json=spike, headers=forecast_headers).json
    assert again["triggered"] == [] and again["cooldown"] == ["adservice"]
    assert len(receiver.messages) == 2
    window = redis_client.ttl("trigger:default:adservice")
    assert 0 < redis_client.ttl("{trigger:default:adservice}:escalation") <= window


def test_risk_inside_a_window_still_in_flight_is_escalated_exactly_once(
    base_config, cost_headers, forecast_headers, cost_payload, forecast_payload, receiver, redis_client
):
    config = {**base_config, "AGENT_WEBHOOK_BUDGET_SECONDS": "3"}
    cost_app, forecast_app = create_cost_app(config), create_forecast_app(config)
    spike = forecast_peak(forecast_payload, 1.9)
    receiver.delay = 1.0  # the agent holds every delivery open for a second
    with ThreadPoolExecutor(max_workers=5) as pool:
        waste = pool.submit(cost_app.test_client().post, COST.path, json=cost_payload, headers=cost_headers)
        # The waste window is claimed, and its trigger not yet answered (no last_trigger).
        assert wait_until(lambda: redis_client.exists("trigger:default:adservice"), timeout=5)
        assert redis_client.hget("app:default:adservice", "last_trigger") is None
        risks = [
            pool.submit(forecast_app.test_client().post, FORECAST.path, json=spike, headers=forecast_headers)
            for _ in range(4)
        ]
        assert wait_until(lambda: redis_client.exists("{trigger:default:adservice}:escalation"), timeout=5)
        # Escalated while the waste trigger was still in flight: its delivery is not settled yet.
        assert redis_client.hget("app:default:adservice", "last_trigger") is None
        bodies = [future.result().json for future in risks]
        assert waste.result().json["triggered"] == ["adservice"]
    assert sorted(len(body["triggered"]) for body in bodies) == [0, 0, 0, 1]
    assert all(body["delivery"] in ("ok", "none") for body in bodies)
    escalations = [item for message in receiver.messages for item in message["triggers"] if item.get("escalation")]
    assert [item["reasons"][0]["rule"] for item in escalations] == ["predicted_cpu_spike"]
    assert len(receiver.messages) == 2
    # Settled now: a later spike inside the same window is held.
    receiver.delay = 0
    later = forecast_app.test_client().post(FORECAST.path, json=spike, headers=forecast_headers).json
    assert later["triggered"] == [] and later["cooldown"] == ["adservice"]


def test_a_window_opened_by_risk_is_not_escalated(
    clients, cost_headers, forecast_headers, cost_payload, forecast_payload, receiver
):
    cost, forecast = clients
    cost_payload["deployments"][0]["current_usage"]["cpu_cores"] = 1.9  # cpu_utilisation 0.95
    assert cost.post(COST.path, json=cost_payload, headers=cost_headers).json["triggered"] == ["adservice"]
    body = forecast.post(FORECAST.path, json=forecast_peak(forecast_payload, 1.95), headers=forecast_headers).json
    assert body["triggered"] == [] and body["cooldown"] == ["adservice"]
    assert len(receiver.messages) == 1


def test_waste_never_escalates(clients, cost_headers, forecast_headers, cost_payload, forecast_payload, receiver):
    cost, forecast = clients
    cost.post(COST.path, json=cost_payload, headers=cost_headers)
    body = forecast.post(FORECAST.path, json=forecast_payload, headers=forecast_headers).json  # safe_downscale
    assert body["cooldown"] == ["adservice"] and len(receiver.messages) == 1


def test_failed_escalation_is_released(
    clients, cost_headers, forecast_headers, cost_payload, forecast_payload, receiver, redis_client
):
    cost, forecast = clients
    cost.post(COST.path, json=cost_payload, headers=cost_headers)
    receiver.status = 500
    spike = forecast_peak(forecast_payload, 1.9)
    assert forecast.post(FORECAST.path, json=spike, headers=forecast_headers).json["delivery"] == "failed"
    assert not redis_client.exists("{trigger:default:adservice}:escalation")
    assert redis_client.exists("trigger:default:adservice")  # the waste window itself was delivered and stays
    receiver.status = 202
    assert forecast.post(FORECAST.path, json=spike, headers=forecast_headers).json["delivery"] == "ok"


def test_forecast_against_old_cost_data_is_not_evaluated(
    clients, cost_headers, forecast_headers, cost_payload, forecast_payload
):
    cost, forecast = clients
    cost.post(COST.path, json=cost_payload, headers=cost_headers)
    forecast_payload["timestamp"] = "2024-01-01T13:00:01Z"  # 3601 s after the cost data
    body = forecast.post(FORECAST.path, json=forecast_payload, headers=forecast_headers).json
    assert body["not_evaluated"] == [
        {"deployment": "adservice", "why": "cost_state_too_old"},
        {"deployment": "cartservice", "why": "cost_state_too_old"},
    ]


def test_zero_request_is_reported_not_evaluated(clients, cost_headers, cost_payload):
    cost, _ = clients
    cost_payload["deployments"][1]["current_requests"]["cpu_cores"] = 0
    body = cost.post(COST.path, json=cost_payload, headers=cost_headers).json
    assert body["not_evaluated"] == [{"deployment": "cartservice", "why": "zero_request"}]


def test_memory_rules_behind_their_flag(base_config, cost_headers, cost_payload, receiver):
    cost_payload["deployments"][1]["current_usage"]["memory_mb"] = 2000  # 98 % of 2048
    plain = create_cost_app(base_config).test_client()
    assert plain.post(COST.path, json=cost_payload, headers=cost_headers).json["triggered"] == ["adservice"]
    receiver.messages.clear()
    cost_payload["timestamp"] = "2024-01-01T12:00:01Z"
    with_memory = create_cost_app({**base_config, "MEMORY_RULES": "true"}).test_client()
    body = with_memory.post(COST.path, json=cost_payload, headers=cost_headers).json
    assert body["triggered"] == ["cartservice"]
    [item] = receiver.messages[0]["triggers"]
    assert item["reasons"][0]["rule"] == "memory_utilisation"


def test_failed_deliveries_are_kept_and_printed_by_the_cli(
    base_config, cost_headers, cost_payload, receiver, redis_client, redis_server
):
    receiver.status = 503
    client = create_cost_app({**base_config, "AGENT_WEBHOOK_BUDGET_SECONDS": "0.5"}).test_client()
    assert client.post(COST.path, json=cost_payload, headers=cost_headers).json["delivery"] == "failed"
    [raw] = redis_client.lrange("triggers:default:failed", 0, -1)
    record = json.loads(raw)
    assert record["error"] == "HTTP 503" and record["failed_at"].endswith("Z")
    assert record["message"]["triggers"][0]["deployment"] == "adservice"

    env = {k: v for k, v in os.environ.items() if k not in ("COST_ENGINE_TOKEN_FILE",)}
    env.update({k: str(v) for k, v in base_config.items()})
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "cost_service", "failed-triggers"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert json.loads(line) == record
