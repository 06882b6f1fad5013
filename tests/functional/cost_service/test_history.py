"""Through the cost service: a day of history changes what the agent is told, and a replay counts nothing."""

from datetime import UTC, datetime, timedelta

from shared.web.services import COST

START = datetime(2024, 1, 1, tzinfo=UTC)


def payload(hour, adservice_cpu, memory=1000):
    return {
        "source": "cost-engine",
        "timestamp": (START + timedelta(hours=hour)).isoformat().replace("+00:00", "Z"),
        "namespace": "default",
        "cluster_totals": {"vm_count": 3, "current_hourly_cost_gbp": 1.25},
        "deployments": [
            {
                "name": "adservice",
                "current_requests": {"cpu_cores": 2.0, "memory_mb": 4096},
                "current_usage": {"cpu_cores": adservice_cpu, "memory_mb": memory},
            }
        ],
    }


def test_a_day_of_history_keeps_the_recommendation_from_shrinking_to_one_quiet_sample(
    cost_client, cost_headers, receiver, redis_client
):
    # A day at 1.2 cores (waste 0.4: no rule fires), then one quiet sample at 0.4 cores fires cpu_waste.
    for hour in range(25):
        body = cost_client.post(COST.path, json=payload(hour, 1.2), headers=cost_headers).json
        assert body["triggered"] == []
    body = cost_client.post(COST.path, json=payload(25, 0.4, memory=600), headers=cost_headers).json
    assert body["triggered"] == ["adservice"]
    [message] = receiver.messages
    recommendation = message["triggers"][0]["recommendation"]
    assert recommendation["basis"] == "history"
    # p90 of the CPU samples is in the bucket holding 1.2 cores, whose end is within 5 % above it.
    assert 1.2 * 1.15 <= recommendation["cpu_cores"] <= 1.2 * 1.05 * 1.15
    assert recommendation["cpu"]["lower"] <= recommendation["cpu"]["target"] <= recommendation["cpu"]["upper"]
    # Memory from the daily peaks (1000 on both days), not from the last sample (600).
    assert recommendation["memory_mb"] == 1150 and recommendation["memory"]["upper"] == 1150
    assert f"cpu={round(recommendation['cpu_cores'] * 1000)}m,memory=1150Mi" in recommendation["kubectl"]
    assert recommendation["history"] == {
        "samples": 26,
        "first_sample": "2024-01-01T00:00:00Z",
        "last_sample": "2024-01-02T01:00:00Z",
        "span_hours": 25.0,
        "confidence": 0.01,  # 26 samples are 2.2 hours' worth at a 5-minute cadence, of 168
    }

    # The same payload again: the window holds the trigger back, and the history counts nothing.
    body = cost_client.post(COST.path, json=payload(25, 0.4, memory=600), headers=cost_headers).json
    assert body["cooldown"] == ["adservice"]
    assert redis_client.hget("{app:default:adservice}:history", "samples") == b"26"
