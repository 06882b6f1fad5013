import copy
import json

import pytest
from marshmallow import ValidationError, fields

from devtools.harness import ROOT
from shared.core.schemas import CostPayloadSchema, ForecastPayloadSchema

FIXTURES = ROOT / "tests" / "fixtures"
COST = json.loads((FIXTURES / "cost_seed.json").read_text())
FORECAST = json.loads((FIXTURES / "forecast_seed.json").read_text())
cost_schema = CostPayloadSchema()
forecast_schema = ForecastPayloadSchema()


def errors_of(schema, payload):
    with pytest.raises(ValidationError) as info:
        schema.load(payload)
    return info.value.messages


def modified(payload, change):
    copy_ = copy.deepcopy(payload)
    change(copy_)
    return copy_


def test_cost_seed_loads_flat_rows_and_unix_seconds():
    loaded = cost_schema.load(COST)
    assert loaded["timestamp"] == 1704110400
    assert loaded["cluster_totals"] == {"vm_count": 3, "current_hourly_cost_gbp": 1.25}
    assert loaded["deployments"][0] == {
        "name": "adservice",
        "req_cpu": 2.0,
        "req_mem": 4096,
        "usage_cpu_curr": 0.4,
        "usage_mem_curr": 512,
    }


def test_forecast_seed_loads():
    loaded = forecast_schema.load(FORECAST)
    assert loaded["deployments"][1] == {"name": "cartservice", "pred_cpu_peak": 1.2, "pred_mem_peak": 1200}


def test_fractional_timestamp_and_offset():
    loaded = cost_schema.load(modified(COST, lambda p: p.update(timestamp="2024-01-01T13:00:00.5+01:00")))
    assert loaded["timestamp"] == 1704110400.5


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (lambda p: p.update(source="forecast"), ["source"], "Must be equal to cost-engine."),
        (lambda p: p.pop("source"), ["source"], "Missing data for required field."),
        (lambda p: p.update(namespace="kube-system"), ["namespace"], None),
        (lambda p: p.update(namespace="a:b"), ["namespace"], None),
        (lambda p: p.update(timestamp="2024-01-01T12:00:00"), ["timestamp"], None),
        (lambda p: p.update(timestamp="yesterday"), ["timestamp"], "Not a valid ISO-8601 date-time."),
        (lambda p: p.update(timestamp=1704110400), ["timestamp"], "Not a valid ISO-8601 date-time."),
        (lambda p: p.update(timestamp="2999-01-01T00:00:00Z"), ["timestamp"], None),
        (lambda p: p["cluster_totals"].update(vm_count=0), ["cluster_totals", "vm_count"], None),
        (lambda p: p["cluster_totals"].update(vm_count=2.5), ["cluster_totals", "vm_count"], "Not a valid integer."),
        (lambda p: p["cluster_totals"].update(vm_count=True), ["cluster_totals", "vm_count"], "Not a valid integer."),
        (
            lambda p: p["cluster_totals"].update(current_hourly_cost_gbp=-1),
            ["cluster_totals", "current_hourly_cost_gbp"],
            None,
        ),
        (
            lambda p: p["cluster_totals"].update(current_hourly_cost_gbp="1.25"),
            ["cluster_totals", "current_hourly_cost_gbp"],
            "Not a valid number.",
        ),
        (lambda p: p.update(deployments=[]), ["deployments"], "Must contain at least one deployment."),
        (lambda p: p.update(deployments={}), ["deployments"], "Not a valid list."),
        (lambda p: p.update(extra=1), ["extra"], "Unknown field."),
    ],
)
def test_cost_top_level_errors(change, path, message):
    errors = errors_of(cost_schema, modified(COST, change))
    for key in path:
        errors = errors[key]
    if message:
        assert errors == [message]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "Not a valid number."),
        ("0.4", "Not a valid number."),
        (None, "Not a valid number."),
        (-0.1, "Must be greater than or equal to 0."),
        (float("inf"), "Must be a finite number."),
        (float("nan"), "Must be a finite number."),
        (10**400, "Must be less than or equal to 1000000."),
    ],
)
def test_deployment_numbers_are_strict(value, message):
    payload = modified(COST, lambda p: p["deployments"][0]["current_usage"].update(cpu_cores=value))
    assert errors_of(cost_schema, payload) == {"deployments": {0: {"current_usage": {"cpu_cores": [message]}}}}


def test_zero_is_a_valid_quantity():
    payload = modified(COST, lambda p: p["deployments"][0]["current_requests"].update(cpu_cores=0))
    assert cost_schema.load(payload)["deployments"][0]["req_cpu"] == 0


@pytest.mark.parametrize("name", ["A", "a:b", "*", "{x}", "", "-a", "a-", "a" * 64, "ünï", 7, None])
def test_deployment_names_must_be_dns_labels(name):
    payload = modified(COST, lambda p: p["deployments"][0].update(name=name))
    assert "name" in errors_of(cost_schema, payload)["deployments"][0]


def test_longest_dns_label_is_fine():
    payload = modified(COST, lambda p: p["deployments"][0].update(name="a" * 63))
    assert cost_schema.load(payload)["deployments"][0]["name"] == "a" * 63


def test_duplicate_names_are_rejected():
    payload = modified(COST, lambda p: p["deployments"][1].update(name="adservice"))
    assert errors_of(cost_schema, payload) == {
        "deployments": {1: {"name": ["Duplicate deployment name in this payload."]}}
    }


def test_entry_shape_errors_are_reported_per_field():
    payload = modified(
        COST,
        lambda p: p["deployments"].extend(
            [
                "adservice",
                {"name": "x", "current_requests": [], "current_usage": {"cpu_cores": 1}, "colour": "red"},
            ]
        ),
    )
    errors = errors_of(cost_schema, payload)["deployments"]
    assert errors[2] == {"_schema": ["Invalid input type."]}
    assert errors[3] == {
        "colour": ["Unknown field."],
        "current_requests": {"_schema": ["Invalid input type."]},
        "current_usage": {"memory_mb": ["Missing data for required field."]},
    }


def test_forecast_requires_predict_peak():
    payload = modified(FORECAST, lambda p: p["deployments"][0].pop("predict_peak_24h"))
    assert errors_of(forecast_schema, payload) == {
        "deployments": {0: {"predict_peak_24h": ["Missing data for required field."]}}
    }


def test_forecast_rejects_cost_fields_and_wrong_source():
    payload = modified(FORECAST, lambda p: p.update(source="cost-engine", cluster_totals={}))
    errors = errors_of(forecast_schema, payload)
    assert errors["source"] == ["Must be equal to forecast."]
    assert errors["cluster_totals"] == ["Unknown field."]


def test_limits_and_namespaces_come_from_the_constructor():
    schema = CostPayloadSchema(allowed_namespaces={"default", "shop"}, max_deployments=1)
    assert "deployments" in errors_of(schema, COST)
    one = modified(COST, lambda p: (p.update(namespace="shop"), p["deployments"].pop()))
    assert schema.load(one)["namespace"] == "shop"
    # Another instance's limits must not leak into this one.
    assert cost_schema.load(COST)["namespace"] == "default"
    assert "namespace" in errors_of(cost_schema, one)


def marshmallow_only(schema):
    """The same schema with the quick path turned off, nested schemas included: marshmallow's own load."""
    schema._quick = False
    for field in schema.fields.values():
        if isinstance(field, fields.Nested):
            marshmallow_only(field.schema)
    return schema


VALID_VARIANTS = [
    lambda p: None,
    lambda p: p.update(timestamp="2024-01-01T13:00:00.25+01:00"),
    lambda p: p["deployments"][0]["current_requests"].update(cpu_cores=0.0004, memory_mb=3),
    lambda p: p["cluster_totals"].update(current_hourly_cost_gbp=0),
]


@pytest.mark.parametrize("change", VALID_VARIANTS)
def test_quick_load_gives_marshmallows_result(change):
    payload = modified(COST, change)
    assert cost_schema.load(payload) == marshmallow_only(CostPayloadSchema()).load(payload)


def test_quick_forecast_load_gives_marshmallows_result():
    assert forecast_schema.load(FORECAST) == marshmallow_only(ForecastPayloadSchema()).load(FORECAST)


def test_valid_payloads_skip_marshmallows_load_machinery(mocker):
    # The quick path is the point: a valid payload must not go through Schema._do_load at all.
    mocker.patch("marshmallow.Schema._do_load", side_effect=AssertionError("marshmallow's load ran"))
    assert cost_schema.load(COST)["cluster_totals"] == {"vm_count": 3, "current_hourly_cost_gbp": 1.25}
    assert forecast_schema.load(FORECAST)["namespace"] == "default"


def test_an_invalid_payload_still_gets_every_error_at_once():
    # The quick path stops at the first error; marshmallow's load must then report all of them.
    payload = modified(COST, lambda p: p.update(source="x", namespace="Bad", extra=1))
    payload["cluster_totals"]["vm_count"] = 0
    errors = errors_of(cost_schema, payload)
    assert set(errors) == {"source", "namespace", "extra", "cluster_totals"}
    assert errors["cluster_totals"] == {"vm_count": ["Must be greater than or equal to 1."]}


def test_a_many_schema_is_left_to_marshmallow():
    schema = CostPayloadSchema(many=True)
    assert schema.load([COST]) == [cost_schema.load(COST)]
    # One payload where a list is expected is an error, quick path or not.
    assert errors_of(schema, COST) == {"_schema": ["Invalid input type."]}
