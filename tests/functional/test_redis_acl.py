"""A Redis ACL user with exactly the documented minimal rule runs every flow; one lacking a part of it is refused."""

import copy
import json

import pytest
import redis

from cost_service import create_app as create_cost_app
from devtools.harness import ROOT, service_env
from forecast_service import create_app as create_forecast_app
from shared.store.connection import CLUSTER_ACL_ADDITIONS, MINIMAL_ACL_RULE
from shared.store.repository import Claims
from shared.web.services import COST, FORECAST, service_of
from tests.conftest import AGENT_TOKEN, COST_TOKEN, FORECAST_TOKEN, auth

USER, PASSWORD = "aggregator", "acl-user-password-0123456789"


@pytest.fixture(params=["redis", pytest.param("valkey", marks=pytest.mark.valkey)])
def server(request, redis_server):
    """The session's redis-server, then its valkey-server."""
    return request.getfixturevalue("valkey_server") if request.param == "valkey" else redis_server


@pytest.fixture
def admin(server):
    """A client of the default user; the store is empty and the ACL log clear before, the user gone after."""
    client = server.client()
    client.flushdb()
    client.script_flush()
    client.execute_command("ACL", "LOG", "RESET")
    yield client
    client.execute_command("ACL", "DELUSER", USER)
    client.flushdb()
    client.close()


def create_user(admin, rule):
    """Give the services' user exactly `rule`, nothing else."""
    admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", *rule.split())


def config(port, receiver):
    return service_env(
        f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0", receiver.url, AGENT_WEBHOOK_BUDGET_SECONDS="0.5"
    )


def test_the_docs_give_the_rule_the_test_uses():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert any(MINIMAL_ACL_RULE in path.read_text() for path in docs)
    assert any(f"{MINIMAL_ACL_RULE} {CLUSTER_ACL_ADDITIONS}" in path.read_text() for path in docs)


def test_a_user_with_the_minimal_rule_runs_every_flow(server, admin, receiver, cost_payload, forecast_payload):
    create_user(admin, MINIMAL_ACL_RULE)
    cost_app = create_cost_app(config(server.port, receiver))
    cost = cost_app.test_client()
    forecast = create_forecast_app(config(server.port, receiver)).test_client()
    cost_headers, forecast_headers = auth(COST_TOKEN), auth(FORECAST_TOKEN)

    assert cost.get("/readyz").status_code == 200 and forecast.get("/readyz").status_code == 200
    first = cost.post(COST.path, json=cost_payload, headers=cost_headers)
    assert first.status_code == 201 and first.json["triggered"] == ["adservice"] and first.json["delivery"] == "ok"
    again = cost.post(COST.path, json=cost_payload, headers=cost_headers).json
    assert again["cooldown"] == ["adservice"] and again["triggered"] == []
    older = copy.deepcopy(cost_payload)
    older["timestamp"] = "2023-12-31T00:00:00Z"
    assert sorted(cost.post(COST.path, json=older, headers=cost_headers).json["stale"]) == [
        "adservice",
        "cartservice",
    ]
    # A predicted spike inside the waste window: an escalation, claimed and settled.
    spike = copy.deepcopy(forecast_payload)
    for row in spike["deployments"]:
        if row["name"] == "adservice":
            row["predict_peak_24h"]["cpu_cores"] = 1.9
    escalated = forecast.post(FORECAST.path, json=spike, headers=forecast_headers)
    assert escalated.status_code == 201 and escalated.json["triggered"] == ["adservice"]

    # A failed delivery: the claims are given back (a script) and the record is kept and printed.
    receiver.status = 503
    other = copy.deepcopy(cost_payload)
    other["deployments"][0]["name"] = "checkout"
    failed = cost.post(COST.path, json=other, headers=cost_headers).json
    assert failed["triggered"] == ["checkout"] and failed["delivery"] == "failed"
    assert not admin.exists("trigger:default:checkout")
    printed = cost_app.test_cli_runner().invoke(args=["failed-triggers"])
    assert printed.exit_code == 0, printed.output
    [line] = printed.output.splitlines()
    assert json.loads(line)["message"]["triggers"][0]["deployment"] == "checkout"
    receiver.status = 202
    redelivered = cost_app.test_cli_runner().invoke(args=["redeliver"])
    assert redelivered.exit_code == 0, redelivered.output
    assert not admin.exists("triggers:default:failed") and admin.exists("trigger:default:checkout")

    # Episodes: a quiet sample starts the count, and with RESOLVE_AFTER_SECONDS=0 resolves at once;
    # the agent reads a deployment and decides about its episode.
    agent_app = create_cost_app({**config(server.port, receiver), "AGENT_TOKEN": AGENT_TOKEN})
    agent = agent_app.test_client()
    read = agent.get("/deployments/default/checkout", headers=auth(AGENT_TOKEN))
    assert read.status_code == 200, read.json
    episode_id = read.json["episode"]["id"]
    decided = agent.post(
        "/deployments/default/checkout/decision",
        json={"episode_id": episode_id, "decision": "no_change"},
        headers=auth(AGENT_TOKEN),
    )
    assert decided.status_code == 200, decided.json
    quiet = copy.deepcopy(other)
    quiet["timestamp"] = "2024-01-01T12:05:00Z"
    quiet["deployments"][0]["current_usage"]["cpu_cores"] = 1.5
    resolver = create_cost_app({**config(server.port, receiver), "RESOLVE_AFTER_SECONDS": "0"}).test_client()
    resolved = resolver.post(COST.path, json=quiet, headers=cost_headers).json
    assert resolved["triggered"] == ["checkout"], resolved
    quiet["timestamp"] = "2024-01-01T12:10:00Z"
    counting = create_cost_app({**config(server.port, receiver), "RESOLVE_AFTER_SECONDS": "3600"}).test_client()
    cost.post(COST.path, json=other, headers=cost_headers)  # a new episode
    assert counting.post(COST.path, json=quiet, headers=cost_headers).status_code == 201  # the count starts

    # Not one command or key was refused on the way (the ACL log lists every denial).
    assert admin.execute_command("ACL", "LOG") == []


def without(token):
    rule = MINIMAL_ACL_RULE.split()
    rule.remove(token)
    return " ".join(rule)


@pytest.mark.parametrize(
    ("missing", "step"),
    [
        ("+evalsha", lambda repo, payload: repo.save_cost(payload)),
        ("+hset", lambda repo, payload: repo.save_cost(payload)),  # called inside the save script
        ("+set", lambda repo, payload: repo.claim("default", ["adservice"], {}, 1.0)),
        ("~triggers:*", lambda repo, payload: repo.settle_failed("default", Claims(1.0, 0.0), {"error": "x"})),
        ("+pexpire", lambda repo, payload: repo.settle_delivered("default", repo.claim("default", ["a"], {}, 1.0))),
        ("+hget", lambda repo, payload: repo.claim("default", ["adservice"], {}, 1.0)),
        ("+lrange", lambda repo, payload: repo.failed_triggers("default")),
        ("+lrem", lambda repo, payload: repo.remove_failed("default", {"error": "x"})),
        ("+pttl", lambda repo, payload: repo.running_windows("default", ["adservice"])),
        ("+ping", lambda repo, payload: repo.redis.ping()),  # the health check of health_check_interval
    ],
)
def test_a_user_lacking_part_of_the_rule_is_refused(server, admin, receiver, cost_payload, missing, step):
    create_user(admin, without(missing))
    app = create_cost_app(config(server.port, receiver))
    repository = service_of(app).aggregator.repository
    payload = service_of(app).schema.load(cost_payload)
    # NOPERM from a command; from inside a script Redis words it as "can't run this command".
    with pytest.raises(redis.exceptions.ResponseError, match="(?i)noperm|no permissions|can't run this command"):
        step(repository, payload)


def test_the_user_in_the_url_and_its_password_in_a_file(server, admin, receiver, cost_payload, tmp_path):
    create_user(admin, MINIMAL_ACL_RULE)
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    settings = {**config(server.port, receiver), "REDIS_URL": f"redis://{USER}@127.0.0.1:{server.port}/0"}
    client = create_cost_app({**settings, "REDIS_PASSWORD_FILE": str(password_file)}).test_client()
    assert client.get("/readyz").status_code == 200
    assert client.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN)).status_code == 201
    password_file.write_text("not-the-password\n")
    wrong = create_cost_app({**settings, "REDIS_PASSWORD_FILE": str(password_file)}).test_client()
    assert wrong.get("/readyz").status_code == 503


@pytest.mark.cluster
def test_a_cluster_user_with_the_rule_and_the_cluster_additions(redis_cluster, receiver, cost_payload):
    nodes = [redis.Redis(port=port, socket_timeout=2) for port in redis_cluster.ports]
    for node in nodes:
        node.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", *MINIMAL_ACL_RULE.split())
        node.execute_command("ACL", "SETUSER", USER, *CLUSTER_ACL_ADDITIONS.split())
        node.execute_command("ACL", "LOG", "RESET")
    try:
        app = create_cost_app({**config(redis_cluster.ports[0], receiver), "REDIS_CLUSTER": "true"})
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        assert client.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN)).json["triggered"] == ["adservice"]
        receiver.status = 503
        later = {**cost_payload, "timestamp": "2024-01-01T13:00:00Z"}
        later["deployments"] = [{**cost_payload["deployments"][0], "name": "checkout"}]
        assert client.post(COST.path, json=later, headers=auth(COST_TOKEN)).json["delivery"] == "failed"
        assert app.test_cli_runner().invoke(args=["failed-triggers"]).exit_code == 0
        assert [node.execute_command("ACL", "LOG") for node in nodes] == [[]] * len(nodes)
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", USER)
            node.flushdb()
