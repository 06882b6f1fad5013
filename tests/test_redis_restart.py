"""Both services under load while Redis is killed and restarted: only 201s and 503s, and no rolled-back state."""

import itertools
import random
import threading
import time
from datetime import UTC, datetime

import pytest
import redis
import requests

from tests.conftest import COST_TOKEN, FORECAST_TOKEN
from tests.support import GunicornService, RedisServer, wait_until

pytestmark = pytest.mark.gunicorn

DEPLOYMENTS = [f"app-{i}" for i in range(12)]
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
    cost = GunicornService("cost_service:create_app()", env, workers=2).start(tmp_path / "cost.log")
    forecast = GunicornService("forecast_service:create_app()", env, workers=2).start(tmp_path / "forecast.log")
    yield {"cost": cost, "forecast": forecast}
    cost.stop()
    forecast.stop()


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


def test_redis_killed_and_restarted_under_load(services, durable_redis):
    counter = itertools.count(1)
    lock = threading.Lock()
    statuses, broken, accepted, refused = [], [], [], []
    stop = threading.Event()

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
            names = rng.sample(DEPLOYMENTS, rng.randint(1, 5))
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
                assert response.headers["Retry-After"]
                assert response.json()["error"]["code"] == "REDIS_UNAVAILABLE"
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    durable_redis.kill()
    time.sleep(1.5)
    durable_redis.start()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert broken == []
    assert set(statuses) == {201, 503}, f"statuses seen: {sorted(set(statuses))}"
    assert len(statuses) < 20_000  # bounded: the load stops by itself

    # The callers retry what was refused, as the cost engine and forecaster do on a 503.
    for kind, seq, names in refused:
        assert send(kind, seq, names).status_code == 201
        accepted.append((kind, seq, names))

    store = redis.Redis.from_url(durable_redis.url, decode_responses=True)
    assert wait_until(store.ping)
    newest = {}
    for kind, seq, names in accepted:
        for name in names:
            newest[(kind, name)] = max(newest.get((kind, name), 0), seq)
    for (kind, name), seq in newest.items():
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
