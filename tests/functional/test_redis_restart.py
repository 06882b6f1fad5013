"""Both services under load while Redis is killed and restarted: only 201s and 503s, and no rolled-back state."""

import threading
import time

import pytest
import redis

from devtools.harness import LOAD_EPOCH, Load, RedisServer, both_services, service_env, wait_until

pytestmark = pytest.mark.gunicorn

# Loaded until the kill, then left alone: what they hold afterwards is what the restart kept.
BEFORE_KILL = [f"app-{i}" for i in range(12)]
AFTER_KILL = [f"app-{i}" for i in range(12, 24)]


@pytest.fixture
def durable_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", durable=True).start()
    # The point of the restart test is that a restart keeps what was acknowledged: prove it keeps it.
    assert server.client().config_get("appendonly") == {"appendonly": "yes"}
    assert server.client().config_get("appendfsync") == {"appendfsync": "always"}
    yield server
    server.stop()


@pytest.fixture
def services(durable_redis, receiver, tmp_path):
    env = service_env(durable_redis.url, receiver.url, REDIS_TIMEOUT_SECONDS="1", LOG_LEVEL="WARNING")
    with both_services(env, tmp_path) as running:
        yield running


def newest(accepted, deployments):
    """The sequence number of the newest accepted payload, by (kind, deployment), for these deployments."""
    found = {}
    for kind, seq, names in accepted:
        for name in set(names) & set(deployments):
            found[(kind, name)] = max(found.get((kind, name), 0), seq)
    return found


def test_redis_killed_and_restarted_under_load(services, durable_redis):
    killed = threading.Event()

    def choose(rng, seq):
        return rng.choice(["cost", "forecast"]), rng.sample(
            AFTER_KILL if killed.is_set() else BEFORE_KILL, rng.randint(1, 5)
        )

    load = Load(services, choose).start()
    try:
        # Each step waits for what the services answer, not for a time: Redis is killed once they
        # accept, restarted once they have refused, and the load stops once they accept again.
        assert wait_until(lambda: load.count(201) >= 20, timeout=30), "no load was accepted before the kill"
        killed.set()
        durable_redis.kill()
        killed_at = time.monotonic()
        assert wait_until(lambda: load.count(503, after=killed_at) >= 6, timeout=30), (
            "nothing was refused while Redis was down"
        )
        durable_redis.start()
        restarted_at = time.monotonic()
        assert wait_until(lambda: load.count(201, after=restarted_at) >= 20, timeout=30), (
            "not accepted after the restart"
        )
    finally:
        load.stop()

    assert not load.running(), "the load did not stop"
    answers = load.answers()
    assert [answer.failure for answer in answers if answer.status is None] == []
    assert {answer.status for answer in answers} == {201, 503}
    # A restarted server answers LOADING while it reads its append-only file back.
    assert [
        answer
        for answer in answers
        if answer.status == 503
        and not (answer.retry_after and answer.error_code in ("REDIS_UNAVAILABLE", "REDIS_LOADING"))
    ] == []
    accepted = [(a.kind, a.seq, a.names) for a in answers if a.status == 201]
    refused = [(a.kind, a.seq, a.names) for a in answers if a.status == 503]

    store = redis.Redis.from_url(durable_redis.url, decode_responses=True)
    # Durability: every write acknowledged before the kill is still there (or a newer one of the
    # requests in flight at the kill), though nothing has written those deployments since.
    for (kind, name), seq in newest(accepted, BEFORE_KILL).items():
        assert int(store.hget(f"app:default:{name}", f"{kind}_timestamp") or 0) >= LOAD_EPOCH + seq, (kind, name)

    # The callers retry what was refused, as the cost engine and forecaster do on a 503.
    for kind, seq, names in refused:
        assert load.send(kind, seq, names).status_code == 201
        accepted.append((kind, seq, names))

    # No rolled-back state: each deployment holds exactly the newest payload accepted for it.
    for (kind, name), seq in newest(accepted, BEFORE_KILL + AFTER_KILL).items():
        state = store.hgetall(f"app:default:{name}")
        if kind == "cost":
            assert int(state["cost_timestamp"]) == LOAD_EPOCH + seq
            assert int(state["req_mem"]) == seq and float(state["usage_cpu_curr"]) == (seq % 20) / 10
        else:
            assert int(state["forecast_timestamp"]) == LOAD_EPOCH + seq
            assert int(state["pred_mem_peak"]) == seq
    newest_cost = max(seq for kind, seq, _ in accepted if kind == "cost")
    assert float(store.get("cluster:default:cost")) == newest_cost / 100
    assert int(store.get("cluster:default:vm_count")) == 1 + newest_cost % 7
