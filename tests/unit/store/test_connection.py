"""connect_redis: REDIS_URL's options in Sentinel mode, and a Sentinel-named server that is not the primary."""

import pytest
from redis import exceptions as redis_errors
from redis.sentinel import SentinelManagedSSLConnection

from devtools.harness import RedisServer
from shared.store.connection import MINIMAL_ACL_RULE, connect_redis, unavailable_code
from shared.store.repository import StateRepository
from shared.store.settings import RedisMode


def test_redis_url_options_apply_in_sentinel_mode(store_settings, tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("read at the first connection\n")
    client = connect_redis(
        store_settings(
            REDIS_URL=f"rediss://svc@unused:1/3?socket_timeout=0.7&client_name=agg&ssl_ca_certs={ca}",
            REDIS_PASSWORD="data-pw",
            REDIS_SENTINELS="127.0.0.1:1,127.0.0.1:2",
            REDIS_SENTINEL_MASTER="m",
            REDIS_SENTINEL_PASSWORD="sentinel-pw",
        )
    )
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["db"]) == (0.7, 2.0, 3)
    assert (kwargs["username"], kwargs["password"], kwargs["client_name"]) == ("svc", "data-pw", "agg")
    assert pool.connection_class is SentinelManagedSSLConnection and kwargs["ssl_ca_certs"] == str(ca)
    # The Sentinels: their own password, TLS with the same CA, never the data nodes' password.
    for sentinel in pool.sentinel_manager.sentinels:
        sentinel_kwargs = sentinel.connection_pool.connection_kwargs
        assert sentinel_kwargs["password"] == "sentinel-pw" and sentinel_kwargs["ssl_ca_certs"] == str(ca)
        assert sentinel.connection_pool.connection_class.__name__ == "SSLConnection"


@pytest.fixture
def primary_and_replica(tmp_path):
    """A throwaway primary and a replica of it."""
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    yield primary, replica
    replica.stop()
    primary.stop()


def test_a_write_to_a_replica_the_sentinels_name_is_refused_as_unavailable(
    store_settings, primary_and_replica, monkeypatch
):
    """The case of a stale Sentinel answer: the write is a 503 to retry, and the client asks again next time."""
    primary, replica = primary_and_replica
    client = connect_redis(
        store_settings(REDIS_URL="redis://unused/0", REDIS_SENTINELS="127.0.0.1:1", REDIS_SENTINEL_MASTER="m")
    )
    sentinels = client.connection_pool.sentinel_manager
    named = [("127.0.0.1", replica.port)]
    # The Sentinels' answer, stated by the test (NewestEpochSentinel has tests of its own); no event listener.
    monkeypatch.setattr(sentinels, "sentinels", [])
    monkeypatch.setattr(sentinels, "discover_master", lambda service_name: named[0])

    with pytest.raises(redis_errors.ConnectionError) as refused:
        client.set("app:default:adservice", "1")
    assert unavailable_code(refused.value) == "REDIS_UNAVAILABLE"
    assert replica.client().get("app:default:adservice") is None

    named[0] = ("127.0.0.1", primary.port)
    assert client.set("app:default:adservice", "1")
    assert primary.client().get("app:default:adservice") == b"1"
    client.close()


def test_sentinel_mode_needs_nothing_beyond_the_minimal_acl_rule(store_settings, primary_and_replica, monkeypatch):
    primary, _ = primary_and_replica
    admin = primary.client()
    admin.execute_command(
        "ACL", "SETUSER", "aggregator", "reset", "on", ">acl-pw-0123456789", *MINIMAL_ACL_RULE.split()
    )
    client = connect_redis(
        store_settings(
            REDIS_URL="redis://aggregator:acl-pw-0123456789@unused/0",
            REDIS_SENTINELS="127.0.0.1:1",
            REDIS_SENTINEL_MASTER="m",
        )
    )
    sentinels = client.connection_pool.sentinel_manager
    monkeypatch.setattr(sentinels, "sentinels", [])
    monkeypatch.setattr(sentinels, "discover_master", lambda service_name: ("127.0.0.1", primary.port))
    # /readyz: a write-flagged script
    StateRepository(client, cooldown_seconds=60, mode=RedisMode.SENTINEL).check_ready()
    assert client.set("app:default:adservice", "1") and client.ping()
    # Not one command the Sentinel-mode client sent on connecting or after was refused.
    assert admin.execute_command("ACL", "LOG") == []
    client.close()
    admin.close()
