import json
import re
import time

import pytest

from cost_service import create_app
from devtools.harness import free_port, wait_until
from shared.web.services import COST, service_of
from tests.conftest import FORECAST_TOKEN, auth


def post(client, payload, headers, **kwargs):
    return client.post(COST.path, json=payload, headers=headers, **kwargs)


def assert_error_shape(response, status, code):
    assert response.status_code == status
    assert response.is_json
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "details", "request_id", "timestamp"}
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


def test_seed_payload_triggers_adservice_only(cost_client, cost_headers, cost_payload, receiver, redis_client):
    response = post(cost_client, cost_payload, cost_headers)
    assert response.status_code == 201
    assert response.get_json() == {
        "status": "accepted",
        "deployments": 2,
        "triggered": ["adservice"],
        "cooldown": [],
        "suppressed": [],
        "stale": [],
        "not_evaluated": [],
        "delivery": "ok",
    }
    [message] = receiver.messages
    assert message["source"] == "cost" and message["namespace"] == "default"
    assert message["cluster"] == {"hourly_cost_gbp": 1.25, "vm_count": 3}
    [trigger] = message["triggers"]
    assert trigger["deployment"] == "adservice"
    assert trigger["reasons"] == [{"rule": "cpu_waste", "value": 0.8, "threshold": 0.5}]
    assert trigger["state"] == {
        "req_cpu": 2.0,
        "req_mem": 4096,
        "usage_cpu_curr": 0.4,
        "usage_mem_curr": 512,
        "cost_timestamp": 1704110400,
    }
    claimed_at = redis_client.get("trigger:default:adservice")
    assert redis_client.hget("app:default:adservice", "last_trigger") == claimed_at
    assert not redis_client.exists("trigger:default:cartservice")
    assert redis_client.get("cluster:default:cost") == b"1.25"
    assert redis_client.get("cluster:default:vm_count") == b"3"


def test_repeat_is_held_by_the_cooldown_and_sends_nothing(cost_client, cost_headers, cost_payload, receiver):
    post(cost_client, cost_payload, cost_headers)
    body = post(cost_client, cost_payload, cost_headers).get_json()
    assert body["triggered"] == [] and body["cooldown"] == ["adservice"] and body["delivery"] == "none"
    assert len(receiver.messages) == 1


def test_cooldown_key_without_last_trigger_still_holds(cost_client, cost_headers, cost_payload, receiver, redis_client):
    # Another pod claimed the window a moment ago and is still delivering: its key alone must hold us back.
    redis_client.set("trigger:default:adservice", int(time.time()) - 1, ex=60)
    body = post(cost_client, cost_payload, cost_headers).get_json()
    assert body["cooldown"] == ["adservice"] and receiver.messages == []


def test_expired_cooldown_triggers_again(base_config, cost_headers, cost_payload, receiver, redis_client):
    client = create_app({**base_config, "COOLDOWN_SECONDS": "1"}).test_client()
    assert post(client, cost_payload, cost_headers).get_json()["triggered"] == ["adservice"]
    # Redis itself ends the window: the claim expires after COOLDOWN_SECONDS.
    assert wait_until(lambda: not redis_client.exists("trigger:default:adservice"), timeout=5)
    assert post(client, cost_payload, cost_headers).get_json()["triggered"] == ["adservice"]
    assert len(receiver.messages) == 2


@pytest.mark.parametrize(("status", "retried"), [(500, True), (404, False), (429, True)])
def test_failed_delivery_releases_the_claim(
    cost_client, cost_headers, cost_payload, receiver, redis_client, status, retried
):
    receiver.status = status
    body = post(cost_client, cost_payload, cost_headers).get_json()
    assert body["delivery"] == "failed" and body["triggered"] == ["adservice"]
    assert (len(receiver.calls) > 1) is retried
    assert not redis_client.exists("trigger:default:adservice")
    assert redis_client.hget("app:default:adservice", "last_trigger") is None
    receiver.status = 202
    assert post(cost_client, cost_payload, cost_headers).get_json()["delivery"] == "ok"


def test_unreachable_agent_still_answers_201(base_config, cost_headers, cost_payload, redis_client):
    client = create_app({**base_config, "AGENT_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/"}).test_client()
    response = post(client, cost_payload, cost_headers)
    assert response.status_code == 201 and response.get_json()["delivery"] == "failed"
    assert not redis_client.exists("trigger:default:adservice")


def test_zero_request_is_stored_without_rules(cost_client, cost_headers, cost_payload, receiver, redis_client):
    cost_payload["deployments"][0]["current_requests"]["cpu_cores"] = 0
    assert post(cost_client, cost_payload, cost_headers).get_json()["triggered"] == []
    assert redis_client.hget("app:default:adservice", "req_cpu") == b"0"


def test_older_payload_is_reported_stale(cost_client, cost_headers, cost_payload, receiver, redis_client):
    post(cost_client, cost_payload, cost_headers)
    cost_payload["timestamp"] = "2024-01-01T11:00:00Z"
    cost_payload["deployments"][1]["current_usage"]["cpu_cores"] = 1.49  # would fire if it were written
    body = post(cost_client, cost_payload, cost_headers).get_json()
    assert body["stale"] == ["adservice", "cartservice"] and body["triggered"] == []
    assert redis_client.hget("app:default:cartservice", "usage_cpu_curr") == b"0.8"


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong-token-0123456789"), auth(FORECAST_TOKEN), {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["missing", "wrong", "forecast-token", "basic"],
)
def test_unauthorised_requests_get_401_and_write_nothing(cost_client, cost_payload, redis_client, headers):
    response = post(cost_client, cost_payload, headers)
    assert_error_shape(response, 401, "UNAUTHORIZED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert redis_client.dbsize() == 0


def test_every_rotated_token_is_accepted(base_config, cost_payload, receiver):
    client = create_app({**base_config, "COST_ENGINE_TOKEN": "old-token-0123456789,new-token-0123456789"}).test_client()
    assert post(client, cost_payload, auth("old-token-0123456789")).status_code == 201
    assert post(client, cost_payload, auth("new-token-0123456789")).status_code == 201


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "BAD_REQUEST"),
        ("", "application/json", 400, "BAD_REQUEST"),
        ("[1, 2]", "application/json", 400, "BAD_REQUEST"),
        ('"text"', "application/json", 400, "BAD_REQUEST"),
        ('{"a": NaN}', "application/json", 400, "BAD_REQUEST"),
        ("[" * 100_000 + "]" * 100_000, "application/json", 400, "BAD_REQUEST"),
        ("\xff\xfe", "application/json", 400, "BAD_REQUEST"),
        ("a=b", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("{}", "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("{}", None, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
def test_malformed_bodies(cost_client, cost_headers, redis_client, body, content_type, status, code):
    headers = {**cost_headers, **({"Content-Type": content_type} if content_type else {})}
    response = cost_client.post(COST.path, data=body.encode("latin-1"), headers=headers)
    assert_error_shape(response, status, code)
    assert redis_client.dbsize() == 0


def test_validation_errors_are_422_with_field_details(cost_client, cost_headers, cost_payload, redis_client):
    cost_payload["cluster_totals"]["vm_count"] = 0
    cost_payload["deployments"][1]["current_usage"]["cpu_cores"] = "lots"
    error = assert_error_shape(post(cost_client, cost_payload, cost_headers), 422, "VALIDATION_ERROR")
    assert error["details"] == {
        "fields": {
            "cluster_totals": {"vm_count": ["Must be greater than or equal to 1."]},
            "deployments": {"1": {"current_usage": {"cpu_cores": ["Not a valid number."]}}},
        }
    }
    # The valid first deployment is not written either: a rejected request changes nothing.
    assert redis_client.dbsize() == 0


def test_too_many_deployments_is_422(base_config, cost_headers, cost_payload, redis_client):
    client = create_app({**base_config, "MAX_DEPLOYMENTS": "1"}).test_client()
    error = assert_error_shape(post(client, cost_payload, cost_headers), 422, "VALIDATION_ERROR")
    assert error["details"]["fields"]["deployments"] == ["Must contain at most 1 deployments."]


def test_oversized_body_is_413_and_writes_nothing(base_config, cost_headers, cost_payload, redis_client):
    # A valid payload, made large by its deployments alone: only its size can be the reason it is refused.
    [template, _] = cost_payload["deployments"]
    cost_payload["deployments"] = [{**template, "name": f"app-{i}"} for i in range(40)]
    body = json.dumps(cost_payload)
    headers = {**cost_headers, "Content-Type": "application/json"}

    def post_with_limit(limit):
        client = create_app({**base_config, "MAX_BODY_BYTES": str(limit)}).test_client()
        return client.post(COST.path, data=body, headers=headers)

    assert len(body) > 2048
    assert_error_shape(post_with_limit(2048), 413, "PAYLOAD_TOO_LARGE")
    assert redis_client.dbsize() == 0
    # Under a limit it fits, the same body is accepted.
    accepted = post_with_limit(len(body))
    assert accepted.status_code == 201 and accepted.get_json()["deployments"] == 40


def test_wrong_method_and_unknown_path(cost_client):
    response = cost_client.get(COST.path)
    assert_error_shape(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"]
    assert_error_shape(cost_client.get("/nope"), 404, "NOT_FOUND")


def test_request_id_is_taken_from_the_caller_and_sent_to_the_agent(cost_client, cost_headers, cost_payload, receiver):
    response = post(cost_client, cost_payload, {**cost_headers, "X-Request-ID": "engine-42"})
    assert response.headers["X-Request-ID"] == "engine-42"
    assert receiver.headers[0]["X-Request-ID"] == "engine-42"
    # An unsafe id is replaced by one of our own, which the agent then receives instead.
    cost_payload["deployments"][1]["current_usage"]["cpu_cores"] = 0.1  # cartservice fires; adservice is held
    unsafe = post(cost_client, cost_payload, {**cost_headers, "X-Request-ID": "bad id; drop"})
    replaced = unsafe.headers["X-Request-ID"]
    assert replaced != "bad id; drop" and re.fullmatch(r"[A-Za-z0-9._:-]+", replaced)
    assert unsafe.get_json()["triggered"] == ["cartservice"]
    assert receiver.headers[-1]["X-Request-ID"] == replaced


def test_redis_down_is_503_with_retry_after(base_config, cost_headers, cost_payload):
    app = create_app({**base_config, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_TIMEOUT_SECONDS": "0.5"})
    client = app.test_client()
    response = post(client, cost_payload, cost_headers)
    assert_error_shape(response, 503, "REDIS_UNAVAILABLE")
    assert response.headers["Retry-After"] == "5"
    assert_error_shape(client.get("/readyz"), 503, "REDIS_UNAVAILABLE")
    assert client.get("/healthz").status_code == 200


def test_probes_need_no_token(cost_client):
    assert cost_client.get("/healthz").get_json() == {"status": "ok"}
    assert cost_client.get("/readyz").get_json() == {"status": "ready"}


def test_a_bug_is_a_json_500(cost_app, cost_headers, cost_payload):
    service_of(cost_app).aggregator.thresholds = None  # the rules now fail: a stand-in for a bug
    response = post(cost_app.test_client(), cost_payload, cost_headers)
    error = assert_error_shape(response, 500, "INTERNAL_ERROR")
    assert error["message"] == "Internal error."
