import pytest

from shared.core.rules import (
    Thresholds,
    cooldown_remaining,
    cost_gap,
    evaluate_cost,
    evaluate_forecast,
    forecast_gap,
    has_risk,
)

T = Thresholds()


def cost_state(req, usage):
    return {"req_cpu": req, "usage_cpu_curr": usage}


def rules(reasons):
    return [r["rule"] for r in reasons]


def test_seed_adservice_wastes_80_percent():
    assert evaluate_cost(cost_state(2.0, 0.4), T) == [{"rule": "cpu_waste", "value": 0.8, "threshold": 0.5}]


def test_seed_cartservice_fires_nothing():
    # waste 0.4667, utilisation 0.5333: inside both thresholds.
    assert evaluate_cost(cost_state(1.5, 0.8), T) == []


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (1.0, []),  # waste exactly 0.5: strict > does not fire
        (0.99, ["cpu_waste"]),
        (1.7, []),  # utilisation exactly 0.85
        (1.71, ["cpu_utilisation"]),
        (2.5, ["cpu_utilisation"]),  # usage above request
    ],
)
def test_cost_boundaries(usage, expected):
    assert rules(evaluate_cost(cost_state(2.0, usage), T)) == expected


def test_cost_reason_carries_value_and_threshold():
    [reason] = evaluate_cost(cost_state(2.0, 1.8), T)
    assert reason == {"rule": "cpu_utilisation", "value": 0.9, "threshold": 0.85}


@pytest.mark.parametrize("state", [{}, {"req_cpu": 0, "usage_cpu_curr": 0.5}, {"pred_cpu_peak": 3.0}])
def test_no_ratio_rule_without_a_positive_request(state):
    assert evaluate_cost(state, T) == []
    assert evaluate_forecast(state, T) == []


def merged(req, usage, peak):
    return {"req_cpu": req, "usage_cpu_curr": usage, "pred_cpu_peak": peak}


@pytest.mark.parametrize(
    ("usage", "peak", "expected"),
    [
        (1.0, 1.8, []),  # peak exactly 0.9 * req
        (1.0, 1.81, ["predicted_cpu_spike"]),
        (1.2, 1.0, []),  # waste exactly 0.4, peak below 0.6 * req
        (1.19, 1.0, ["safe_downscale"]),
        (1.19, 1.2, []),  # peak exactly 0.6 * req
        (1.19, 1.19, ["safe_downscale"]),
        (0.2, 1.9, ["predicted_cpu_spike"]),  # big waste but a spike coming: no downscale
    ],
)
def test_forecast_boundaries(usage, peak, expected):
    assert rules(evaluate_forecast(merged(2.0, usage, peak), T)) == expected


def test_seed_forecast_on_seed_cost_state_is_safe_downscale():
    [reason] = evaluate_forecast(merged(2.0, 0.4, 0.55), T)
    assert reason["rule"] == "safe_downscale"
    assert reason["value"] == 0.8 and reason["threshold"] == 0.4
    assert reason["peak_ratio"] == 0.275 and reason["peak_threshold"] == 0.6


def test_forecast_needs_cost_state():
    assert evaluate_forecast({"pred_cpu_peak": 5.0}, T) == []
    assert evaluate_forecast({"req_cpu": 2.0, "usage_cpu_curr": 0.1}, T) == []


def test_thresholds_are_configurable():
    loose = Thresholds(cpu_waste=0.9)
    assert evaluate_cost(cost_state(2.0, 0.4), loose) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpu_waste": 1.0},
        {"downscale_waste": 1.5},
        {"cpu_utilisation": -0.1},
        {"predicted_spike_ratio": float("nan")},
        {"downscale_peak_ratio": float("inf")},
        {"cpu_waste": "0.5"},
        {"cpu_waste": True},
    ],
)
def test_thresholds_reject_nonsense(kwargs):
    with pytest.raises(ValueError):
        Thresholds(**kwargs)


def test_cooldown_remaining():
    assert cooldown_remaining({}, now=1000, cooldown_seconds=1800) == 0
    assert cooldown_remaining({"last_trigger": 1000}, now=2799, cooldown_seconds=1800) == 1
    assert cooldown_remaining({"last_trigger": 1000}, now=2800, cooldown_seconds=1800) == 0


MEMORY = Thresholds(memory_rules=True)


def test_memory_rules_are_off_by_default():
    state = {"req_cpu": 2.0, "usage_cpu_curr": 1.0, "req_mem": 1000, "usage_mem_curr": 990, "pred_cpu_peak": 1.5}
    assert evaluate_cost(state, T) == []
    assert evaluate_forecast({**state, "pred_mem_peak": 2000}, T) == []


@pytest.mark.parametrize(("usage_mem", "fires"), [(850, False), (851, True)])
def test_memory_utilisation_boundary(usage_mem, fires):
    state = {"req_cpu": 2.0, "usage_cpu_curr": 1.0, "req_mem": 1000, "usage_mem_curr": usage_mem}
    assert rules(evaluate_cost(state, MEMORY)) == (["memory_utilisation"] if fires else [])


@pytest.mark.parametrize(("peak_mem", "fires"), [(900, False), (901, True)])
def test_predicted_memory_spike_boundary(peak_mem, fires):
    state = {"req_cpu": 2.0, "usage_cpu_curr": 1.0, "pred_cpu_peak": 1.5, "req_mem": 1000, "pred_mem_peak": peak_mem}
    assert rules(evaluate_forecast(state, MEMORY)) == (["predicted_memory_spike"] if fires else [])


def test_memory_rules_skip_a_zero_memory_request():
    state = {"req_cpu": 2.0, "usage_cpu_curr": 1.0, "req_mem": 0, "usage_mem_curr": 10, "pred_mem_peak": 10}
    assert evaluate_cost(state, MEMORY) == [] and evaluate_forecast({**state, "pred_cpu_peak": 1.5}, MEMORY) == []


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ({"pred_cpu_peak": 1.0, "forecast_timestamp": 100}, "no_cost_state"),
        ({"req_cpu": 0, "usage_cpu_curr": 0, "cost_timestamp": 100, "forecast_timestamp": 100}, "zero_request"),
        ({"req_cpu": 1, "usage_cpu_curr": 0, "cost_timestamp": 100, "forecast_timestamp": 3701}, "cost_state_too_old"),
        ({"req_cpu": 1, "usage_cpu_curr": 0, "cost_timestamp": 3701, "forecast_timestamp": 100}, "cost_state_too_old"),
        ({"req_cpu": 1, "usage_cpu_curr": 0, "cost_timestamp": 100, "forecast_timestamp": 3700}, None),
    ],
)
def test_forecast_gap(state, why):
    assert forecast_gap(state, T) == why


def test_cost_gap():
    assert cost_gap({"req_cpu": 0, "usage_cpu_curr": 0}, T) == "zero_request"
    assert cost_gap({"req_cpu": 1, "usage_cpu_curr": 0}, T) is None


def test_risk_versus_waste():
    assert has_risk([{"rule": "cpu_waste"}, {"rule": "predicted_cpu_spike"}])
    assert not has_risk([{"rule": "cpu_waste"}, {"rule": "safe_downscale"}])


def test_memory_rules_flag_must_be_a_bool():
    with pytest.raises(ValueError):
        Thresholds(memory_rules="yes")
