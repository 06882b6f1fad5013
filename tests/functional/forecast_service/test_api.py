import pytest

from shared.web.services import COST, FORECAST
from tests.conftest import COST_TOKEN, auth


def post(client, payload, headers):
    return client.post(FORECAST.path, json=payload, headers=headers)


def test_forecast_without_cost_state_is_stored_but_not_evaluated(
    forecast_client, forecast_headers, forecast_payload, receiver, redis_client
):
    body = post(forecast_client, forecast_payload, forecast_headers).get_json()
    assert body == {
        "status": "accepted",
        "deployments": 2,
        "triggered": [],
        "cooldown": [],
        "suppressed": [],
        "stale": [],
        "not_evaluated": [
            {"deployment": "adservice", "why": "no_cost_state"},
            {"deployment": "cartservice", "why": "no_cost_state"},
        ],
        "delivery": "none",
    }
    assert redis_client.hget("app:default:adservice", "pred_cpu_peak") == b"0.55"
    assert redis_client.hget("app:default:adservice", "forecast_timestamp") == b"1704110400"
    assert receiver.messages == []


def test_forecast_merges_with_cost_state_and_triggers_safe_downscale(
    cost_client, cost_headers, cost_payload, forecast_client, forecast_headers, forecast_payload, receiver, redis_client
):
    # Cost state arrives with adservice idle but inside the cost thresholds, so no cost trigger.
    cost_payload["deployments"][0]["current_usage"]["cpu_cores"] = 1.1  # waste 0.45
    assert cost_client.post(COST.path, json=cost_payload, headers=cost_headers).get_json()["triggered"] == []
    body = post(forecast_client, forecast_payload, forecast_headers).get_json()
    assert body["triggered"] == ["adservice"] and body["delivery"] == "ok"
    [message] = receiver.messages
    assert message["source"] == "forecast"
    assert message["cluster"] == {"hourly_cost_gbp": 1.25, "vm_count": 3}
    [trigger] = message["triggers"]
    assert [r["rule"] for r in trigger["reasons"]] == ["safe_downscale"]
    assert trigger["state"]["req_cpu"] == 2.0 and trigger["state"]["pred_cpu_peak"] == 0.55
    assert trigger["state"]["usage_cpu_curr"] == 1.1 and trigger["state"]["cost_timestamp"] == 1704110400
    # The cost fields survived the forecast write.
    assert redis_client.hget("app:default:adservice", "req_mem") == b"4096"


def test_predicted_spike_triggers(
    cost_client, cost_headers, cost_payload, forecast_client, forecast_headers, forecast_payload, receiver
):
    cost_payload["deployments"][1]["current_usage"]["cpu_cores"] = 1.0
    cost_client.post(COST.path, json=cost_payload, headers=cost_headers)
    forecast_payload["deployments"][1]["predict_peak_24h"]["cpu_cores"] = 1.4  # > 0.9 * 1.5
    body = post(forecast_client, forecast_payload, forecast_headers).get_json()
    assert "cartservice" in body["triggered"]
    reasons = {t["deployment"]: t["reasons"] for t in receiver.messages[-1]["triggers"]}
    assert reasons["cartservice"][0]["rule"] == "predicted_cpu_spike"


def test_cooldown_is_shared_with_the_cost_service(
    cost_client, cost_headers, cost_payload, forecast_client, forecast_headers, forecast_payload, receiver
):
    assert cost_client.post(COST.path, json=cost_payload, headers=cost_headers).get_json()["triggered"] == ["adservice"]
    body = post(forecast_client, forecast_payload, forecast_headers).get_json()
    assert body["cooldown"] == ["adservice"] and body["triggered"] == []
    assert len(receiver.messages) == 1


def test_cost_token_is_refused(forecast_client, forecast_payload, redis_client):
    response = post(forecast_client, forecast_payload, auth(COST_TOKEN))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.update(source="cost-engine"), "source"),
        (lambda p: p.update(namespace="prod"), "namespace"),
        (lambda p: p["deployments"][0].pop("predict_peak_24h"), "deployments"),
        (lambda p: p["deployments"][0]["predict_peak_24h"].update(memory_mb=-5), "deployments"),
        (lambda p: p.update(deployments=[]), "deployments"),
    ],
)
def test_invalid_forecasts_are_422_and_write_nothing(
    forecast_client, forecast_headers, forecast_payload, redis_client, change, field
):
    change(forecast_payload)
    response = post(forecast_client, forecast_payload, forecast_headers)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]
    assert redis_client.dbsize() == 0
