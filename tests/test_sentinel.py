"""Both services under load through a Sentinel failover (asked for, then a killed primary): they follow the new primary.

A real primary, a real replica and three real Sentinels; the services run under gunicorn in Sentinel
mode. While the primary changes, callers see only 201 and 503, /readyz answers 503 until a writable
primary is known, ingest is back within 15 s of the new primary, no accepted payload is lost and no
deployment is triggered twice in one window.
"""

import collections
import itertools
import random
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from cost_service import create_app as create_cost_app
from devtools.harness import RedisSentinelSet, both_services, make_certificates, needs_tls, wait_until
from tests.conftest import COST_TOKEN, FORECAST_TOKEN, auth
from tests.test_redis_restart import BASE, payload

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
    env = {
        # Sentinel mode: the host and port of REDIS_URL are not used, the Sentinels name the primary.
        "REDIS_URL": "redis://sentinel-primary/0",
        "REDIS_SENTINELS": sentinels.sentinels_setting,
        "REDIS_SENTINEL_MASTER": MASTER,
        "REDIS_TIMEOUT_SECONDS": "1",
        "AGENT_WEBHOOK_URL": receiver.url,
        "AGENT_WEBHOOK_BUDGET_SECONDS": "1",
        "COST_ENGINE_TOKEN": COST_TOKEN,
        "FORECAST_TOKEN": FORECAST_TOKEN,
        "LOG_LEVEL": "WARNING",
    }
    with both_services(env, tmp_path) as running:
        yield running


class Load:
    """Six threads sending both kinds of payload, numbered in send order, until stopped; and a /readyz poller."""

    def __init__(self, services):
        self.services = services
        self.counter = itertools.count(1)
        self.lock = threading.Lock()
        self.results = []  # (monotonic time answered, kind, seq, names, status)
        self.readiness = []  # (monotonic time, status)
        self.broken = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._send_loop, args=(i,)) for i in range(6)]
        self.threads.append(threading.Thread(target=self._ready_loop))

    def send(self, kind, seq, names):
        path, token = ("/metrics/cost", COST_TOKEN) if kind == "cost" else ("/metrics/forecast", FORECAST_TOKEN)
        return requests.post(
            self.services[kind].url + path,
            json=payload(kind, seq, names),
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def _send_loop(self, seed):
        rng = random.Random(seed)
        while not self.stop_event.is_set():
            kind, names = rng.choice(["cost", "forecast"]), rng.sample(DEPLOYMENTS, rng.randint(1, 5))
            with self.lock:
                seq = next(self.counter)
            # A deployment of its own in every payload, so that no later payload can hide its loss.
            names.append(f"marker-{seq}")
            try:
                response = self.send(kind, seq, names)
            except requests.RequestException as exc:
                self.broken.append(repr(exc))
                continue
            with self.lock:
                self.results.append((time.monotonic(), kind, seq, names, response.status_code))
            if response.status_code == 503:
                assert response.headers["Retry-After"] and response.json()["error"]["code"] == "REDIS_UNAVAILABLE"
                time.sleep(0.05)

    def _ready_loop(self):
        while not self.stop_event.is_set():
            status = requests.get(self.services["cost"].url + "/readyz", timeout=10).status_code
            self.readiness.append((time.monotonic(), status))
            time.sleep(0.05)

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def first_201_after(self, moment):
        return min((t for t, *_, status in self.results if status == 201 and t > moment), default=None)


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
    assert load.broken == []
    statuses = collections.Counter(status for *_, status in load.results)
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[201] and statuses[503], statuses
    sent = collections.defaultdict(set)
    newest_accepted = {}
    for _, kind, seq, names, status in load.results:
        for name in names:
            sent[(kind, name)].add(seq)
            if status == 201:
                newest_accepted[(kind, name)] = max(newest_accepted.get((kind, name), 0), seq)
    field = {"cost": "cost_timestamp", "forecast": "forecast_timestamp"}
    lost = [
        seq
        for _, kind, seq, _, status in load.results
        if status == 201 and not store.exists(f"app:default:marker-{seq}")
    ]
    assert lost == [], f"{len(lost)} accepted payloads are not on the new primary"
    for (kind, name), seq in newest_accepted.items():
        stored = int(store.hget(f"app:default:{name}", field[kind])) - BASE
        # A 503 may have stored part of its payload before it failed, so a refused payload may be newer.
        assert stored >= seq and stored in sent[(kind, name)], (kind, name, seq, stored)
    # The callers resend what was refused (as on any 503): then every deployment holds its newest payload.
    refused = [(kind, seq, names) for _, kind, seq, names, status in load.results if status == 503]
    for kind, seq, names in refused:
        assert load.send(kind, seq, names).status_code == 201
    for (kind, name), seqs in sent.items():
        assert int(store.hget(f"app:default:{name}", field[kind])) - BASE == max(seqs)


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
    load = Load(services).start()
    time.sleep(1.5)
    caused_at = time.monotonic()
    cause()
    new_port, known_at = new_primary_after(sentinels, old_port)
    back_at = wait_until(lambda: load.first_201_after(known_at), timeout=20, interval=0.05)
    time.sleep(1.0)
    load.stop()

    assert back_at is not None and back_at - known_at < 15, "ingest not back within 15 s of the new primary"
    assert followed_the_announcement(services, old_port, new_port)
    during = [status for moment, status in load.readiness if caused_at < moment < known_at]
    assert 503 in during, "/readyz never said 503 while there was no primary to write to"
    assert load.readiness[-1][1] == 200
    check_nothing_accepted_was_lost(load, redis.Redis(port=new_port, socket_timeout=2))
    check_one_trigger_per_window(receiver)
    return caused_at, known_at, back_at


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
    config = {
        "REDIS_URL": "redis://sentinel-primary/0",
        "REDIS_PASSWORD_FILE": str(password_file),
        "REDIS_SENTINELS": sentinels_with_passwords.sentinels_setting,
        "REDIS_SENTINEL_MASTER": MASTER,
        "REDIS_SENTINEL_PASSWORD": "sentinel-pw-0123",
        "REDIS_TIMEOUT_SECONDS": "1",
        "AGENT_WEBHOOK_URL": receiver.url,
        "COST_ENGINE_TOKEN": COST_TOKEN,
    }
    client = create_cost_app(config).test_client()
    assert client.get("/readyz").status_code == 200
    response = client.post("/metrics/cost", json=cost_payload, headers=auth(COST_TOKEN))
    assert response.status_code == 201 and response.json["triggered"] == ["adservice"]
    assert sentinels_with_passwords.primary.client().hget("app:default:adservice", "req_cpu") == b"2.0"
    # A wrong Sentinel password: no primary can be known, so nothing is ready.
    wrong = create_cost_app({**config, "REDIS_SENTINEL_PASSWORD": "not-the-password"}).test_client()
    assert wrong.get("/readyz").status_code == 503
    assert wrong.post("/metrics/cost", json=cost_payload, headers=auth(COST_TOKEN)).status_code == 503


@needs_tls()
def test_sentinels_and_data_nodes_over_tls(tmp_path, receiver, cost_payload):
    certificates = make_certificates(tmp_path / "pki")
    servers = RedisSentinelSet(tmp_path / "sentinel", master_name=MASTER, tls=certificates).start()
    try:
        config = {
            "REDIS_URL": f"rediss://sentinel-primary/0?ssl_ca_certs={certificates['ca']}",
            "REDIS_SENTINELS": servers.sentinels_setting,
            "REDIS_SENTINEL_MASTER": MASTER,
            "REDIS_TIMEOUT_SECONDS": "1",
            "AGENT_WEBHOOK_URL": receiver.url,
            "COST_ENGINE_TOKEN": COST_TOKEN,
        }
        client = create_cost_app(config).test_client()
        assert client.get("/readyz").status_code == 200
        assert client.post("/metrics/cost", json=cost_payload, headers=auth(COST_TOKEN)).status_code == 201
        # The failover events reach the service over TLS too: it follows the new primary.
        old_port = servers.primary.data_port
        servers.sentinel().sentinel_failover(MASTER)
        new_port, _ = new_primary_after(servers, old_port)
        later = {**cost_payload, "timestamp": "2024-01-01T13:00:00Z"}

        def accepted():
            return client.post("/metrics/cost", json=later, headers=auth(COST_TOKEN)).status_code == 201

        assert wait_until(accepted, timeout=15, interval=0.1)
        stored = servers.server_on(new_port).client().hget("app:default:adservice", "cost_timestamp")
        assert stored == b"1704114000"
        # Without the CA, neither the Sentinels nor the servers can be verified: nothing is ready.
        untrusting = create_cost_app({**config, "REDIS_URL": "rediss://sentinel-primary/0"}).test_client()
        assert untrusting.get("/readyz").status_code == 503
    finally:
        servers.stop()
