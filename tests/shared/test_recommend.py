import pytest

from shared.recommend import price, recommend

SEED_STATE = {"req_cpu": 2.0, "req_mem": 4096, "usage_cpu_curr": 0.4, "usage_mem_curr": 512}
SEED_CLUSTER = {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 3.5}


def test_seed_adservice_recommendation_and_price_match_the_contract_example():
    recommendation = recommend("default", "adservice", SEED_STATE, 0.15)
    assert recommendation == {
        "cpu_cores": 0.46,
        "memory_mb": 589,
        "headroom": 0.15,
        "kubectl": "kubectl -n default set resources deployment/adservice --requests=cpu=460m,memory=589Mi",
    }
    cost = price(SEED_CLUSTER, SEED_STATE, recommendation)
    assert {k: v for k, v in cost.items() if k != "basis"} == {
        "price_per_cpu_core_hour_gbp": 0.357143,
        "current_gbp_per_hour": 0.714286,
        "recommended_gbp_per_hour": 0.164286,
        "delta_gbp_per_hour": -0.55,
    }
    assert "1.25" in cost["basis"] and "3.5 CPU cores" in cost["basis"]


def test_the_forecast_peak_counts_when_it_is_higher():
    state = {**SEED_STATE, "pred_cpu_peak": 1.0, "pred_mem_peak": 400}
    recommendation = recommend("default", "x", state, 0.15)
    assert recommendation["cpu_cores"] == 1.15 and recommendation["memory_mb"] == 589


@pytest.mark.parametrize(
    ("cpu", "mem", "expected"),
    [
        (0.0, 0, (0.01, 64)),  # floors
        (0.001, 10, (0.01, 64)),
        (0.1001, 100.01, (0.116, 116)),  # rounded up, never down
    ],
)
def test_rounding_up_and_floors(cpu, mem, expected):
    state = {"req_cpu": 1.0, "usage_cpu_curr": cpu, "usage_mem_curr": mem}
    recommendation = recommend("default", "x", state, 0.15)
    assert (recommendation["cpu_cores"], recommendation["memory_mb"]) == expected


def test_headroom_zero_recommends_what_is_used():
    assert recommend("default", "x", {"usage_cpu_curr": 0.46, "usage_mem_curr": 589}, 0)["cpu_cores"] == 0.46


@pytest.mark.parametrize(
    "cluster",
    [
        {"hourly_cost_gbp": None, "vm_count": None, "req_cpu_total": None},
        {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 0},
    ],
)
def test_no_price_without_a_cost_payload_or_requested_cpu(cluster):
    assert price(cluster, SEED_STATE, recommend("default", "x", SEED_STATE, 0.15)) is None
