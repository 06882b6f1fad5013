"""Claims that outlive their request free themselves within the claim lease, and a stalled Redis costs
a request one deadline, not one per step: caused for real, under gunicorn, with several callers."""

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.agent_receiver import AgentReceiver
from devtools.harness import GunicornService, LoopbackServer, RedisServer, service_env, wait_until
from shared.store.repository import CLAIM, claim_lease_seconds
from shared.web.services import COST
from tests.conftest import COST_TOKEN

# What an EVALSHA of the claim script carries: the SHA1 of its text, as redis-py's Script computes it.
CLAIM_SHA = hashlib.sha1(CLAIM.encode()).hexdigest().encode()

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

REDIS_TIMEOUT = 1.0
BUDGET = 1.0
LEASE = claim_lease_seconds(REDIS_TIMEOUT, BUDGET)
# What one stalled call may cost a request: the timeout, its one retry, a backoff, a second for the rest.
STALL_ANSWER_LIMIT = 2 * REDIS_TIMEOUT + 1
PAUSE_SECONDS = 8
HEADERS = {"Authorization": f"Bearer {COST_TOKEN}"}


def wasteful(seq, size=5, minute=0):
    """A cost payload of deployments of its own (p<seq>-d<i>), every one wasting 95 % of its CPU."""
    return {
        "source": "cost-engine",
        "timestamp": f"2024-01-01T12:{minute:02d}:00Z",
        "namespace": "default",
        "cluster_totals": {"vm_count": 3, "current_hourly_cost_gbp": 1.25},
        "deployments": [
            {
                "name": f"p{seq}-d{i}",
                "current_requests": {"cpu_cores": 2.0, "memory_mb": 1024},
                "current_usage": {"cpu_cores": 0.1, "memory_mb": 100},
            }
            for i in range(size)
        ],
    }


def names_of(payload):
    return [row["name"] for row in payload["deployments"]]


def lease_env(redis_url, agent_url, **extra):
    """The settings LEASE was computed from (REDIS_TIMEOUT, BUDGET), then `extra`."""
    lease = {"REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT), "AGENT_WEBHOOK_BUDGET_SECONDS": str(BUDGET)}
    return service_env(redis_url, agent_url, LOG_LEVEL="CRITICAL", COOLDOWN_SECONDS="1800", **{**lease, **extra})


def post(url, payload):
    """POST a cost payload; (status, seconds it took)."""
    started = time.monotonic()
    response = requests.post(f"{url}{COST.path}", json=payload, headers=HEADERS, timeout=30)
    return response, time.monotonic() - started


def trigger_until_sent(url, receiver, payload, deadline):
    """Send `payload` again until every one of its deployments has reached the agent; the time it took."""
    started = time.monotonic()
    while True:
        delivered = {name for name, _ in receiver.triggered()}
        if set(names_of(payload)) <= delivered:
            return time.monotonic() - started
        assert time.monotonic() < deadline, f"{sorted(set(names_of(payload)) - delivered)} still held"
        response, _ = post(url, payload)
        assert response.status_code == 201, response.text
        # A caller's next sample comes later; this one asks again as soon as a claim could have freed.
        if not response.json()["triggered"]:
            time.sleep(0.2)


def answers(server):
    """True when the server answers a PING within half a second (no retries)."""
    client = server.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        return client.ping()
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture
def debug_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", extra=("--enable-debug-command", "yes")).start()
    yield server
    server.stop()


@pytest.mark.parametrize("stall", ["debug_sleep", "client_pause"])
def test_redis_stalled_mid_flight_costs_one_deadline_and_silences_no_deployment(stall, debug_redis, receiver, tmp_path):
    service = GunicornService(COST.app, lease_env(debug_redis.url, receiver.url)).start(tmp_path / "cost.log")
    admin = redis.Redis(port=debug_redis.port, socket_timeout=PAUSE_SECONDS + 10)
    outcomes, lock, done = [], threading.Lock(), threading.Event()
    sequence = iter(range(10_000))

    def send():
        with requests.Session() as session:
            while not done.is_set():
                with lock:
                    seq = next(sequence)
                payload = wasteful(seq)
                started = time.monotonic()
                response = session.post(f"{service.url}{COST.path}", json=payload, headers=HEADERS, timeout=30)
                with lock:
                    outcomes.append((seq, response.status_code, time.monotonic() - started, response.headers))

    try:
        senders = [threading.Thread(target=send) for _ in range(4)]
        for sender in senders:
            sender.start()
        stall_ends = []
        for _ in range(2):  # twice: more chances for a claim's reply to be the one the stall eats
            assert wait_until(lambda: len(outcomes) >= 20, timeout=30)
            if stall == "debug_sleep":
                threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", PAUSE_SECONDS)).start()
            else:
                admin.execute_command("CLIENT", "PAUSE", PAUSE_SECONDS * 1000, "ALL")
            # Redis stops answering, then answers again; the senders keep going through it.
            assert wait_until(lambda: not answers(debug_redis), timeout=5)
            assert wait_until(lambda: answers(debug_redis), timeout=PAUSE_SECONDS + 5)
            stall_ends.append(time.monotonic())
            seen = len(outcomes)
            assert wait_until(lambda seen=seen: len(outcomes) >= seen + 8, timeout=30)
        done.set()
        for sender in senders:
            sender.join(timeout=60)

        statuses = {status for _, status, _, _ in outcomes}
        refused = [(seq, seconds) for seq, status, seconds, _ in outcomes if status == 503]
        assert statuses == {201, 503}, statuses
        # Every 503 came within one stalled call's time (measured here, so queueing is counted too).
        assert max(seconds for _, seconds in refused) <= STALL_ANSWER_LIMIT, sorted(s for _, s in refused)[-5:]
        assert all(headers.get("Retry-After") for _, status, _, headers in outcomes if status == 503)

        # The callers send each refused payload once more, as Retry-After asks.
        for seq, _ in refused:
            response, _ = post(service.url, wasteful(seq))
            assert response.status_code == 201, response.text
        # Then every deployment reaches the agent, and none is held longer than the claim lease
        # after Redis answered again: a claim whose reply the stall ate frees itself.
        deadline = stall_ends[-1] + LEASE + 5
        for seq in sorted({seq for seq, _, _, _ in outcomes}):
            trigger_until_sent(service.url, receiver, wasteful(seq), deadline)
        delivered = [name for name, _ in receiver.triggered()]
        expected = {name for seq, _, _, _ in outcomes for name in names_of(wasteful(seq))}
        assert set(delivered) == expected
    finally:
        done.set()
        service.stop()
        admin.close()


class ClaimReplySwallower(LoopbackServer):
    """A TCP proxy in front of Redis that, while `swallowing` is set, forwards the claim script to
    Redis (which runs it) and drops Redis's reply: the client times out, as when a stall eats it."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.swallowing = threading.Event()
        self.swallowed = 0
        super().__init__()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self, conn):
        import socket

        upstream = socket.create_connection(("127.0.0.1", self.redis_port))
        eaten = threading.Event()

        def to_client():
            while True:
                try:
                    data = upstream.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if not eaten.is_set():
                    try:
                        conn.sendall(data)
                    except OSError:
                        break
            conn.close()

        threading.Thread(target=to_client, daemon=True).start()
        with conn, upstream:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if self.swallowing.is_set() and CLAIM_SHA in data:
                    eaten.set()  # this link never answers again: its client gives up on it
                    self.swallowed += 1
                upstream.sendall(data)


def test_a_claim_whose_reply_is_lost_frees_itself_within_the_lease(tmp_path, receiver):
    server = RedisServer(tmp_path / "redis").start()
    proxy = ClaimReplySwallower(server.port).start()
    service = GunicornService(COST.app, lease_env(proxy.url, receiver.url), workers=1).start(tmp_path / "cost.log")
    store = server.client()
    try:
        assert post(service.url, wasteful(0))[0].json()["triggered"] == names_of(wasteful(0))  # scripts loaded
        payload = wasteful(1)
        proxy.swallowing.set()
        response, seconds = post(service.url, payload)
        proxy.swallowing.clear()
        assert response.status_code == 503 and seconds <= STALL_ANSWER_LIMIT
        assert proxy.swallowed == 2  # the call and its one retry: both ran in Redis, neither answered
        # Redis holds the claims its lost replies took, but only for the lease.
        assert all(0 < store.pttl(f"trigger:default:{name}") <= LEASE * 1000 for name in names_of(payload))
        response, _ = post(service.url, payload)
        assert response.json()["cooldown"] == names_of(payload)  # the resend: still held, for now
        took = trigger_until_sent(service.url, receiver, payload, time.monotonic() + LEASE + 5)
        assert took <= LEASE + 1
        metrics = requests.get(f"{service.url}/metrics", timeout=5).text
        assert 'aggregator_triggers_reclaimed_total{service="cost_service"} 5.0' in metrics
    finally:
        service.stop()
        proxy.stop()
        server.stop()


def test_a_worker_killed_mid_delivery_leaves_no_deployment_silent(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    agent = AgentReceiver(delay=60).start()  # holds every call until the test lets later ones through
    budget = 5.0  # long enough to kill the worker while it waits for the agent
    env = lease_env(server.url, agent.url, AGENT_WEBHOOK_BUDGET_SECONDS=str(budget))
    service = GunicornService(COST.app, env, workers=1).start(tmp_path / "cost.log")
    lease = claim_lease_seconds(REDIS_TIMEOUT, budget)
    payload = wasteful(7)

    def doomed_request():
        with pytest.raises(requests.ConnectionError):  # its worker dies under it
            post(service.url, payload)

    try:
        threading.Thread(target=doomed_request, daemon=True).start()
        assert agent.arrived.wait(timeout=10)
        [worker] = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children").read_text().split()
        os.kill(int(worker), signal.SIGKILL)
        killed_at = time.monotonic()
        agent.delay = 0
        # gunicorn starts a new worker; the dead one's claims are still held, for the lease only.
        assert wait_until(lambda: requests.get(f"{service.url}/healthz", timeout=1).ok, timeout=20)
        response, _ = post(service.url, payload)
        assert response.json()["cooldown"] == names_of(payload)
        trigger_until_sent(service.url, agent, payload, killed_at + lease + 5)
        took = time.monotonic() - killed_at
        assert took <= lease + 1, took
        # The agent may have taken the first message before the worker died: the second carries the same ids.
        first = {item["deployment"]: item["id"] for item in agent.arrivals[0]["triggers"]}
        again = {item["deployment"]: item["id"] for item in agent.messages[-1]["triggers"]}
        assert again == first
        metrics = requests.get(f"{service.url}/metrics", timeout=5).text
        assert 'aggregator_triggers_reclaimed_total{service="cost_service"} 5.0' in metrics
    finally:
        service.stop()
        agent.stop()
        server.stop()
