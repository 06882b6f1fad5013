"""Fixtures: a real redis-server for the session, a real agent receiver, and both apps."""

import json
from pathlib import Path

import pytest
import redis

from cost_service import create_app as create_cost_app
from devtools.agent_receiver import AgentReceiver
from devtools.harness import (
    AGENT_TOKEN,
    COST_TOKEN,
    FORECAST_TOKEN,
    RedisClusterServers,
    RedisServer,
    SocketAgent,
    close_cluster_client,
    service_env,
)
from forecast_service import create_app as create_forecast_app
from shared.web.services import COST, FORECAST

# The tokens are the harness's (its gunicorn services and load use them too); the tests import them from here.
__all__ = ["AGENT_TOKEN", "COST_TOKEN", "FORECAST_TOKEN"]

FIXTURES = Path(__file__).parent / "fixtures"
# The price of adservice's recommendation for the seed cost payload, as issue 10 gives it (the
# item's cost without its "basis" sentence and "by_resource" split).
SEED_ADSERVICE_PRICE = {
    "price_per_cpu_core_hour_gbp": 0.290408,
    "price_per_memory_gib_hour_gbp": 0.038929,
    "current_gbp_per_hour": 0.736531,
    "recommended_gbp_per_hour": 0.155979,
    "delta_gbp_per_hour": -0.580551,
    "monthly_delta_gbp": -423.8,
}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of the test session's own, on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory):
    """A valkey-server of the test session's own (from `make valkey-server`), started on first use."""
    server = RedisServer(tmp_path_factory.mktemp("valkey"), binary="valkey-server").start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    """A client of the session's Redis, empty before and after the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.script_flush()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A three-node Redis Cluster of the session's own, started on first use."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture(
    params=[
        "single",
        pytest.param("cluster", marks=pytest.mark.cluster),
        pytest.param("valkey", marks=pytest.mark.valkey),
    ]
)
def store(request, redis_server):
    """A state store to run a test against three times: one redis-server, a Redis Cluster, one valkey-server.

    Yields (url, cluster flag, client); the store is empty before and after the test.
    """
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        client = redis.RedisCluster.from_url(url)
    else:
        url = (request.getfixturevalue("valkey_server") if request.param == "valkey" else redis_server).url
        client = redis.Redis.from_url(url)
    client.flushdb()
    client.script_flush()
    yield url, request.param == "cluster", client
    client.flushdb()
    if request.param == "cluster":
        close_cluster_client(client)
    else:
        client.close()


@pytest.fixture
def agent():
    """Start socket-level agent stand-ins for a test (agent(mode, ...)): drip, hang, redirect...; all stop after it."""
    agents = []

    def start(mode, **kwargs):
        agents.append(SocketAgent(mode, **kwargs).start())
        return agents[-1]

    yield start
    for started in agents:
        started.stop()


@pytest.fixture
def receiver():
    """A local agent webhook that records what it receives."""
    agent = AgentReceiver().start()
    yield agent
    agent.stop()


@pytest.fixture
def base_config(redis_server, redis_client, receiver):
    """Settings every test app starts from."""
    # A failing agent is retried until the budget runs out: 1 s keeps such tests short (the default is 5 s).
    return service_env(
        redis_server.url, receiver.url, AGENT_WEBHOOK_READ_TIMEOUT_SECONDS="2", AGENT_WEBHOOK_BUDGET_SECONDS="1"
    )


@pytest.fixture
def cost_app(base_config):
    """The cost service app against the test Redis and receiver."""
    return create_cost_app(base_config)


@pytest.fixture
def forecast_app(base_config):
    """The forecast service app against the test Redis and receiver."""
    return create_forecast_app(base_config)


@pytest.fixture
def cost_client(cost_app):
    """A test client of the cost service."""
    return cost_app.test_client()


@pytest.fixture
def forecast_client(forecast_app):
    """A test client of the forecast service."""
    return forecast_app.test_client()


@pytest.fixture
def cost_payload():
    """The spec's cost payload (adservice wastes 80 % of its CPU)."""
    return json.loads((FIXTURES / COST.seed).read_text())


@pytest.fixture
def forecast_payload():
    """The spec's forecast payload."""
    return json.loads((FIXTURES / FORECAST.seed).read_text())


def auth(token):
    """Headers for a JSON request with a bearer token."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def cost_headers():
    """The cost engine's auth header."""
    return auth(COST_TOKEN)


@pytest.fixture
def forecast_headers():
    """The forecaster's auth header."""
    return auth(FORECAST_TOKEN)
