import pytest

from shared.runtime.settings import (
    DEFAULTS,
    STORE_SETTINGS,
    WEBHOOK_SETTINGS,
    ConfigError,
    parse_settings,
    parse_store_settings,
    parse_webhook_settings,
    read_environment,
)

TOKEN = "t" * 20


def settings(**overrides):
    return parse_settings(
        {**DEFAULTS, "AGENT_WEBHOOK_URL": "http://agent/hook", "COST_ENGINE_TOKEN": TOKEN, **overrides},
        "COST_ENGINE_TOKEN",
    )


def test_defaults_are_the_spec_values():
    s = settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.cooldown_seconds == 1800
    assert (s.thresholds.cpu_waste, s.thresholds.cpu_utilisation) == (0.5, 0.85)
    assert (s.thresholds.predicted_spike_ratio, s.thresholds.downscale_waste, s.thresholds.downscale_peak_ratio) == (
        0.9,
        0.4,
        0.6,
    )
    assert s.allowed_namespaces == {"default"}
    assert s.tokens == (TOKEN,)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"AGENT_WEBHOOK_URL": ""}, "AGENT_WEBHOOK_URL"),
        ({"AGENT_WEBHOOK_URL": "ftp://x"}, "AGENT_WEBHOOK_URL"),
        ({"COST_ENGINE_TOKEN": ""}, "COST_ENGINE_TOKEN"),
        ({"COST_ENGINE_TOKEN": "short"}, "COST_ENGINE_TOKEN"),
        ({"COOLDOWN_SECONDS": "0"}, "COOLDOWN_SECONDS"),
        ({"COOLDOWN_SECONDS": "soon"}, "COOLDOWN_SECONDS"),
        ({"CPU_WASTE_THRESHOLD": "1.5"}, "CPU_WASTE_THRESHOLD"),
        ({"PREDICTED_SPIKE_RATIO": "nan"}, "PREDICTED_SPIKE_RATIO"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"REDIS_TIMEOUT_SECONDS": "-1"}, "REDIS_TIMEOUT_SECONDS"),
        ({"ALLOWED_NAMESPACES": "Default"}, "ALLOWED_NAMESPACES"),
        ({"MAX_DEPLOYMENTS": "0"}, "MAX_DEPLOYMENTS"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
    ],
)
def test_bad_settings_name_the_variable(overrides, named):
    with pytest.raises(ConfigError, match=named):
        settings(**overrides)


def test_error_never_echoes_a_token():
    with pytest.raises(ConfigError) as info:
        settings(COST_ENGINE_TOKEN="secret-short")
    assert "secret-short" not in str(info.value)


def test_several_tokens_allow_rotation():
    assert settings(COST_ENGINE_TOKEN=f" {TOKEN} , {'n' * 20} ").tokens == (TOKEN, "n" * 20)


def test_token_from_a_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert settings(COST_ENGINE_TOKEN=None, COST_ENGINE_TOKEN_FILE=str(path)).tokens == (TOKEN,)
    with pytest.raises(ConfigError, match="COST_ENGINE_TOKEN_FILE"):
        settings(COST_ENGINE_TOKEN=None, COST_ENGINE_TOKEN_FILE=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="both set"):
        settings(COST_ENGINE_TOKEN_FILE=str(path))


def test_read_environment_takes_only_our_variables():
    env = {"REDIS_URL": "redis://r:6379/0", "HOME": "/root", "COOLDOWN_SECONDS": "60"}
    assert read_environment(env) == {"REDIS_URL": "redis://r:6379/0", "COOLDOWN_SECONDS": "60"}


SECRET = "whsec_Y29uZmlnLXRlc3Qtc2lnbmluZy1rZXk="


def test_issue_five_defaults():
    s = settings()
    assert s.webhook_budget == 5 and s.webhook_secret is None and s.recommendation_headroom == 0.15
    assert s.thresholds.memory_rules is False and s.thresholds.max_state_skew_seconds == 3600


def test_webhook_secret_from_variable_or_file(tmp_path):
    assert settings(AGENT_WEBHOOK_SECRET=SECRET).webhook_secret == SECRET
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert settings(AGENT_WEBHOOK_SECRET_FILE=str(path)).webhook_secret == SECRET


@pytest.mark.parametrize(
    "secret",
    ["plain-text-secret-value", "whsec_", "whsec_c2hvcnQ=", "whsec_!!!not base64!!!", f"{SECRET},{SECRET}"],
)
def test_malformed_webhook_secret_is_refused_without_echoing_it(secret):
    with pytest.raises(ConfigError, match="AGENT_WEBHOOK_SECRET") as info:
        settings(AGENT_WEBHOOK_SECRET=secret)
    if secret != "whsec_":  # the bare prefix is in the message's own wording
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"AGENT_WEBHOOK_BUDGET_SECONDS": "60"}, "AGENT_WEBHOOK_BUDGET_SECONDS"),
        ({"MEMORY_RULES": "maybe"}, "MEMORY_RULES"),
        ({"RECOMMENDATION_HEADROOM": "-0.1"}, "RECOMMENDATION_HEADROOM"),
        ({"MAX_STATE_SKEW_SECONDS": "inf"}, "MAX_STATE_SKEW_SECONDS"),
        ({"REDIS_CLUSTER": "cluster"}, "REDIS_CLUSTER"),
        ({"HISTORY_HALF_LIFE_HOURS": "0.5"}, "HISTORY_HALF_LIFE_HOURS"),
        ({"HISTORY_HALF_LIFE_HOURS": "a day"}, "HISTORY_HALF_LIFE_HOURS"),
        ({"CPU_MEMORY_PRICE_RATIO": "0"}, "CPU_MEMORY_PRICE_RATIO"),
        ({"CPU_MEMORY_PRICE_RATIO": "nan"}, "CPU_MEMORY_PRICE_RATIO"),
        # Waste at 1 could never fire: the message names the variable as the others do.
        ({"CPU_WASTE_THRESHOLD": "1"}, "CPU_WASTE_THRESHOLD must be below 1"),
        ({"SAFE_DOWNSCALE_WASTE_THRESHOLD": "1.0"}, "SAFE_DOWNSCALE_WASTE_THRESHOLD must be below 1"),
    ],
)
def test_more_bad_settings_name_the_variable(overrides, named):
    with pytest.raises(ConfigError, match=named):
        settings(**overrides)


def test_history_and_price_settings():
    assert (settings().history_half_life_hours, settings().cpu_memory_price_ratio) == (24, 7.46)
    custom = settings(HISTORY_HALF_LIFE_HOURS="12", CPU_MEMORY_PRICE_RATIO="4")
    assert (custom.history_half_life_hours, custom.cpu_memory_price_ratio) == (12, 4)


def test_memory_rules_flag():
    assert settings(MEMORY_RULES="true").thresholds.memory_rules is True


def test_cluster_seed_nodes():
    parsed = settings(REDIS_CLUSTER="true", REDIS_CLUSTER_NODES=" redis-1:6379, [::1]:7000 ,")
    assert parsed.redis_cluster_nodes == (("redis-1", 6379), ("::1", 7000))
    assert settings().redis_cluster_nodes == ()


@pytest.mark.parametrize(
    "overrides",
    [
        {"REDIS_CLUSTER": "true", "REDIS_CLUSTER_NODES": "redis-1"},
        {"REDIS_CLUSTER": "true", "REDIS_CLUSTER_NODES": "redis-1:0"},
        {"REDIS_CLUSTER": "true", "REDIS_CLUSTER_NODES": "redis-1:6379,:6379"},
        {"REDIS_CLUSTER": "true", "REDIS_CLUSTER_NODES": "redis-1:port"},
        {"REDIS_CLUSTER_NODES": "redis-1:6379"},  # seeds of a cluster, without the cluster
    ],
)
def test_bad_cluster_seed_nodes_are_refused_by_name(overrides):
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES"):
        settings(**overrides)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://:hunter2-secret@r:6379/0?ssl_ca_cert=/ca.crt", "unknown option 'ssl_ca_cert'"),
        ("redis://:hunter2-secret@r:6379/0?socket_timeout=abc", "socket_timeout must be a number of seconds"),
        ("redis://:hunter2-secret@r:6379/0?socket_timeout=0", "socket_timeout"),
        ("redis://:hunter2-secret@r:6379/0?max_connections=-1", "max_connections"),
        ("redis://:hunter2-secret@r:6379/notanumber", "database"),
        ("redis://:hunter2-secret@r:6379/-1", "database"),
        ("redis://:hunter2-secret@r:6379/0?db=x", "db must be a whole number"),
        ("redis://:hunter2-secret@r:port/0", "not a valid URL"),
        ("redis://:hunter2-secret@r:0/0", "port"),
        ("redis://:hunter2-secret@/0", "no host"),
        ("rediss://:hunter2-secret@r:6379/0?ssl_ca_certs=/no/such/ca.crt", "ssl_ca_certs must be an existing file"),
        ("rediss://:hunter2-secret@r:6379/0?ssl_certfile=/no/such.crt", "ssl_certfile"),
        ("rediss://:hunter2-secret@r:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://:hunter2-secret@r:6379/0?ssl_cert_reqs=none", "needs a rediss:// URL"),
        ("redis://:hunter2-secret@r:6379/0?protocol=4", "protocol"),
        ("redis://:hunter2-secret@r:6379/0?db=1&db=2", "repeats"),
        ("http://:hunter2-secret@r:6379/0", "must start with"),
    ],
)
def test_bad_redis_url_is_named_without_its_password(url, named):
    with pytest.raises(ConfigError, match="REDIS_URL") as info:
        settings(REDIS_URL=url)
    assert named in str(info.value)
    assert "hunter2" not in str(info.value)


def test_good_redis_urls_pass(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked here: redis-py reads it at the first connection\n")
    for url in (
        "redis://r:6379/3",
        "redis://user:pw@r/0?socket_timeout=0.5&socket_keepalive=true&health_check_interval=10&client_name=svc",
        f"rediss://r:6380/0?ssl_ca_certs={ca}&ssl_certfile={ca}&ssl_keyfile={ca}&ssl_cert_reqs=required",
        f"rediss://r:6380?ssl_ca_path={tmp_path}&ssl_check_hostname=false&protocol=3",
        "unix:///run/redis.sock?db=2",
    ):
        assert settings(REDIS_URL=url).redis_url == url


def test_redis_password_from_a_file(tmp_path):
    path = tmp_path / "redis-password"
    path.write_text("s3cret-redis-pw\n")
    assert settings(REDIS_PASSWORD_FILE=str(path)).redis_password == "s3cret-redis-pw"
    assert settings().redis_password is None
    with pytest.raises(ConfigError, match="REDIS_PASSWORD_FILE cannot be read"):
        settings(REDIS_PASSWORD_FILE=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="REDIS_URL has a password and REDIS_PASSWORD") as info:
        settings(REDIS_URL="redis://:other-pw@r:6379/0", REDIS_PASSWORD_FILE=str(path))
    assert "other-pw" not in str(info.value) and "s3cret" not in str(info.value)


def test_sentinel_settings(tmp_path):
    s = settings(REDIS_SENTINELS=" s1:26379, 10.0.0.7:26380 ,[::1]:5000", REDIS_SENTINEL_MASTER="mymaster")
    assert s.redis_sentinels == (("s1", 26379), ("10.0.0.7", 26380), ("::1", 5000))
    assert s.redis_sentinel_master == "mymaster" and s.redis_sentinel_password is None
    path = tmp_path / "sentinel-password"
    path.write_text("sentinel-pw\n")
    s = settings(REDIS_SENTINELS="s1:26379", REDIS_SENTINEL_MASTER="m", REDIS_SENTINEL_PASSWORD_FILE=str(path))
    assert s.redis_sentinel_password == "sentinel-pw"
    assert settings().redis_sentinels == () and settings().redis_sentinel_master is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"REDIS_SENTINELS": "s1:26379", "REDIS_SENTINEL_MASTER": "m", "REDIS_CLUSTER": "true"}, "REDIS_CLUSTER"),
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINEL_MASTER is required"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS is not"),
        ({"REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"REDIS_SENTINELS": "s1:26379,", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"REDIS_SENTINELS": "s1:99999", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        (
            {"REDIS_SENTINELS": "s1:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "unix:///r.sock"},
            "redis:// or rediss://",
        ),
    ],
)
def test_bad_sentinel_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        settings(**overrides)


class Recording(dict):
    """A config that records every variable read from it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def names_of(group):
    return {name for setting in group for name in (setting.name, f"{setting.name}_FILE")}


def test_the_operators_commands_read_only_their_groups():
    """shared/runtime/cli.py says failed-triggers reads STORE_SETTINGS, and redeliver WEBHOOK_SETTINGS too."""
    config = Recording({**DEFAULTS, "AGENT_WEBHOOK_URL": "http://agent/hook"})
    parse_store_settings(config)
    assert config.read and config.read <= names_of(STORE_SETTINGS), config.read - names_of(STORE_SETTINGS)
    config.read.clear()
    parse_webhook_settings(config)
    assert config.read and config.read <= names_of(WEBHOOK_SETTINGS), config.read - names_of(WEBHOOK_SETTINGS)
    # Every setting of a group is read: the groups are what the parsers take, no more.
    config.read.clear()
    parse_store_settings(config)
    parse_webhook_settings(config)
    assert {setting.name for setting in (*STORE_SETTINGS, *WEBHOOK_SETTINGS)} <= config.read
