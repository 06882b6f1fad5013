"""The operator's commands, failed-triggers and redeliver, against a real redis-server and agent receiver."""

import json
import subprocess
import sys

import pytest

from cost_service import create_app as create_cost_app
from devtools.harness import ROOT, free_port, service_env
from forecast_service import create_app as create_forecast_app
from shared.store.repository import StateRepository
from shared.web.services import COST, FORECAST

FAILED = "triggers:default:failed"


def flask_command(*args, **env):
    """Run `flask --app cost_service ...` in a process whose environment holds only PATH and `env`."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "cost_service", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_needs_no_settings_at_all():
    for command in ("failed-triggers", "redeliver"):
        done = flask_command(command, "--help")
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert "--namespace" in done.stdout


def test_failed_triggers_needs_only_redis_url(redis_server, redis_client):
    record = {"message": {"triggers": []}, "error": "HTTP 503", "failed_at": "2026-11-23T10:00:00.000Z"}
    redis_client.lpush(FAILED, json.dumps(record))
    done = flask_command("failed-triggers", REDIS_URL=redis_server.url)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [record]


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (("failed-triggers",), {}, "Error: Redis is unavailable: ConnectionError"),
        (("failed-triggers", "--namespace", "kube-system"), {}, "Error: namespace kube-system is not in"),
        (("redeliver", "--namespace", "kube-system"), {}, "Error: namespace kube-system is not in"),
        (("redeliver",), {}, "Error: AGENT_WEBHOOK_URL is required"),
        (("failed-triggers",), {"REDIS_URL": "localhost:6379"}, "Error: REDIS_URL must start with"),
    ],
)
def test_errors_are_one_line_and_a_failure_exit(args, env, error):
    done = flask_command(*args, **{"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", **env})
    assert done.returncode == 1
    assert done.stderr.startswith(error) and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stdout == ""


@pytest.fixture
def cost(base_config):
    """The cost service app, with a short delivery budget so failures come fast."""
    return create_cost_app({**base_config, "AGENT_WEBHOOK_BUDGET_SECONDS": "0.5"})


def ingest(app, payload, headers, timestamp):
    """POST one cost payload with the given timestamp; return the 201 body."""
    payload["timestamp"] = timestamp
    response = app.test_client().post(COST.path, json=payload, headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def kept(redis_client):
    """The failed list, newest first."""
    return [json.loads(raw) for raw in redis_client.lrange(FAILED, 0, -1)]


def test_redeliver_sends_with_the_same_webhook_id_and_clears_the_list(
    cost, cost_payload, cost_headers, receiver, redis_client
):
    receiver.status = 503
    assert ingest(cost, cost_payload, cost_headers, "2024-01-01T12:00:00Z")["delivery"] == "failed"
    [record] = kept(redis_client)
    failed_call = receiver.calls[-1]
    assert record["webhook_id"] == failed_call["headers"]["webhook-id"]

    receiver.status = 202
    result = cost.test_cli_runner().invoke(args=["redeliver"])
    assert result.exit_code == 0, result.output
    assert result.output == f"delivered {record['webhook_id']} default: adservice (HTTP 202)\n"
    [message] = receiver.messages
    assert receiver.headers[0]["webhook-id"] == record["webhook_id"]
    [sent], [failed] = message["triggers"], record["message"]["triggers"]
    # The same item; its episode, which the failure left unopened, opened now under the same id.
    assert {**sent, "episode": None} == {**failed, "episode": None}
    assert sent["episode"]["id"] == failed["episode"]["id"]
    assert (sent["episode"]["sequence"], sent["episode"]["notify"]) == (1, "first")
    assert kept(redis_client) == []
    # The redelivery opened the window as a delivered ingest would: the next payload is held back.
    assert redis_client.hget("app:default:adservice", "last_trigger")
    again = ingest(cost, cost_payload, cost_headers, "2024-01-01T12:01:00Z")
    assert again["triggered"] == [] and again["cooldown"] == ["adservice"]
    assert len(receiver.messages) == 1


def test_a_window_claimed_since_the_failure_is_not_triggered_twice(
    cost, cost_payload, cost_headers, receiver, redis_client
):
    receiver.status = 503
    assert ingest(cost, cost_payload, cost_headers, "2024-01-01T12:00:00Z")["delivery"] == "failed"
    [record] = kept(redis_client)
    receiver.status = 202
    # The failure released the claim, so the next payload triggered adservice itself.
    assert ingest(cost, cost_payload, cost_headers, "2024-01-01T12:01:00Z")["delivery"] == "ok"

    result = cost.test_cli_runner().invoke(args=["redeliver"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"superseded {record['webhook_id']} default: adservice")
    assert len(receiver.messages) == 1
    assert kept(redis_client) == []


def test_redeliver_one_by_webhook_id_newest_first_otherwise(cost, cost_payload, cost_headers, receiver, redis_client):
    receiver.status = 503
    ingest(cost, cost_payload, cost_headers, "2024-01-01T12:00:00Z")
    ingest(cost, cost_payload, cost_headers, "2024-01-01T12:01:00Z")
    newer, older = kept(redis_client)
    runner = cost.test_cli_runner()
    receiver.status = 202

    unknown = runner.invoke(args=["redeliver", "--webhook-id", "msg_nobody"])
    assert unknown.exit_code == 1 and "no failed delivery has webhook-id msg_nobody" in unknown.output

    picked = runner.invoke(args=["redeliver", "--webhook-id", older["webhook_id"]])
    assert picked.exit_code == 0, picked.output
    assert receiver.headers[-1]["webhook-id"] == older["webhook_id"]
    assert receiver.messages[-1]["triggers"][0]["state"]["cost_timestamp"] == 1704110400
    assert kept(redis_client) == [newer]
    # The older one took the window: the newer one for the same deployment is superseded, not sent.
    rest = runner.invoke(args=["redeliver"])
    assert rest.exit_code == 0 and rest.output.startswith(f"superseded {newer['webhook_id']}")
    assert len(receiver.messages) == 1 and kept(redis_client) == []


def test_a_failed_redelivery_stays_listed_and_releases_its_claim(
    cost, cost_payload, cost_headers, receiver, redis_client
):
    receiver.status = 503
    ingest(cost, cost_payload, cost_headers, "2024-01-01T12:00:00Z")
    [record] = kept(redis_client)
    result = cost.test_cli_runner().invoke(args=["redeliver"])
    assert result.exit_code == 1
    assert result.output.startswith(f"failed {record['webhook_id']} default: adservice: HTTP 503 after ")
    assert result.output.splitlines()[-1] == "Error: 1 of 1 redeliveries failed; they stay listed"
    [again] = kept(redis_client)
    assert again["webhook_id"] == record["webhook_id"]
    assert again["message"]["triggers"][0]["id"] == record["message"]["triggers"][0]["id"]
    assert again["message"]["triggers"][0]["episode"]["id"] == record["message"]["triggers"][0]["episode"]["id"]
    assert again["error"] == "HTTP 503" and again["failed_at"] >= record["failed_at"]
    assert not redis_client.exists("trigger:default:adservice")
    assert {call["headers"]["webhook-id"] for call in receiver.calls} == {record["webhook_id"]}


def test_an_escalation_is_redelivered_into_its_window_once(
    base_config, cost, cost_payload, cost_headers, forecast_payload, forecast_headers, receiver, redis_client
):
    assert ingest(cost, cost_payload, cost_headers, "2024-01-01T12:00:00Z")["delivery"] == "ok"  # waste window
    forecast = create_forecast_app({**base_config, "AGENT_WEBHOOK_BUDGET_SECONDS": "0.5"}).test_client()
    forecast_payload["deployments"][0]["predict_peak_24h"]["cpu_cores"] = 1.9  # a predicted spike: risk
    receiver.status = 503
    body = forecast.post(FORECAST.path, json=forecast_payload, headers=forecast_headers).json
    assert body["delivery"] == "failed" and body["triggered"] == ["adservice"]
    assert not redis_client.exists(StateRepository.escalation_key("default", "adservice"))

    receiver.status = 202
    runner = cost.test_cli_runner()
    assert runner.invoke(args=["redeliver"]).exit_code == 0
    [item] = receiver.messages[-1]["triggers"]
    assert item["escalation"] is True and item["reasons"][0]["rule"] == "predicted_cpu_spike"
    window = redis_client.ttl("trigger:default:adservice")
    assert 0 < redis_client.ttl(StateRepository.escalation_key("default", "adservice")) <= window
    # The escalation claim is held now: the same spike again is cooled down, not escalated twice.
    receiver.status = 202
    again = forecast.post(FORECAST.path, json=forecast_payload, headers=forecast_headers).json
    assert again["triggered"] == [] and again["cooldown"] == ["adservice"]


def test_redeliver_with_nothing_listed_says_so(cost):
    result = cost.test_cli_runner().invoke(args=["redeliver"])
    assert result.exit_code == 0 and result.output == "no failed deliveries to send\n"


def test_redis_down_is_one_line_from_the_runner(base_config):
    app = create_cost_app({**base_config, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    for command in ("failed-triggers", "redeliver"):
        result = app.test_cli_runner().invoke(args=[command])
        assert result.exit_code == 1
        assert result.output.startswith("Error: Redis is unavailable:") and len(result.output.splitlines()) == 1


def test_the_commands_leave_a_live_metrics_directory_alone(redis_server, redis_client, tmp_path):
    # In a pod, PROMETHEUS_MULTIPROC_DIR is the directory gunicorn's workers write to; a command run there
    # with every setting present must not add files of its own to what /metrics adds up.
    settings = service_env(redis_server.url, "http://127.0.0.1:9/", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    done = flask_command("failed-triggers", **settings)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_record_is_reported_and_left_while_the_others_go(
    cost, cost_payload, cost_headers, receiver, redis_client
):
    receiver.status = 503
    ingest(cost, cost_payload, cost_headers, "2024-01-01T12:00:00Z")
    redis_client.lpush(FAILED, json.dumps({"error": "HTTP 500", "failed_at": "2026-01-01T00:00:00.000Z"}))
    [odd, record] = kept(redis_client)
    receiver.status = 202
    result = cost.test_cli_runner().invoke(args=["redeliver"])
    assert result.exit_code == 1
    assert f"delivered {record['webhook_id']} default: adservice (HTTP 202)" in result.output
    assert "unreadable record default: KeyError('message'); left in the list" in result.output
    assert kept(redis_client) == [odd]
