import math

import pytest

from shared.core.history import History, bucket_start
from shared.core.recommend import price, recommend
from tests.conftest import SEED_ADSERVICE_PRICE

SEED_STATE = {"req_cpu": 2.0, "req_mem": 4096, "usage_cpu_curr": 0.4, "usage_mem_curr": 512}
SEED_CLUSTER = {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 3.5, "req_mem_total": 6144}
DAY = 86400


def test_seed_adservice_recommendation_and_price_match_the_contract_example():
    recommendation = recommend("default", "adservice", SEED_STATE, 0.15)
    assert {k: recommendation[k] for k in ("cpu_cores", "memory_mb", "headroom", "kubectl", "basis")} == {
        "cpu_cores": 0.46,
        "memory_mb": 589,
        "headroom": 0.15,
        "kubectl": "kubectl -n default set resources deployment/adservice --requests=cpu=460m,memory=589Mi",
        "basis": "single_sample",
    }
    cost = price(SEED_CLUSTER, SEED_STATE, recommendation)
    assert {k: v for k, v in cost.items() if k not in ("basis", "by_resource")} == SEED_ADSERVICE_PRICE
    assert cost["by_resource"]["cpu"]["delta_gbp_per_hour"] + cost["by_resource"]["memory"][
        "delta_gbp_per_hour"
    ] == pytest.approx(-0.580551, abs=2e-6)


def test_the_price_ratio_moves_cost_between_cpu_and_memory():
    recommendation = recommend("default", "adservice", SEED_STATE, 0.15)
    cost = price(SEED_CLUSTER, SEED_STATE, recommendation, cpu_memory_price_ratio=1)
    # 1.25 / (3.5 cores + 6 GiB), a GiB-hour now as dear as a core-hour.
    assert cost["price_per_cpu_core_hour_gbp"] == cost["price_per_memory_gib_hour_gbp"] == round(1.25 / 9.5, 6)


def week_history(cpu_values, peaks, samples=2016):
    """A History as decoded from Redis: equal weights per bucket, one peak per day."""
    last = 19730 * DAY + 12 * 3600
    return History(
        samples=samples,
        first_sample=last - 7 * DAY,
        last_sample=last,
        cpu_buckets=cpu_values,
        memory_peaks=tuple((19723 + i, peak) for i, peak in enumerate(peaks)),
    )


def test_with_a_week_of_history_cpu_comes_from_percentiles_and_memory_from_daily_peaks():
    # Buckets 40, 50, 60 with weights 50 %, 40 %, 10 %: p50 ends bucket 40, p90 bucket 50, p95 bucket 60.
    history = week_history({40: 5, 50: 4, 60: 1}, [500, 510, 520, 530, 540, 550, 560, 600])
    recommendation = recommend("default", "x", SEED_STATE, 0.15, history)
    assert recommendation["basis"] == "history"
    cpu = recommendation["cpu"]
    assert cpu["lower"] == math.ceil(bucket_start(41) * 1.15 * 1000) / 1000
    assert cpu["target"] == math.ceil(bucket_start(51) * 1.15 * 1000) / 1000 == recommendation["cpu_cores"]
    assert cpu["upper"] == math.ceil(bucket_start(61) * 1.15 * 1000) / 1000
    # p90 of 8 peaks: 0.3 of the way from the 7th (560) to the 8th (600) = 572; p50: 535.
    assert recommendation["memory"] == {"target": math.ceil(572 * 1.15), "lower": math.ceil(535 * 1.15), "upper": 690}
    assert recommendation["memory_mb"] == 658
    assert f"memory={recommendation['memory_mb']}Mi" in recommendation["kubectl"]
    assert recommendation["history"] == {
        "samples": 2016,
        "first_sample": "2024-01-01T12:00:00Z",
        "last_sample": "2024-01-08T12:00:00Z",
        "span_hours": 168.0,
        "confidence": 1.0,
    }


def test_a_fresh_forecast_is_a_floor_and_a_stale_one_is_not():
    history = week_history({10: 1}, [300, 300])
    fresh = {**SEED_STATE, "cost_timestamp": 1000, "forecast_timestamp": 1000 + 3600, "pred_cpu_peak": 2.0}
    fresh["pred_mem_peak"] = 1000
    recommendation = recommend("default", "x", fresh, 0.15, history, max_skew_seconds=3600)
    assert recommendation["cpu_cores"] == 2.3 and recommendation["memory_mb"] == 1150
    assert recommendation["cpu"]["upper"] >= 2.3 and recommendation["memory"]["upper"] >= 1150
    stale = {**fresh, "forecast_timestamp": 1000 + 3601}
    assert recommend("default", "x", stale, 0.15, history, max_skew_seconds=3600)["cpu_cores"] < 1


@pytest.mark.parametrize(
    ("span_hours", "samples", "basis", "confidence"),
    [
        (23.9, 288, "single_sample", 0.14),  # under a day: the latest sample decides
        (24, 289, "history", 0.14),
        (168, 2017, "history", 1.0),
        (168, 168, "history", 0.08),  # a week, but hourly: 14 hours' worth of 5-minute samples
    ],
)
def test_basis_needs_a_day_and_confidence_weighs_span_and_density(span_hours, samples, basis, confidence):
    history = History(samples, 0, span_hours * 3600, {10: 1}, ((0, 100),))
    recommendation = recommend("default", "x", SEED_STATE, 0.15, history)
    assert recommendation["basis"] == basis
    assert recommendation["history"]["confidence"] == confidence


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
        {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 0, "req_mem_total": 0},
    ],
)
def test_no_price_without_a_cost_payload_or_requested_cpu(cluster):
    assert price(cluster, SEED_STATE, recommend("default", "x", SEED_STATE, 0.15)) is None
