import requests

from shared.webhook import TRIGGER_TYPE, AgentWebhook, build_trigger


def message():
    return build_trigger(
        "cost",
        "default",
        {"hourly_cost_gbp": 1.25, "vm_count": 3},
        {"adservice": [{"rule": "cpu_waste", "value": 0.8, "threshold": 0.5}]},
        {"adservice": {"req_cpu": 2.0, "usage_cpu_curr": 0.4}, "other": {}},
    )


def test_build_trigger_has_the_contract_shape():
    body = message()
    assert body["type"] == TRIGGER_TYPE == "deployments.thresholds_crossed"
    assert body["source"] == "cost" and body["namespace"] == "default"
    assert body["sent_at"].endswith("Z")
    [trigger] = body["triggers"]
    assert set(trigger) == {"id", "deployment", "reasons", "state"}
    assert trigger["deployment"] == "adservice" and trigger["state"]["req_cpu"] == 2.0
    assert len(trigger["id"]) == 36


def test_delivery_to_a_real_receiver(receiver):
    outcome = AgentWebhook(receiver.url, 1, 1).deliver(message(), "req-1")
    assert outcome.ok and outcome.status_code == 202
    assert receiver.messages[0]["triggers"][0]["deployment"] == "adservice"
    assert receiver.headers[0]["X-Request-ID"] == "req-1"


def test_non_2xx_is_a_failure(receiver):
    receiver.status = 500
    outcome = AgentWebhook(receiver.url, 1, 1).deliver(message(), "req-2")
    assert not outcome.ok and outcome.error == "HTTP 500"


def test_hanging_agent_is_cut_off_by_the_read_timeout(receiver):
    receiver.delay = 2
    outcome = AgentWebhook(receiver.url, 1, 0.2).deliver(message(), "req-3")
    assert not outcome.ok and outcome.error == "ReadTimeout"
    assert outcome.seconds < 1.5


def test_refused_connection_is_a_failure():
    from tests.support import free_port

    outcome = AgentWebhook(f"http://127.0.0.1:{free_port()}/", 0.5, 0.5).deliver(message(), "req-4")
    assert not outcome.ok and outcome.error == "ConnectionError"


def test_unexpected_transport_errors_become_outcomes(mocker):
    session = requests.Session()
    mocker.patch.object(session, "post", side_effect=requests.exceptions.SSLError("bad cert"))
    outcome = AgentWebhook("https://agent/", 1, 1, session=session).deliver(message(), "req-5")
    assert not outcome.ok and outcome.error == "SSLError"
