"""Round trips to Redis per ingest request: a constant, whatever the number of deployments."""

import pytest
import redis

from bench.redis_proxy import CountingProxy
from cost_service import create_app as create_cost_app
from devtools.harness import service_env, time_passes
from shared.web.services import COST
from tests.conftest import COST_TOKEN, auth

HOUR = 3600


def cost_body(size, timestamp="2026-01-01T00:00:00Z"):
    """A cost payload whose deployments all waste most of their CPU (cpu_waste fires)."""
    return {
        "source": "cost-engine",
        "timestamp": timestamp,
        "namespace": "default",
        "cluster_totals": {"vm_count": 3, "current_hourly_cost_gbp": 1.25},
        "deployments": [
            {
                "name": f"app-{i}",
                "current_requests": {"cpu_cores": 2.0, "memory_mb": 4096},
                "current_usage": {"cpu_cores": 0.4, "memory_mb": 1024},
            }
            for i in range(size)
        ],
    }


def make_app(url, cluster, receiver, **settings):
    config = service_env(url, receiver.url, REDIS_CLUSTER="true" if cluster else "false", MAX_DEPLOYMENTS="5000")
    return create_cost_app({**config, **settings}).test_client()


@pytest.mark.parametrize("size", [2, 500])
def test_a_held_back_reminder_costs_one_round_trip(redis_server, redis_client, receiver, size):
    proxy = CountingProxy(redis_server.port).start()
    names = [f"app-{i}" for i in range(size)]
    try:
        client = make_app(proxy.url, False, receiver, REMINDER_SECONDS="86400")
        assert client.post(COST.path, json=cost_body(size), headers=auth(COST_TOKEN)).json["delivery"] == "ok"
        time_passes(redis_client, names, HOUR)
        before = proxy.counts()
        held = client.post(COST.path, json=cost_body(size, "2026-01-01T00:05:00Z"), headers=auth(COST_TOKEN))
        assert held.json["suppressed"] == names and held.json["cooldown"] == []
        commands, trips = (after - start for after, start in zip(proxy.counts(), before))
        # The store script brought the usage histories with the state (the window is over), so the
        # recommendation showed nothing material: no claim.
        assert (commands, trips) == (1, 1)
        before = proxy.counts()
        changed = cost_body(size, "2026-01-01T00:10:00Z")
        for row in changed["deployments"]:
            row["current_requests"]["cpu_cores"] = 4.0
        sent = client.post(COST.path, json=changed, headers=auth(COST_TOKEN))
        assert sent.json["triggered"] == names
        commands, trips = (after - start for after, start in zip(proxy.counts(), before))
        assert (commands, trips) == (3, 3)  # store (histories with it), claim, settle
    finally:
        proxy.stop()


@pytest.mark.parametrize("size", [2, 500])
def test_round_trips_per_request_on_one_redis(redis_server, redis_client, receiver, size):
    proxy = CountingProxy(redis_server.port).start()
    try:
        client = make_app(proxy.url, False, receiver)
        first = client.post(COST.path, json=cost_body(size), headers=auth(COST_TOKEN)).json
        assert len(first["triggered"]) == size and first["delivery"] == "ok"
        before = proxy.counts()
        again = client.post(COST.path, json=cost_body(size, "2026-01-01T00:05:00Z"), headers=auth(COST_TOKEN))
        assert len(again.json["cooldown"]) == size
        commands, trips = (after - start for after, start in zip(proxy.counts(), before))
        assert (commands, trips) == (1, 1)  # steady state: the one store script
        # A new episode for app-0 alone: its window and episode gone, as if both had run out.
        redis_client.delete(*[f"trigger:default:app-{i}" for i in range(size)], "{trigger:default:app-0}:episode")
        redis_client.hdel("app:default:app-0", "last_trigger", "episode", "watch")
        before = proxy.counts()
        fired = client.post(COST.path, json=cost_body(size, "2026-01-01T00:10:00Z"), headers=auth(COST_TOKEN))
        assert fired.json["triggered"] == ["app-0"]
        commands, trips = (after - start for after, start in zip(proxy.counts(), before))
        assert (commands, trips) == (4, 4)  # store, claim, the triggered deployments' usage histories, settle
    finally:
        proxy.stop()


@pytest.mark.cluster
@pytest.mark.parametrize("size", [2, 500])
def test_script_calls_per_request_on_a_cluster(redis_cluster, receiver, size):
    seed = redis.RedisCluster.from_url(redis_cluster.url)
    seed.flushall()
    nodes = [seed.get_redis_connection(node) for node in seed.get_primaries()]
    client = make_app(redis_cluster.url, True, receiver)
    assert client.post(COST.path, json=cost_body(size), headers=auth(COST_TOKEN)).status_code == 201
    for i in range(size):
        seed.delete(f"trigger:default:app-{i}", f"{{trigger:default:app-{i}}}:episode")
        seed.hdel(f"app:default:app-{i}", "last_trigger", "episode", "watch")
    for node in nodes:
        node.config_resetstat()
    fired = client.post(COST.path, json=cost_body(size, "2026-01-01T00:05:00Z"), headers=auth(COST_TOKEN)).json
    assert len(fired["triggered"]) == size and fired["delivery"] == "ok"
    stats = [node.info("commandstats") for node in nodes]
    seed.flushall()
    seed.close()
    # Store, claim and settle: one EVALSHA each on every node serving some of the keys, all sent
    # before any reply is read; no COMMAND GETKEYS, no slot map reads, no script loading.
    assert not [
        name
        for s in stats
        for name in s
        if name in ("cmdstat_command", "cmdstat_cluster", "cmdstat_eval", "cmdstat_script|load")
    ]
    calls = [s.get("cmdstat_evalsha", {"calls": 0})["calls"] for s in stats]
    assert max(calls) <= 3 and 3 <= sum(calls) <= 3 * len(nodes)
    if size == 500:
        assert calls == [3] * len(nodes)
