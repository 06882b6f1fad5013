"""Both services under load through a Sentinel failover (asked for, then a killed primary): they follow the new primary.

A real primary, a real replica and three real Sentinels; the services run under gunicorn in Sentinel
mode. While the primary changes, callers see only 201 and 503, /readyz answers 503 until a writable
primary is known, ingest is back within 15 s of the new primary, no accepted payload is lost and no
deployment is triggered twice in one window.
"""

import collections
import time
from pathlib import Path

import pytest
import redis

from cost_service import create_app as create_cost_app
from devtools.harness import (
    LOAD_EPOCH,
    Load,
    RedisSentinelSet,
    both_services,
    make_certificates,
    needs_tls,
    service_env,
    wait_until,
)
from shared.web.services import COST
from tests.conftest import COST_TOKEN, auth

pytestmark = [pytest.mark.gunicorn, pytest.mark.sentinel]

MASTER = "aggregator"
DEPLOYMENTS = [f"app-{i}" for i in range(12)]


@pytest.fixture
def sentinels(tmp_path):
    servers = RedisSentinelSet(tmp_path / "sentinel", master_name=MASTER).start()
    yield servers
    servers.stop()


@pytest.fixture
def services(sentinels, receiver, tmp_path):
    # Sentinel mode: the host and port of REDIS_URL are not used, the Sentinels name the primary.
    env = service_env(
        "redis://sentinel-primary/0",
        receiver.url,
        REDIS_SENTINELS=sentinels.sentinels_setting,
        REDIS_SENTINEL_MASTER=MASTER,
        REDIS_TIMEOUT_SECONDS="1",
        AGENT_WEBHOOK_BUDGET_SECONDS="1",
        LOG_LEVEL="WARNING",
    )
    with both_services(env, tmp_path) as running:
        yield running


def choose(rng, seq):
    """Either kind of payload, for some of DEPLOYMENTS and a deployment of its own."""
    # The deployment of its own: no later payload can hide the loss of this one.
    return rng.choice(["cost", "forecast"]), [*rng.sample(DEPLOYMENTS, rng.randint(1, 5)), f"marker-{seq}"]


def new_primary_after(sentinels, old_port, timeout=30):
    """Wait until a Sentinel names another primary that answers as one; return (its port, when)."""

    def switched():
        port = sentinels.primary_port()
        if port != old_port and sentinels.server_on(port).client().role()[0] == b"master":
            return port
        return None

    port = wait_until(switched, timeout=timeout, interval=0.02)
    assert port, "no new primary within the time limit"
    return port, time.monotonic()


def check_nothing_accepted_was_lost(load, store):
    """Every accepted payload is stored (or overtaken); resending the refused ones restores the newest."""
    answers = load.answers()
    assert [answer.failure for answer in answers if answer.status is None] == []
    statuses = collections.Counter(answer.status for answer in answers)
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[201] and statuses[503], statuses
    refused = [answer for answer in answers if answer.status == 503]
    assert all(answer.retry_after and answer.error_code == "REDIS_UNAVAILABLE" for answer in refused), refused
    sent = collections.defaultdict(set)
    newest_accepted = {}
    for answer in answers:
        for name in answer.names:
            sent[(answer.kind, name)].add(answer.seq)
            if answer.status == 201:
                newest_accepted[(answer.kind, name)] = max(newest_accepted.get((answer.kind, name), 0), answer.seq)
    field = {"cost": "cost_timestamp", "forecast": "forecast_timestamp"}
    lost = [a.seq for a in answers if a.status == 201 and not store.exists(f"app:default:marker-{a.seq}")]
    assert lost == [], f"{len(lost)} accepted payloads are not on the new primary"
    for (kind, name), seq in newest_accepted.items():
        stored = int(store.hget(f"app:default:{name}", field[kind])) - LOAD_EPOCH
        # A 503 may have stored part of its payload before it failed, so a refused payload may be newer.
        assert stored >= seq and stored in sent[(kind, name)], (kind, name, seq, stored)
    # The callers resend what was refused (as on any 503): then every deployment holds its newest payload.
    for answer in refused:
        assert load.send(answer.kind, answer.seq, answer.names).status_code == 201
    for (kind, name), seqs in sent.items():
        assert int(store.hget(f"app:default:{name}", field[kind])) - LOAD_EPOCH == max(seqs)


def check_one_trigger_per_window(receiver):
    """COOLDOWN_SECONDS is 1800 s: one window, so at most one trigger and one escalation per deployment."""
    counts = collections.Counter()
    for message in receiver.messages:
        for item in message["triggers"]:
            counts[(item["deployment"], bool(item.get("escalation")))] += 1
    assert counts and max(counts.values()) == 1, counts
    # Each deployment's items are one episode, numbered from 1 without a gap or a repeat.
    episodes = collections.defaultdict(list)
    for message in receiver.messages:
        for item in message["triggers"]:
            episodes[item["deployment"]].append((item["episode"]["id"], item["episode"]["sequence"]))
    for items in episodes.values():
        assert len({episode_id for episode_id, _ in items}) == 1, items
        assert sorted(sequence for _, sequence in items) == list(range(1, len(items) + 1)), items


def followed_the_announcement(services, old_port, new_port):
    """Both services' workers logged the move on a Sentinel's announcement (not at the end of the 15 s hold)."""
    moved = f"moved from 127.0.0.1:{old_port} to 127.0.0.1:{new_port}"
    return all(moved in Path(service.output.name).read_text() for service in services.values())


def run_failover(sentinels, services, receiver, cause):
    old_port = sentinels.primary.data_port
    load = Load(services, choose, readiness_of="cost").start()
    try:
        # Both services accepting and ready before the cause, so that what follows is the failover's doing.
        assert wait_until(
            lambda: (
                load.count(201, kind="cost") >= 10 and load.count(201, kind="forecast") >= 10 and ready_since(load, 0.0)
            ),
            timeout=30,
        ), "no load was accepted before the failover"
        caused_at = time.monotonic()
        cause()
        new_port, known_at = new_primary_after(sentinels, old_port)
        back_at = wait_until(lambda: load.first(201, after=known_at), timeout=20, interval=0.05)
        # The load runs on until what the checks below read has happened: both services wrote to the
        # new primary, both logged the move, and /readyz says 200 again.
        wait_until(
            lambda: (
                load.count(201, after=known_at, kind="cost")
                and load.count(201, after=known_at, kind="forecast")
                and followed_the_announcement(services, old_port, new_port)
                and ready_since(load, known_at)
            ),
            timeout=20,
        )
    finally:
        load.stop()

    assert back_at is not None and back_at - known_at < 15, "ingest not back within 15 s of the new primary"
    assert followed_the_announcement(services, old_port, new_port)
    readiness = load.readiness()
    during = [status for moment, status in readiness if caused_at < moment < known_at]
    assert 503 in during, "/readyz never said 503 while there was no primary to write to"
    assert readiness[-1][1] == 200
    check_nothing_accepted_was_lost(load, redis.Redis(port=new_port, socket_timeout=2))
    check_one_trigger_per_window(receiver)
    return caused_at, known_at, back_at


def ready_since(load, moment):
    """Whether /readyz has answered since `moment`, and said 200 the last time."""
    readiness = load.readiness()
    return bool(readiness) and readiness[-1][0] > moment and readiness[-1][1] == 200


def test_sentinel_failover_under_load(sentinels, services, receiver):
    old = sentinels.primary
    run_failover(sentinels, services, receiver, lambda: sentinels.sentinel().sentinel_failover(MASTER))
    # The old primary is demoted about 10 s later; by then nothing was written to it that the new one lacks.
    assert old.client().ping()


def test_primary_killed_under_load(sentinels, services, receiver):
    run_failover(sentinels, services, receiver, sentinels.primary.kill)


@pytest.fixture
def sentinels_with_passwords(tmp_path):
    servers = RedisSentinelSet(
        tmp_path / "sentinel", master_name=MASTER, password="data-pw-0123456789", sentinel_password="sentinel-pw-0123"
    ).start()
    yield servers
    servers.stop()


def test_sentinels_and_data_nodes_with_passwords(sentinels_with_passwords, receiver, cost_payload, tmp_path):
    password_file = tmp_path / "redis-password"
    password_file.write_text("data-pw-0123456789\n")
    config = service_env(
        "redis://sentinel-primary/0",
        receiver.url,
        REDIS_PASSWORD_FILE=str(password_file),
        REDIS_SENTINELS=sentinels_with_passwords.sentinels_setting,
        REDIS_SENTINEL_MASTER=MASTER,
        REDIS_SENTINEL_PASSWORD="sentinel-pw-0123",
        REDIS_TIMEOUT_SECONDS="1",
    )
    client = create_cost_app(config).test_client()
    assert client.get("/readyz").status_code == 200
    response = client.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN))
    assert response.status_code == 201 and response.json["triggered"] == ["adservice"]
    assert sentinels_with_passwords.primary.client().hget("app:default:adservice", "req_cpu") == b"2.0"
    # A wrong Sentinel password: no primary can be known, so nothing is ready.
    wrong = create_cost_app({**config, "REDIS_SENTINEL_PASSWORD": "not-the-password"}).test_client()
    assert wrong.get("/readyz").status_code == 503
    assert wrong.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN)).status_code == 503


@needs_tls()
def test_sentinels_and_data_nodes_over_tls(tmp_path, receiver, cost_payload):
    certificates = make_certificates(tmp_path / "pki")
    servers = RedisSentinelSet(tmp_path / "sentinel", master_name=MASTER, tls=certificates).start()
    try:
        config = service_env(
            f"rediss://sentinel-primary/0?ssl_ca_certs={certificates['ca']}",
            receiver.url,
            REDIS_SENTINELS=servers.sentinels_setting,
            REDIS_SENTINEL_MASTER=MASTER,
            REDIS_TIMEOUT_SECONDS="1",
        )
        client = create_cost_app(config).test_client()
        assert client.get("/readyz").status_code == 200
        assert client.post(COST.path, json=cost_payload, headers=auth(COST_TOKEN)).status_code == 201
        # The failover events reach the service over TLS too: it follows the new primary.
        old_port = servers.primary.data_port
        servers.sentinel().sentinel_failover(MASTER)
        new_port, _ = new_primary_after(servers, old_port)
        later = {**cost_payload, "timestamp": "2024-01-01T13:00:00Z"}

        def accepted():
            return client.post(COST.path, json=later, headers=auth(COST_TOKEN)).status_code == 201

        assert wait_until(accepted, timeout=15, interval=0.1)
        stored = servers.server_on(new_port).client().hget("app:default:adservice", "cost_timestamp")
        assert stored == b"1704114000"
        # Without the CA, neither the Sentinels nor the servers can be verified: nothing is ready.
        untrusting = create_cost_app({**config, "REDIS_URL": "rediss://sentinel-primary/0"}).test_client()
        assert untrusting.get("/readyz").status_code == 503
    finally:
        servers.stop()
