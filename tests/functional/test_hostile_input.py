"""Generated input, valid and broken: never a 5xx, always the JSON error shape, nothing written on rejection."""

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_service import create_app as create_cost_app
from shared.core.schemas import floored
from shared.web.services import COST, FORECAST, SERVICES
from tests.conftest import FIXTURES

SEED = {spec.path: json.loads((FIXTURES / spec.seed).read_text()) for spec in SERVICES}
ODD_STRINGS = st.sampled_from(["a:b", "*", "{x}", "", " ", "app\x00", "ädservice", "A" * 64, "a" * 64, "-", "1e400"])
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | ODD_STRINGS
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10) | ODD_STRINGS, inner, max_size=4),
    max_leaves=20,
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Every test here pushes generated (120 examples) or very large (10,000 deployments) input through the app.
pytestmark = pytest.mark.slow


def leaf_paths(value, path=()):
    """Every path into a nested JSON value, containers included."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaf_paths(item, (*path, index))


def replaced(value, path, new):
    if not path:
        return new
    copy_ = copy.deepcopy(value)
    target = copy_
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return copy_


@pytest.fixture
def clients(cost_client, forecast_client, cost_headers, forecast_headers):
    return {COST.path: (cost_client, cost_headers), FORECAST.path: (forecast_client, forecast_headers)}


def check(clients, redis_client, path, body, raw=None):
    """Post and assert the contract; return the response."""
    redis_client.flushdb()
    client, headers = clients[path]
    data = raw if raw is not None else json.dumps(body, allow_nan=True)
    response = client.post(path, data=data, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        error = response.get_json()["error"]
        assert set(error) == {"code", "message", "details", "request_id", "timestamp"}
        assert redis_client.dbsize() == 0
    return response


@FUZZ
@given(path=st.sampled_from(sorted(SEED)), body=JSON_VALUES)
def test_arbitrary_json(clients, redis_client, path, body):
    assert check(clients, redis_client, path, body).status_code in (400, 422)


@FUZZ
@given(data=st.data(), path=st.sampled_from(sorted(SEED)))
def test_seed_with_one_part_replaced(clients, redis_client, data, path):
    seed = SEED[path]
    where = data.draw(st.sampled_from(list(leaf_paths(seed))))
    new = data.draw(JSON_VALUES | st.floats() | st.integers(min_value=10**300, max_value=10**400))
    body = replaced(seed, where, new)
    response = check(clients, redis_client, path, body)
    if isinstance(new, float) and not math.isfinite(new):
        assert response.status_code in (400, 422)


@FUZZ
@given(depth=st.integers(min_value=1, max_value=200_000))
def test_deep_nesting(clients, redis_client, depth):
    raw = "[" * depth + "]" * depth
    assert check(clients, redis_client, COST.path, None, raw=raw).status_code == 400


NAMES = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
QUANTITY = st.floats(min_value=0, max_value=1e6) | st.integers(min_value=0, max_value=10**6)


@FUZZ
@given(
    names=st.lists(NAMES, min_size=1, max_size=30, unique=True),
    numbers=st.lists(st.tuples(QUANTITY, QUANTITY, QUANTITY, QUANTITY), min_size=30, max_size=30),
)
def test_valid_cost_payloads_are_stored_exactly(clients, redis_client, names, numbers):
    body = copy.deepcopy(SEED[COST.path])
    body["deployments"] = [
        {
            "name": name,
            "current_requests": {"cpu_cores": rc, "memory_mb": rm},
            "current_usage": {"cpu_cores": uc, "memory_mb": um},
        }
        for name, (rc, rm, uc, um) in zip(names, numbers)
    ]
    response = check(clients, redis_client, COST.path, body)
    assert response.status_code == 201, response.get_json()
    for entry in body["deployments"]:
        stored = redis_client.hgetall(f"app:default:{entry['name']}")
        # Exactly, above the floors below which a quantity is stored as zero (shared/core/schemas.py).
        assert float(stored[b"req_cpu"]) == floored("cpu_cores", entry["current_requests"]["cpu_cores"])
        assert float(stored[b"usage_mem_curr"]) == floored("memory_mb", entry["current_usage"]["memory_mb"])


def ten_thousand():
    # Usage exactly half the request: on both cost thresholds, so nothing fires.
    body = copy.deepcopy(SEED[COST.path])
    body["deployments"] = [
        {
            "name": f"app-{i}",
            "current_requests": {"cpu_cores": 1.0, "memory_mb": 512},
            "current_usage": {"cpu_cores": 0.5, "memory_mb": 256},
        }
        for i in range(10_000)
    ]
    return body


def test_ten_thousand_deployments_over_the_limit_are_refused(clients, redis_client):
    response = check(clients, redis_client, COST.path, ten_thousand())
    assert response.status_code == 422
    assert response.get_json()["error"]["details"]["fields"]["deployments"] == [
        "Must contain at most 5000 deployments."
    ]


def test_ten_thousand_deployments_within_a_raised_limit_are_stored(base_config, cost_headers, redis_client):
    client = create_cost_app({**base_config, "MAX_DEPLOYMENTS": "10000"}).test_client()
    response = client.post(COST.path, json=ten_thousand(), headers=cost_headers)
    assert response.status_code == 201 and response.get_json()["deployments"] == 10_000
    assert response.get_json()["triggered"] == []
    # App hashes and their histories, four cluster keys and their timestamps.
    assert redis_client.dbsize() == 2 * 10_000 + 8
