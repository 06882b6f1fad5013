"""A Redis Cluster losing a primary under load, and a service started before its cluster answers."""

import time

import pytest
import redis
from redis.crc import key_slot

from cost_service import create_app as create_cost_app
from devtools.harness import LOAD_EPOCH, GunicornService, Load, RedisClusterServers, service_env, wait_until
from shared.web.services import COST

DEPLOYMENTS = [f"app-{i}" for i in range(12)]

pytestmark = [pytest.mark.cluster, pytest.mark.gunicorn]

# How soon after cluster_state:ok ingest must answer 201 again (issue 11).
RECOVERY_LIMIT_SECONDS = 15


@pytest.fixture
def replicated_cluster(tmp_path):
    """Three primaries with a replica each; a silent primary is failed over after about a second."""
    servers = RedisClusterServers(tmp_path / "cluster", size=3, replicas=1, node_timeout_ms=1000).start()
    yield servers
    servers.stop()


def test_ingest_recovers_by_itself_after_a_primary_is_killed_under_load(replicated_cluster, receiver, tmp_path):
    primaries = replicated_cluster.primary_ports()
    env = service_env(
        f"redis://127.0.0.1:{primaries[0]}/0",
        receiver.url,
        REDIS_CLUSTER="true",
        REDIS_CLUSTER_NODES=",".join(f"127.0.0.1:{port}" for port in primaries[1:]),
        REDIS_TIMEOUT_SECONDS="1",
        LOG_LEVEL="WARNING",
    )
    cost = GunicornService(COST.app, env, workers=2).start(tmp_path / "cost.log")
    # The victim serves some of the deployments' keys, so every payload needs it.
    victim = primaries[1]
    victim_slots = {
        slot
        for start, end, (host, port, *_), *_ in replicated_cluster.node(victim).cluster("slots")
        if port == victim
        for slot in range(start, end + 1)
    }
    assert any(key_slot(f"app:default:{name}".encode()) in victim_slots for name in DEPLOYMENTS)

    # Every payload is the cost engine's, for every deployment: the newest accepted one is what they all hold.
    load = Load({COST.name: cost}, lambda rng, seq: (COST.name, DEPLOYMENTS)).start()
    try:
        # The kill comes once the load is being accepted: answers before it show the cluster served it.
        assert wait_until(lambda: load.count(201) >= 20, timeout=30), "no load was accepted before the kill"
        killed_at = time.monotonic()
        replicated_cluster.kill(victim)
        survivors = replicated_cluster.live_ports()
        assert replicated_cluster.wait_failover(victim, timeout=30), "no failover within 30 s"
        ok_at = time.monotonic()

        def recovered():
            # Three seconds of nothing but 201s, counted from requests started after the last 503.
            answers = load.answers()
            last_refusal = max((a.answered_at for a in answers if a.status != 201), default=ok_at)
            later = [a.status for a in answers if a.sent_at > last_refusal]
            return time.monotonic() - last_refusal > 3 and later and set(later) == {201}

        wait_until(recovered, timeout=RECOVERY_LIMIT_SECONDS + 5, interval=0.2)
    finally:
        load.stop()
        cost.stop()

    answers = load.answers()
    assert [answer.failure for answer in answers if answer.status is None] == []
    assert {answer.status for answer in answers} <= {201, 503}
    assert any(answer.status == 201 for answer in answers if answer.sent_at < killed_at)
    # The load saw the primary gone (every payload needs it): the recovery measured below is one.
    assert any(answer.status == 503 for answer in answers if answer.sent_at > killed_at), "no 503 after the kill"
    last_refusal = max((a.answered_at for a in answers if a.status != 201), default=ok_at)
    recovery = max(0.0, last_refusal - ok_at)
    print(
        f"failover: cluster_state:ok {ok_at - killed_at:.1f} s after the kill, ingest 201 again {recovery:.1f} s later"
    )
    assert recovery <= RECOVERY_LIMIT_SECONDS
    assert any(answer.status == 201 for answer in answers if answer.sent_at > last_refusal)

    # The caller resends what was refused (stale by now, so harmless); the newest accepted payload is
    # what every deployment holds, whole.
    client = redis.RedisCluster(host="127.0.0.1", port=survivors[0], decode_responses=True)
    newest = max(answer.seq for answer in answers if answer.status == 201)
    for name in DEPLOYMENTS:
        state = client.hgetall(f"app:default:{name}")
        assert int(state["cost_timestamp"]) == LOAD_EPOCH + newest, name
        assert int(state["req_mem"]) == newest and float(state["usage_cpu_curr"]) == (newest % 20) / 10
    # At most one trigger per deployment, failover or not (its cooldown window outlives the test),
    # plus at most one escalation when a payload's usage crossed a risk rule inside that window.
    items = [(t["deployment"], bool(t.get("escalation"))) for m in receiver.messages for t in m["triggers"]]
    assert len(items) == len(set(items)), sorted(items)
    assert {name for name, escalation in items if not escalation} <= set(DEPLOYMENTS)
    client.close()


def test_service_starts_with_its_seed_node_down_and_serves_once_the_cluster_answers(
    tmp_path, receiver, cost_payload, cost_headers
):
    servers = RedisClusterServers(tmp_path / "cluster", size=3)  # ports chosen, nodes not started yet
    app = create_cost_app(service_env(servers.url, receiver.url, REDIS_CLUSTER="true", REDIS_TIMEOUT_SECONDS="0.5"))
    client = app.test_client()
    refused = client.post(COST.path, json=cost_payload, headers=cost_headers)
    assert refused.status_code == 503 and refused.json["error"]["code"] == "REDIS_UNAVAILABLE"
    assert refused.headers["Retry-After"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    try:
        servers.start()
        answer = client.post(COST.path, json=cost_payload, headers=cost_headers)
        assert answer.status_code == 201, answer.json
        assert answer.json["triggered"] == ["adservice"]
        assert client.get("/readyz").status_code == 200
    finally:
        servers.stop()
