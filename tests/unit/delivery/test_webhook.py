import json

import pytest
import requests
from standardwebhooks import Webhook, WebhookVerificationError

from devtools.agent_receiver import AgentReceiver
from devtools.harness import free_port
from shared.core.trigger import build_trigger
from shared.delivery.webhook import (
    LEAST_ATTEMPT_SECONDS,
    AgentWebhook,
    Outcome,
    RetryPolicy,
    judge_answer,
    retry_after_seconds,
)

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


class FakeTime:
    """A clock that moves only when slept on: the budget and the waits, without waiting."""

    def __init__(self):
        self.now = 0.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def answer(status=200, **headers):
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    return response


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
    time = FakeTime()
    receiver.script = [(503, {"Retry-After": "30"})]
    outcome = webhook(receiver.url, budget=3, sleep=time.sleep, clock=time.clock).deliver(message(), "req-6")
    # Ended at once: no wait for an attempt that could not happen.
    assert not outcome.ok and outcome.attempts == 1 and outcome.error == "HTTP 503" and time.slept == []


def test_a_hanging_agent_is_bounded_by_the_budget(receiver):
    receiver.delay = 3
    outcome = AgentWebhook(receiver.url, 1, 5, 1.0).deliver(message(), "req-7")
    # The agent answers after 3 s and the read timeout is 5 s: only the budget (1 s) cut this read
    # short, and it left no time for a second attempt.
    assert not outcome.ok and outcome.error == "ReadTimeout" and outcome.attempts == 1


def test_refused_connections_are_retried_until_the_budget_runs_out():
    time = FakeTime()
    longest = RetryPolicy(jitter=lambda low, high: high)
    refused = webhook(f"http://127.0.0.1:{free_port()}/", budget=1.0, sleep=time.sleep, clock=time.clock, retry=longest)
    outcome = refused.deliver(message(), "req-8")
    assert not outcome.ok and outcome.error == "ConnectionError"
    # Waits of 0.2 and 0.4 s fit the 1 s budget; the next, 0.8 s, would leave no time for an attempt.
    assert time.slept == [0.2, 0.4] and outcome.attempts == 3


def test_backoff_doubles_up_to_its_cap_with_jitter_below_each_step():
    steps = RetryPolicy(jitter=lambda low, high: (low, high))
    assert [steps.wait(attempts, None) for attempts in (1, 2, 3, 4, 5)] == [
        (0.1, 0.2),
        (0.2, 0.4),
        (0.4, 0.8),
        (0.8, 1.6),
        (1.0, 2.0),
    ]
    waits = [RetryPolicy().wait(3, None) for _ in range(100)]
    assert all(0.4 <= wait <= 0.8 for wait in waits) and len(set(waits)) > 1


def test_the_agents_retry_after_is_the_wait_when_it_gives_one():
    assert RetryPolicy().wait(1, 7.0) == 7.0
    assert RetryPolicy().wait(5, 0.0) == 0.0


def test_a_wait_fits_only_when_it_leaves_time_for_an_attempt():
    assert RetryPolicy.fits(0.5, now=10.0, deadline=11.0)
    assert not RetryPolicy.fits(1 - LEAST_ATTEMPT_SECONDS, now=10.0, deadline=11.0)
    assert not RetryPolicy.fits(30.0, now=10.0, deadline=11.0)


@pytest.mark.parametrize(
    "status, outcome, error",
    [
        (200, Outcome.DELIVERED, None),
        (204, Outcome.DELIVERED, None),
        (500, Outcome.RETRY, "HTTP 500"),
        (503, Outcome.RETRY, "HTTP 503"),
        (429, Outcome.RETRY, "HTTP 429"),
        (400, Outcome.GIVE_UP, "HTTP 400"),
        (410, Outcome.GIVE_UP, "HTTP 410"),
        (301, Outcome.GIVE_UP, "HTTP 301 redirect, not followed"),
    ],
)
def test_each_answer_is_judged_on_its_own(status, outcome, error):
    attempt = judge_answer(answer(status))
    assert (attempt.outcome, attempt.status, attempt.error) == (outcome, status, error)


def test_a_judged_answer_keeps_the_retry_after_and_where_a_redirect_pointed():
    assert judge_answer(answer(503, **{"Retry-After": "4"})).retry_after == 4.0
    assert judge_answer(answer(503)).retry_after is None
    assert judge_answer(answer(307, Location="http://elsewhere/")).location == "http://elsewhere/"


def test_unexpected_transport_errors_become_outcomes(mocker):
    session = requests.Session()
    mocker.patch.object(session, "post", side_effect=requests.exceptions.SSLError("bad cert"))
    outcome = AgentWebhook("https://agent/", 1, 1, 0.3, session=session).deliver(message(), "req-9")
    assert not outcome.ok and outcome.error == "SSLError"


def test_retry_after_parsing():
    def retry_after(value):
        return answer(503) if value is None else answer(503, **{"Retry-After": value})

    assert retry_after_seconds(retry_after("3")) == 3.0
    assert retry_after_seconds(retry_after(None)) is None
    assert retry_after_seconds(retry_after("soon")) is None
    assert retry_after_seconds(retry_after("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0


def test_body_is_compact_json(receiver):
    webhook(receiver.url).deliver(message(), "r")
    assert json.loads(receiver.calls[0]["body"]) == receiver.messages[0]
    assert b", " not in receiver.calls[0]["body"]
