"""Issue 9: Redis refusing work (read-only, no permission, master down, busy, loading) is a 503 naming why,
on ingest and on /readyz alike, and writes nothing."""

import threading

import pytest
import redis
import requests

from cost_service import create_app as create_cost_app
from devtools.harness import GunicornService, RedisClusterServers, RedisServer, RefusingRedis, service_env, wait_until
from shared.store.repository import StateRepository
from shared.store.settings import RedisMode
from shared.web.services import COST, service_of
from tests.conftest import COST_TOKEN


def post(client, payload, headers):
    return client.post(COST.path, json=payload, headers=headers)


def assert_refused(client, payload, headers, code, ready_code=None):
    """Ingest and /readyz both answer 503 with Retry-After and the code; /healthz does not care."""
    ready_code = ready_code or code
    response = post(client, payload, headers)
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["code"] == code
    ready = client.get("/readyz")
    assert ready.status_code == 503
    error = ready.get_json()["error"]
    assert error["code"] == ready_code
    assert error["details"] == {"status": "not_ready", "reason": ready_code.lower()}
    assert ready.headers["Retry-After"] == "5"
    assert client.get("/healthz").status_code == 200


def app_on(base_config, url):
    return create_cost_app({**base_config, "REDIS_URL": url, "REDIS_TIMEOUT_SECONDS": "1"}).test_client()


@pytest.fixture
def primary(tmp_path):
    server = RedisServer(tmp_path / "primary").start()
    yield server
    server.stop()


def test_a_read_only_replica_is_not_ready(base_config, primary, tmp_path, cost_payload, cost_headers):
    replica = RedisServer(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        assert wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up")
        assert_refused(app_on(base_config, replica.url), cost_payload, cost_headers, "REDIS_READ_ONLY")
    finally:
        replica.stop()
    assert primary.client().dbsize() == 0


def test_a_user_without_scripting_is_not_ready_and_refuses_ingest(base_config, primary, cost_payload, cost_headers):
    primary.client().acl_setuser(
        "ingest", enabled=True, passwords=["+ingest-password-0123"], keys=["~*"], commands=["+@all", "-@scripting"]
    )
    url = f"redis://ingest:ingest-password-0123@127.0.0.1:{primary.port}/0"
    assert_refused(app_on(base_config, url), cost_payload, cost_headers, "REDIS_NO_PERMISSION")
    assert primary.client().dbsize() == 0


def test_a_replica_cut_from_its_master_is_not_ready(base_config, primary, tmp_path, cost_payload, cost_headers):
    extra = ("--replicaof", "127.0.0.1", str(primary.port), "--replica-serve-stale-data", "no")
    replica = RedisServer(tmp_path / "replica", extra=extra).start()
    try:
        assert wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up")
        # Its master dies and it may not serve stale data: what a replica answers after a failover went wrong.
        primary.kill()
        assert wait_until(lambda: "MASTERDOWN" in _ping_error(replica) or "down" in _ping_error(replica))
        # Ingest's scripts and readiness's probe are writes, which a replica refuses as read-only
        # before it looks at its master.
        client = app_on(base_config, replica.url)
        assert_refused(client, cost_payload, cost_headers, "REDIS_READ_ONLY")
    finally:
        replica.stop()


BUSY_SCRIPT = """
local start = redis.call('TIME')
local function elapsed()
  local now = redis.call('TIME')
  return (now[1] - start[1]) * 1000000 + (now[2] - start[2])
end
while elapsed() < tonumber(ARGV[1]) do end
return 1
"""


def test_redis_busy_running_a_script_is_not_ready(base_config, tmp_path, cost_payload, cost_headers):
    server = RedisServer(tmp_path / "busy", extra=("--busy-reply-threshold", "50")).start()
    busy = threading.Thread(target=lambda: server.client(socket_timeout=10).eval(BUSY_SCRIPT, 0, 2_000_000))
    try:
        client = app_on(base_config, server.url)
        busy.start()
        assert wait_until(lambda: "BUSY" in _ping_error(server), timeout=2)
        assert_refused(client, cost_payload, cost_headers, "REDIS_BUSY")
        busy.join(timeout=10)
        # Once the script is done, the same payload goes through: the 503 was a "retry later".
        assert post(client, cost_payload, cost_headers).status_code == 201
        assert client.get("/readyz").status_code == 200
    finally:
        busy.join(timeout=10)
        server.stop()


def _ping_error(server):
    try:
        server.client().ping()
    except redis.RedisError as exc:
        return str(exc)
    return ""


def test_redis_loading_its_data_is_not_ready(base_config, cost_payload, cost_headers):
    # A real server says LOADING only while it loads its data set, too briefly to aim at; this
    # stand-in says it on a real socket for as long as the test needs.
    loading = RefusingRedis("LOADING Redis is loading the dataset in memory").start()
    try:
        assert_refused(app_on(base_config, loading.url), cost_payload, cost_headers, "REDIS_LOADING")
    finally:
        loading.stop()


def test_a_server_whose_master_is_down_is_not_ready(base_config, cost_payload, cost_headers):
    # What a replica answers to a read while its master is away (a real one refuses our writes as
    # read-only first, above), and what some proxies answer: a stand-in that says only that.
    down = RefusingRedis("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.").start()
    try:
        assert_refused(app_on(base_config, down.url), cost_payload, cost_headers, "REDIS_MASTER_DOWN")
    finally:
        down.stop()


OOM_PAYLOADS = 40
OOM_DEPLOYMENTS = 150


def wasteful_payload(seq):
    """A cost payload of deployments of its own, every one wasting 95 % of its CPU (so every one fires)."""
    rows = [
        {
            "name": f"p{seq}-d{i}",
            "current_requests": {"cpu_cores": 2.0, "memory_mb": 1024},
            "current_usage": {"cpu_cores": 0.1, "memory_mb": 100},
        }
        for i in range(OOM_DEPLOYMENTS)
    ]
    return {
        "source": "cost-engine",
        "timestamp": f"2024-01-01T12:{seq // 60:02d}:{seq % 60:02d}Z",
        "namespace": "default",
        "cluster_totals": {"vm_count": 3, "current_hourly_cost_gbp": 1.25},
        "deployments": rows,
    }


@pytest.mark.gunicorn
def test_redis_running_out_of_memory_loses_no_trigger(tmp_path, receiver):
    server = RedisServer(tmp_path / "oom", extra=("--maxmemory-policy", "noeviction")).start()
    env = service_env(server.url, receiver.url, LOG_LEVEL="CRITICAL")
    service = GunicornService(COST.app, env, workers=2).start(tmp_path / "cost.log")
    store = server.client()
    headers = {"Authorization": f"Bearer {COST_TOKEN}"}
    try:
        # Room for a fifth of what the payloads need (each leaves about 250 KB: state, history,
        # claims and episodes), so that memory runs out while they arrive.
        store.config_set("maxmemory", store.info("memory")["used_memory"] + 2 * 1024 * 1024)
        queue, outcomes = list(range(OOM_PAYLOADS)), []

        def send():
            with requests.Session() as session:
                while queue:
                    seq = queue.pop()
                    response = session.post(
                        f"{service.url}{COST.path}", json=wasteful_payload(seq), headers=headers, timeout=10
                    )
                    code = response.json()["error"]["code"] if response.status_code != 201 else None
                    outcomes.append((seq, response.status_code, code))

        senders = [threading.Thread(target=send) for _ in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=60)

        assert {(status, code) for _, status, code in outcomes} == {(201, None), (503, "REDIS_OUT_OF_MEMORY")}
        # No window is held without its trigger having reached the agent.
        delivered = [name for name, _ in receiver.triggered()]
        held = {key.decode().split(":")[2] for key in store.scan_iter("trigger:*")}
        assert held <= set(delivered)

        # Full up: readiness says so, with the reason. Well over the limit, not at its edge, where Redis
        # trimming a client buffer can bring it back under between our probe and the last refusal.
        store.config_set("maxmemory", store.info("memory")["used_memory"] // 2)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            store.set("filler", "x" * 10_000)
        ready = requests.get(f"{service.url}/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["error"]["details"] == {"status": "not_ready", "reason": "redis_out_of_memory"}

        # Memory back; the callers resend what was refused, some of it stored (and triggered) already.
        store.config_set("maxmemory", 0)
        assert requests.get(f"{service.url}/readyz", timeout=5).status_code == 200
        for seq in sorted(seq for seq, status, _ in outcomes if status == 503):
            response = requests.post(
                f"{service.url}{COST.path}", json=wasteful_payload(seq), headers=headers, timeout=10
            )
            assert response.status_code == 201
    finally:
        service.stop()
        server.stop()
    # Every deployment reached the agent, and none twice: the resends were harmless.
    delivered = sorted(name for name, _ in receiver.triggered())
    assert delivered == sorted(f"p{seq}-d{i}" for seq in range(OOM_PAYLOADS) for i in range(OOM_DEPLOYMENTS))


def test_claims_won_before_redis_ran_out_of_memory_are_released(tmp_path):
    server = RedisServer(tmp_path / "oom", extra=("--maxmemory-policy", "noeviction")).start()
    try:
        store = server.client()
        repository = StateRepository(store, cooldown_seconds=1800, mode=RedisMode.SINGLE)
        names = [f"deployment-{i}" for i in range(5000)]
        # Room for a few hundred of the 5000 claim keys: Redis takes the first SETs and refuses the rest.
        store.config_set("maxmemory", store.info("memory")["used_memory"] + 100 * 1024)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            repository.claim("default", names, {}, now=1_700_000_000)
        assert list(store.scan_iter("trigger:*")) == []
        # Once memory is back, every window can be claimed: none is held by the request that failed.
        store.config_set("maxmemory", 0)
        assert repository.claim("default", names, {}, now=1_700_000_001).claimed == names
    finally:
        server.stop()


def test_claims_are_released_when_the_request_dies_before_an_outcome(
    cost_app, redis_client, cost_payload, cost_headers
):
    aggregator = service_of(cost_app).aggregator

    def told_to_exit(message, request_id):
        raise SystemExit(1)  # what gunicorn's worker abort does to a request in flight

    aggregator.webhook.deliver = told_to_exit
    with pytest.raises(SystemExit):
        aggregator.ingest(service_of(cost_app).source, load(cost_app, cost_payload), "req-1")
    assert redis_client.keys("trigger:*") == []


def load(app, payload):
    return service_of(app).schema.load(payload)


def test_readiness_runs_its_write_probe_on_single_redis_and_cluster(base_config, store):
    url, cluster, _ = store
    config = {**base_config, "REDIS_URL": url, "REDIS_CLUSTER": "true" if cluster else "false"}
    assert create_cost_app(config).test_client().get("/readyz").get_json() == {"status": "ready"}


@pytest.mark.cluster
def test_a_cluster_that_lost_a_primary_is_not_ready(base_config, tmp_path):
    servers = RedisClusterServers(tmp_path / "cluster").start()
    try:
        config = {**base_config, "REDIS_URL": servers.url, "REDIS_CLUSTER": "true", "REDIS_TIMEOUT_SECONDS": "0.5"}
        client = create_cost_app(config).test_client()
        assert client.get("/readyz").status_code == 200
        servers.kill(servers.ports[-1])  # a primary holding a third of the slots, never the seed node
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["error"]["details"] == {"status": "not_ready", "reason": "redis_unavailable"}
    finally:
        servers.stop()
