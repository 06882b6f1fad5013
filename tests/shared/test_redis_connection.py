from shared.runtime.settings import DEFAULTS, parse_settings
from shared.store.connection import connect_redis
from shared.store.sentinel import PrimaryCheckedSSLConnection


def settings(**overrides):
    base = {**DEFAULTS, "AGENT_WEBHOOK_URL": "http://agent/hook", "COST_ENGINE_TOKEN": "t" * 20}
    return parse_settings({**base, **overrides}, "COST_ENGINE_TOKEN")


def test_redis_url_options_apply_in_sentinel_mode(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("read at the first connection\n")
    client = connect_redis(
        settings(
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
    assert pool.connection_class is PrimaryCheckedSSLConnection and kwargs["ssl_ca_certs"] == str(ca)
    # The Sentinels: their own password, TLS with the same CA, never the data nodes' password.
    for sentinel in pool.sentinel_manager.sentinels:
        sentinel_kwargs = sentinel.connection_pool.connection_kwargs
        assert sentinel_kwargs["password"] == "sentinel-pw" and sentinel_kwargs["ssl_ca_certs"] == str(ca)
        assert sentinel.connection_pool.connection_class.__name__ == "SSLConnection"
