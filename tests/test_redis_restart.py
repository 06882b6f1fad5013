"""Both services under load while Redis is killed and restarted: only 201s and 503s, and no rolled-back state."""

import itertools
import random
import threading
import time
from datetime import UTC, datetime

import pytest
import redis
import requests

from devtools.harness import RedisServer, both_services, wait_until
from tests.conftest import COST_TOKEN, FORECAST_TOKEN

pytestmark = pytest.mark.gunicorn

# Loaded until the kill, then left alone: what they hold afterwards is what the restart kept.
BEFORE_KILL = [f"app-{i}" for i in range(12)]
AFTER_KILL = [f"app-{i}" for i in range(12, 24)]
BASE = 1_700_000_000


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
    env = {
        "REDIS_URL": durable_redis.url,
        "REDIS_TIMEOUT_SECONDS": "1",
        "AGENT_WEBHOOK_URL": receiver.url,
        "COST_ENGINE_TOKEN": COST_TOKEN,
        "FORECAST_TOKEN": FORECAST_TOKEN,
        "LOG_LEVEL": "WARNING",
    }
    with both_services(env, tmp_path) as running:
        yield running


def payload(kind, seq, names):
    """A payload whose numbers are derived from its sequence number, so the newest one is known."""
    stamp = datetime.fromtimestamp(BASE + seq, UTC).isoformat().replace("+00:00", "Z")
    if kind == "cost":
        rows = [
            {
                "name": n,
                "current_requests": {"cpu_cores": 2.0, "memory_mb": seq},
                "current_usage": {"cpu_cores": (seq % 20) / 10, "memory_mb": seq % 1000},
            }
            for n in names
        ]
        extra = {"cluster_totals": {"vm_count": 1 + seq % 7, "current_hourly_cost_gbp": seq / 100}}
        return {"source": "cost-engine", "timestamp": stamp, "namespace": "default", "deployments": rows, **extra}
    rows = [{"name": n, "predict_peak_24h": {"cpu_cores": (seq % 30) / 10, "memory_mb": seq}} for n in names]
    return {"source": "forecast", "timestamp": stamp, "namespace": "default", "deployments": rows}


def newest(accepted, deployments):
    """The sequence number of the newest accepted payload, by (kind, deployment), for these deployments."""
    found = {}
    for kind, seq, names in accepted:
        for name in set(names) & set(deployments):
            found[(kind, name)] = max(found.get((kind, name), 0), seq)
    return found


def test_redis_killed_and_restarted_under_load(services, durable_redis):
    counter = itertools.count(1)
    lock = threading.Lock()
    statuses, broken, accepted, refused = [], [], [], []
    stop, killed = threading.Event(), threading.Event()

    def send(kind, seq, names):
        svc = services[kind]
        path = "/metrics/cost" if kind == "cost" else "/metrics/forecast"
        token = COST_TOKEN if kind == "cost" else FORECAST_TOKEN
        return requests.post(
            svc.url + path, json=payload(kind, seq, names), headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def worker(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            kind = rng.choice(["cost", "forecast"])
            names = rng.sample(AFTER_KILL if killed.is_set() else BEFORE_KILL, rng.randint(1, 5))
            with lock:
                seq = next(counter)  # taken under the lock so sequence numbers increase with send order
            try:
                response = send(kind, seq, names)
            except requests.RequestException as exc:
                broken.append(repr(exc))
                continue
            with lock:
                statuses.append(response.status_code)
                (accepted if response.status_code == 201 else refused).append((kind, seq, names))
            if response.status_code == 503:
                # Checked here but recorded, not asserted: an assertion would only end this thread.
                # A restarted server answers LOADING while it reads its append-only file back.
                code = response.json()["error"]["code"]
                if not response.headers.get("Retry-After") or code not in ("REDIS_UNAVAILABLE", "REDIS_LOADING"):
                    broken.append(f"unexpected 503: {response.headers} {response.text}")
                time.sleep(0.05)

    def answered(status, since, count=1):
        """Whether at least `count` of the answers after the first `since` were `status`."""
        with lock:
            return statuses[since:].count(status) >= count

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    try:
        # Each step waits for what the services answer, not for a time: Redis is killed once they
        # accept, restarted once they have refused, and the load stops once they accept again.
        assert wait_until(lambda: answered(201, 0, count=20), timeout=30), "no load was accepted before the kill"
        killed.set()
        durable_redis.kill()
        killed_at = len(statuses)
        assert wait_until(lambda: answered(503, killed_at, count=6), timeout=30), (
            "nothing was refused while Redis was down"
        )
        durable_redis.start()
        restarted_at = len(statuses)
        assert wait_until(lambda: answered(201, restarted_at, count=20), timeout=30), "not accepted after the restart"
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert not [thread for thread in threads if thread.is_alive()], "the load did not stop"
    assert broken == []
    assert set(statuses) == {201, 503}, f"statuses seen: {sorted(set(statuses))}"

    store = redis.Redis.from_url(durable_redis.url, decode_responses=True)
    # Durability: every write acknowledged before the kill is still there (or a newer one of the
    # requests in flight at the kill), though nothing has written those deployments since.
    for (kind, name), seq in newest(accepted, BEFORE_KILL).items():
        assert int(store.hget(f"app:default:{name}", f"{kind}_timestamp") or 0) >= BASE + seq, (kind, name)

    # The callers retry what was refused, as the cost engine and forecaster do on a 503.
    for kind, seq, names in refused:
        assert send(kind, seq, names).status_code == 201
        accepted.append((kind, seq, names))

    # No rolled-back state: each deployment holds exactly the newest payload accepted for it.
    for (kind, name), seq in newest(accepted, BEFORE_KILL + AFTER_KILL).items():
        state = store.hgetall(f"app:default:{name}")
        if kind == "cost":
            assert int(state["cost_timestamp"]) == BASE + seq
            assert int(state["req_mem"]) == seq and float(state["usage_cpu_curr"]) == (seq % 20) / 10
        else:
            assert int(state["forecast_timestamp"]) == BASE + seq
            assert int(state["pred_mem_peak"]) == seq
    newest_cost = max(seq for kind, seq, _ in accepted if kind == "cost")
    assert float(store.get("cluster:default:cost")) == newest_cost / 100
    assert int(store.get("cluster:default:vm_count")) == 1 + newest_cost % 7
