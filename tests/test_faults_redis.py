"""Issue 9: Redis refusing work (read-only, no permission, master down, busy, loading) is a 503 naming why,
on ingest and on /readyz alike, and writes nothing."""

import threading

import pytest
import redis

from cost_service import create_app as create_cost_app
from tests.support import RedisServer, RefusingRedis, wait_until


def post(client, payload, headers):
    return client.post("/metrics/cost", json=payload, headers=headers)


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
        # Readiness runs a write, which a replica refuses as read-only before it looks at its master.
        client = app_on(base_config, replica.url)
        assert_refused(client, cost_payload, cost_headers, "REDIS_MASTER_DOWN", ready_code="REDIS_READ_ONLY")
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
