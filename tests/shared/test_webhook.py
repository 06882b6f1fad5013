import json

import pytest
import requests
from standardwebhooks import Webhook, WebhookVerificationError

from devtools.agent_receiver import AgentReceiver
from devtools.harness import free_port
from shared.delivery.webhook import TRIGGER_TYPE, AgentWebhook, build_trigger, retry_after_seconds

SECRET = "whsec_YWdncmVnYXRvci10ZXN0LXNpZ25pbmcta2V5LTE="


def message():
    return build_trigger(
        "cost",
        "default",
        {"hourly_cost_gbp": 1.25, "vm_count": 3, "req_cpu_total": 3.5},
        [{"deployment": "adservice", "reasons": [{"rule": "cpu_waste", "value": 0.8, "threshold": 0.5}], "state": {}}],
    )


def webhook(url, budget=2.0, **kwargs):
    return AgentWebhook(url, 0.5, 0.5, budget, **kwargs)


def test_build_trigger_has_the_contract_shape():
    body = message()
    assert body["type"] == TRIGGER_TYPE == "deployments.thresholds_crossed"
    assert body["source"] == "cost" and body["namespace"] == "default"
    assert body["cluster"] == {"hourly_cost_gbp": 1.25, "vm_count": 3}
    assert body["sent_at"].endswith("Z")
    [trigger] = body["triggers"]
    assert list(trigger) == ["id", "deployment", "reasons", "state"]
    assert len(trigger["id"]) == 36


def test_delivery_to_a_real_receiver(receiver):
    outcome = webhook(receiver.url).deliver(message(), "req-1")
    assert outcome.ok and outcome.status_code == 202 and outcome.attempts == 1
    assert receiver.messages[0]["triggers"][0]["deployment"] == "adservice"
    assert receiver.headers[0]["X-Request-ID"] == "req-1"
    assert receiver.headers[0]["webhook-id"] == outcome.webhook_id


def test_signed_calls_verify_with_the_standard_webhooks_package(receiver):
    outcome = webhook(receiver.url, secret=SECRET).deliver(message(), "req-2")
    assert outcome.ok
    [call] = receiver.calls
    assert Webhook(SECRET).verify(call["body"], call["headers"])["triggers"][0]["deployment"] == "adservice"
    tampered = call["body"].replace(b"adservice", b"cartservice")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, call["headers"])


def test_a_verifying_receiver_refuses_unsigned_and_wrongly_signed_calls():
    agent = AgentReceiver(secret=SECRET).start()
    try:
        assert not webhook(agent.url).deliver(message(), "r").ok
        other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
        assert not webhook(agent.url, secret=other).deliver(message(), "r").ok
        assert webhook(agent.url, secret=SECRET).deliver(message(), "r").ok
        assert [c["status"] for c in agent.calls] == [401, 401, 202]
    finally:
        agent.stop()


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retryable_answers_are_retried_with_the_same_webhook_id(receiver, status):
    receiver.script = [(status, {}), (status, {})]
    outcome = webhook(receiver.url, budget=5, secret=SECRET).deliver(message(), "req-3")
    assert outcome.ok and outcome.attempts == 3
    ids = {call["headers"]["webhook-id"] for call in receiver.calls}
    assert ids == {outcome.webhook_id}
    for call in receiver.calls:  # each attempt is signed afresh and verifies
        Webhook(SECRET).verify(call["body"], call["headers"])


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_other_4xx_are_not_retried(receiver, status):
    receiver.status = status
    outcome = webhook(receiver.url, budget=5).deliver(message(), "req-4")
    assert not outcome.ok and outcome.attempts == 1 and outcome.error == f"HTTP {status}"


def test_retry_after_is_honoured_when_it_fits_the_budget(receiver):
    slept = []
    receiver.script = [(429, {"Retry-After": "1"})]
    outcome = webhook(receiver.url, budget=3, sleep=slept.append).deliver(message(), "req-5")
    assert outcome.ok and slept == [1.0]


def test_retry_after_beyond_the_budget_ends_the_delivery(receiver):
    receiver.script = [(503, {"Retry-After": "30"})]
    outcome = webhook(receiver.url, budget=3).deliver(message(), "req-6")
    assert not outcome.ok and outcome.attempts == 1 and outcome.seconds < 1


def test_a_hanging_agent_is_bounded_by_the_budget(receiver):
    receiver.delay = 3
    outcome = AgentWebhook(receiver.url, 1, 5, 1.0).deliver(message(), "req-7")
    assert not outcome.ok and outcome.error == "ReadTimeout"
    assert outcome.seconds < 1.5


def test_refused_connections_are_retried_until_the_budget_runs_out():
    outcome = webhook(f"http://127.0.0.1:{free_port()}/", budget=1.0).deliver(message(), "req-8")
    assert not outcome.ok and outcome.error == "ConnectionError"
    assert outcome.attempts >= 2 and outcome.seconds < 1.5


def test_unexpected_transport_errors_become_outcomes(mocker):
    session = requests.Session()
    mocker.patch.object(session, "post", side_effect=requests.exceptions.SSLError("bad cert"))
    outcome = AgentWebhook("https://agent/", 1, 1, 0.3, session=session).deliver(message(), "req-9")
    assert not outcome.ok and outcome.error == "SSLError"


def test_retry_after_parsing():
    def answer(value):
        response = requests.Response()
        if value is not None:
            response.headers["Retry-After"] = value
        return response

    assert retry_after_seconds(answer("3")) == 3.0
    assert retry_after_seconds(answer(None)) is None
    assert retry_after_seconds(answer("soon")) is None
    assert retry_after_seconds(answer("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0


def test_body_is_compact_json(receiver):
    webhook(receiver.url).deliver(message(), "r")
    assert json.loads(receiver.calls[0]["body"]) == receiver.messages[0]
    assert b", " not in receiver.calls[0]["body"]
