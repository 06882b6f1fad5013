"""Settings for both services, read from the environment and validated once at start-up."""

import base64
import binascii
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from shared.core.episodes import COOLDOWN_SECONDS, REMINDER_SECONDS, EpisodePolicy
from shared.core.rules import Thresholds
from shared.core.schemas import DNS_LABEL
from shared.core.setting import Setting, declared_settings, parse_bool
from shared.delivery.settings import WebhookSettings
from shared.store.settings import StoreSettings

# The names below are a contract with the people who deploy us: docs/operations.md's configuration
# table and deploy/k8s/base/configmap.yaml are checked against them (tests/project/test_settings_declared.py).
# Bounds of numbers are inclusive; a comment says why a bound is where it is.

REDIS_URL = Setting(
    "REDIS_URL", "the state store: redis://, rediss:// or unix://, every part checked", "redis://localhost:6379/0"
)
REDIS_PASSWORD = Setting("REDIS_PASSWORD", "the data nodes' password, when not in REDIS_URL", secret=True)
REDIS_CLUSTER = Setting("REDIS_CLUSTER", "REDIS_URL names a node of a Redis Cluster", False, bool)
REDIS_CLUSTER_NODES = Setting("REDIS_CLUSTER_NODES", "more Cluster seed nodes, host:port,host:port", "")
REDIS_SENTINELS = Setting("REDIS_SENTINELS", "the Sentinels, host:port,host:port; selects Sentinel mode")
REDIS_SENTINEL_MASTER = Setting("REDIS_SENTINEL_MASTER", "the name the Sentinels monitor the primary under")
REDIS_SENTINEL_PASSWORD = Setting("REDIS_SENTINEL_PASSWORD", "the Sentinels' own password", secret=True)
REDIS_TIMEOUT_SECONDS = Setting("REDIS_TIMEOUT_SECONDS", "connect and socket timeout for Redis", 2, float, 0.1, 60)
ALLOWED_NAMESPACES = Setting("ALLOWED_NAMESPACES", "comma-separated namespaces the payloads may name", "default")
# What parse_store_settings reads: all the operator's failed-triggers command needs (shared/runtime/cli.py).
STORE_SETTINGS = (
    REDIS_URL,
    REDIS_PASSWORD,
    REDIS_CLUSTER,
    REDIS_CLUSTER_NODES,
    REDIS_SENTINELS,
    REDIS_SENTINEL_MASTER,
    REDIS_SENTINEL_PASSWORD,
    REDIS_TIMEOUT_SECONDS,
    COOLDOWN_SECONDS,
    ALLOWED_NAMESPACES,
)

AGENT_WEBHOOK_URL = Setting("AGENT_WEBHOOK_URL", "the http(s) URL the triggers are POSTed to")
AGENT_WEBHOOK_SECRET = Setting("AGENT_WEBHOOK_SECRET", "Standard Webhooks signing secret, whsec_...", secret=True)
AGENT_WEBHOOK_CONNECT_TIMEOUT_SECONDS = Setting(
    "AGENT_WEBHOOK_CONNECT_TIMEOUT_SECONDS", "connect timeout of one webhook attempt", 2, float, 0.1, 60
)
AGENT_WEBHOOK_READ_TIMEOUT_SECONDS = Setting(
    "AGENT_WEBHOOK_READ_TIMEOUT_SECONDS", "read timeout of one webhook attempt", 5, float, 0.1, 300
)
# Kept well under gunicorn's worker timeout (30 s by default): a worker killed mid-delivery could
# neither record nor release its claims.
AGENT_WEBHOOK_BUDGET_SECONDS = Setting(
    "AGENT_WEBHOOK_BUDGET_SECONDS", "the most one delivery may take, all attempts included", 5, float, 0.1, 25
)
# What parse_webhook_settings reads (with the store's, all the operator's redeliver command needs).
WEBHOOK_SETTINGS = (
    AGENT_WEBHOOK_URL,
    AGENT_WEBHOOK_SECRET,
    AGENT_WEBHOOK_CONNECT_TIMEOUT_SECONDS,
    AGENT_WEBHOOK_READ_TIMEOUT_SECONDS,
    AGENT_WEBHOOK_BUDGET_SECONDS,
)

# Declared with EpisodePolicy, which they configure; COOLDOWN_SECONDS is the store's too.
EPISODE_FIELDS = declared_settings(EpisodePolicy)
EPISODE_SETTINGS = (REMINDER_SECONDS, *(s for name, s in EPISODE_FIELDS.items() if name != "cooldown_seconds"))

# Declared on Thresholds' fields, next to the rules they configure.
THRESHOLD_SETTINGS = tuple(declared_settings(Thresholds).values())

RECOMMENDATION_HEADROOM = Setting(
    "RECOMMENDATION_HEADROOM", "safety margin added to the recommended requests", 0.15, float, 0, 10
)
# Under an hour, 5-minute samples would barely count before the next; past 30 days the 8-day
# history never shows the decay.
HISTORY_HALF_LIFE_HOURS = Setting(
    "HISTORY_HALF_LIFE_HOURS", "half-life of a CPU sample's weight in the usage history", 24, float, 1, 720
)
CPU_MEMORY_PRICE_RATIO = Setting(
    "CPU_MEMORY_PRICE_RATIO", "GiB-hours of memory that cost as much as one core-hour", 7.46, float, 0.01, 10_000
)
MAX_DEPLOYMENTS = Setting("MAX_DEPLOYMENTS", "most deployments in one payload", 5000, int, 1, 100_000)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL = Setting("LOG_LEVEL", f"the services' and gunicorn's log level: {', '.join(LOG_LEVELS)}", "INFO")
MAX_BODY_BYTES = Setting("MAX_BODY_BYTES", "largest request body", 4 * 1024 * 1024, int, 1024, 256 * 1024 * 1024)
COST_ENGINE_TOKEN = Setting("COST_ENGINE_TOKEN", "bearer token(s) the cost service accepts", secret=True)
FORECAST_TOKEN = Setting("FORECAST_TOKEN", "bearer token(s) the forecast service accepts", secret=True)
AGENT_TOKEN = Setting("AGENT_TOKEN", "bearer token(s) of the AI agent's read and decision paths", secret=True)
SERVICE_SETTINGS = (
    RECOMMENDATION_HEADROOM,
    HISTORY_HALF_LIFE_HOURS,
    CPU_MEMORY_PRICE_RATIO,
    MAX_DEPLOYMENTS,
    MAX_BODY_BYTES,
    LOG_LEVEL,
    COST_ENGINE_TOKEN,
    FORECAST_TOKEN,
    AGENT_TOKEN,
)

# Every variable the services read, each declared once.
SETTINGS = (*STORE_SETTINGS, *WEBHOOK_SETTINGS, *EPISODE_SETTINGS, *THRESHOLD_SETTINGS, *SERVICE_SETTINGS)
# The value of each setting that has one when unset.
DEFAULTS = {setting.name: setting.env_default for setting in SETTINGS if setting.env_default is not None}
# Every variable a service reads; a secret may instead come from NAME_FILE (a secret mount).
SETTING_NAMES = tuple(
    name for setting in SETTINGS for name in (setting.name, *([f"{setting.name}_FILE"] if setting.secret else []))
)


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""

    # A RuntimeError, because gunicorn prints those as one "Error: ..." line and exits 1.


@dataclass(frozen=True)
class Settings(StoreSettings, WebhookSettings):
    """Everything one service needs, parsed and checked: the store's and the webhook's settings, and the rest."""

    tokens: tuple[str, ...]
    # The AI agent's tokens for its read and decision paths; () when those paths are not served.
    agent_tokens: tuple[str, ...]
    episodes: EpisodePolicy
    thresholds: Thresholds
    recommendation_headroom: float
    history_half_life_hours: float
    cpu_memory_price_ratio: float
    max_deployments: int
    max_body_bytes: int
    log_level: str


def _value(config: Mapping[str, Any], setting: Setting) -> Any:
    """A number or flag from the config, parsed and checked against its declaration."""
    try:
        return setting.parse(config.get(setting.name))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _required(config, name):
    value = str(config.get(name) or "").strip()
    if not value:
        raise ConfigError(f"{name} is required")
    return value


def _secret(config, name):
    """NAME, or the content of the file named by NAME_FILE (a Kubernetes secret mount); '' when neither."""
    raw = config.get(name)
    path = config.get(f"{name}_FILE")
    if raw and path:
        raise ConfigError(f"{name} and {name}_FILE are both set; set one")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                raw = handle.read()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE cannot be read: {exc.strerror}") from None
    return str(raw or "").strip()


def _tokens(config, name):
    """The accepted bearer tokens; several comma-separated ones allow rotation without downtime."""
    tokens = tuple(part.strip() for part in _secret(config, name).split(",") if part.strip())
    if not tokens:
        raise ConfigError(f"{name} is required (or {name}_FILE)")
    # Short tokens are guessable; the message must not echo the token itself.
    if any(len(token) < 16 for token in tokens):
        raise ConfigError(f"{name} must hold tokens of at least 16 characters")
    return tokens


def _agent_tokens(config, caller_tokens):
    """AGENT_TOKEN(_FILE): optional; never one of the ingest callers' tokens (each path has its own caller)."""
    if not _secret(config, "AGENT_TOKEN"):
        return ()
    tokens = _tokens(config, "AGENT_TOKEN")
    if set(tokens) & set(caller_tokens):
        raise ConfigError("AGENT_TOKEN must differ from the ingest callers' tokens")
    return tokens


def _episodes(config, cooldown):
    """The episode settings; REMINDER_SECONDS defaults to the cooldown (the spec's behaviour)."""
    reminder = cooldown
    if str(config.get(REMINDER_SECONDS.name) or "").strip():
        reminder = _value(config, replace(REMINDER_SECONDS, low=cooldown))
    read = {name: _value(config, setting) for name, setting in EPISODE_FIELDS.items() if name != "cooldown_seconds"}
    return EpisodePolicy(cooldown_seconds=cooldown, reminder_seconds=reminder, **read)


def _positive_float(raw):
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(raw)
    return value


def _whole(low, high):
    def parse(raw: str) -> int:
        if not raw.strip().isdigit() or not low <= int(raw) <= high:
            raise ValueError(raw)
        return int(raw)

    return parse


def _existing(kind):
    def check(raw: str) -> str:
        if not (os.path.isfile(raw) if kind == "file" else os.path.isdir(raw)):
            raise ValueError(raw)
        return raw

    return check


def _choice(*choices):
    def check(raw: str) -> str:
        if raw not in choices:
            raise ValueError(raw)
        return raw

    return check


# The REDIS_URL query arguments we accept (redis-py passes any other one on as a keyword and
# fails on the first request), each with the check it must pass and what it expects.
REDIS_URL_OPTIONS = {
    "db": (_whole(0, 10_000), "a whole number"),
    "socket_timeout": (_positive_float, "a number of seconds above 0"),
    "socket_connect_timeout": (_positive_float, "a number of seconds above 0"),
    "socket_keepalive": (parse_bool, "true or false"),
    "health_check_interval": (_whole(0, 86_400), "a whole number of seconds"),
    "max_connections": (_whole(1, 100_000), "a whole number from 1"),
    "retry_on_timeout": (parse_bool, "true or false"),
    "protocol": (_choice("2", "3"), "2 or 3"),
    "client_name": (str, "a name"),
    "ssl_cert_reqs": (_choice("none", "optional", "required"), "none, optional or required"),
    "ssl_ca_certs": (_existing("file"), "an existing file"),
    "ssl_ca_path": (_existing("dir"), "an existing directory"),
    "ssl_certfile": (_existing("file"), "an existing file"),
    "ssl_keyfile": (_existing("file"), "an existing file"),
    "ssl_check_hostname": (parse_bool, "true or false"),
}


def _redis_url(config):
    """REDIS_URL, every part checked; messages name REDIS_URL but never echo it (it may hold a password)."""
    url = _required(config, "REDIS_URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("REDIS_URL is not a valid URL (check its host and port)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("REDIS_URL names no host")
    if parts.scheme != "unix" and port == 0:
        raise ConfigError("REDIS_URL's port must be from 1 to 65535")
    database = unquote(parts.path).strip("/")
    if parts.scheme != "unix" and database and not (database.isdigit() and int(database) <= 10_000):
        raise ConfigError(f"REDIS_URL's database (the path) must be a whole number, got {database!r}")
    try:
        options = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError("REDIS_URL's query string is malformed") from None
    for name, value in options:
        if name not in REDIS_URL_OPTIONS:
            raise ConfigError(f"REDIS_URL has an unknown option {name!r}; known: {', '.join(REDIS_URL_OPTIONS)}")
        if name.startswith("ssl_") and parts.scheme != "rediss":
            raise ConfigError(f"REDIS_URL's {name} needs a rediss:// URL")
        check, expected = REDIS_URL_OPTIONS[name]
        try:
            check(value)
        except ValueError:
            shown = "" if name in ("client_name",) else f", got {value!r}"
            raise ConfigError(f"REDIS_URL's {name} must be {expected}{shown}") from None
    if len({name for name, _ in options}) != len(options):
        raise ConfigError("REDIS_URL repeats an option")
    return url


def _address(name, entry):
    """One host:port entry of a list setting as (host, port); an IPv6 address is written [::1]:7000."""
    host, _, port = entry.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be comma-separated host:port pairs, got {entry!r}")
    return host, int(port)


def _sentinels(config):
    """REDIS_SENTINELS as (host, port) pairs and REDIS_SENTINEL_MASTER; ((), None) when not in Sentinel mode."""
    raw = str(config.get("REDIS_SENTINELS") or "").strip()
    master = str(config.get("REDIS_SENTINEL_MASTER") or "").strip()
    if not raw:
        if master:
            raise ConfigError("REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not")
        return (), None
    if not master:
        raise ConfigError("REDIS_SENTINEL_MASTER is required with REDIS_SENTINELS")
    # Every entry counts: a stray comma is refused, unlike REDIS_CLUSTER_NODES' (as the docs have it).
    return tuple(_address("REDIS_SENTINELS", part.strip()) for part in raw.split(",")), master


def _webhook_url(config):
    url = _required(config, "AGENT_WEBHOOK_URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"AGENT_WEBHOOK_URL must be an http(s) URL, got {url!r}")
    return url


def _webhook_secret(config):
    """The Standard Webhooks signing secret (whsec_ + base64), or None when calls go unsigned."""
    secret = _secret(config, "AGENT_WEBHOOK_SECRET")
    if not secret:
        return None
    # Unlike tokens, a call carries one signature: a list would silently sign with its first entry.
    if "," in secret:
        raise ConfigError("AGENT_WEBHOOK_SECRET takes one secret, not a comma-separated list")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_") + "==", validate=False)
    except (ValueError, binascii.Error):
        key = b""
    # The message names the variable only: the secret itself must never reach a log.
    if not secret.startswith("whsec_") or len(key) < 16:
        raise ConfigError("AGENT_WEBHOOK_SECRET must be whsec_ followed by at least 16 base64-encoded bytes")
    return secret


def _cluster_nodes(config, cluster):
    """More seed nodes of a Redis Cluster besides REDIS_URL's, as (host, port) pairs."""
    raw = str(config.get("REDIS_CLUSTER_NODES") or "")
    nodes = [_address("REDIS_CLUSTER_NODES", entry) for entry in (part.strip() for part in raw.split(",")) if entry]
    if nodes and not cluster:
        raise ConfigError("REDIS_CLUSTER_NODES is only used with REDIS_CLUSTER=true")
    return tuple(nodes)


def _namespaces(config):
    names = frozenset(n.strip() for n in str(config["ALLOWED_NAMESPACES"]).split(",") if n.strip())
    if not names or not all(DNS_LABEL.match(n) for n in names):
        raise ConfigError("ALLOWED_NAMESPACES must be comma-separated DNS-1123 labels")
    return names


def _thresholds(config):
    """Thresholds, each field read from the variable it declares."""
    return Thresholds(**{name: _value(config, setting) for name, setting in declared_settings(Thresholds).items()})


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the settings variables present in the environment."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in SETTING_NAMES if name in environ}


def parse_store_settings(config: Mapping[str, Any]) -> StoreSettings:
    """Validate the state store's settings into StoreSettings; raise ConfigError naming the culprit."""
    redis_url = _redis_url(config)
    sentinels, sentinel_master = _sentinels(config)
    redis_cluster = _value(config, REDIS_CLUSTER)
    if sentinels and redis_cluster:
        raise ConfigError("REDIS_SENTINELS and REDIS_CLUSTER=true are both set; a store is one or the other")
    if sentinels and urlsplit(redis_url).scheme == "unix":
        raise ConfigError("REDIS_URL must be redis:// or rediss:// with REDIS_SENTINELS (Sentinels name TCP addresses)")
    redis_password = _secret(config, "REDIS_PASSWORD")
    if redis_password and urlsplit(redis_url).password:
        raise ConfigError("REDIS_URL has a password and REDIS_PASSWORD(_FILE) is set; set one")
    return StoreSettings(
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        redis_cluster_nodes=_cluster_nodes(config, redis_cluster),
        redis_timeout=_value(config, REDIS_TIMEOUT_SECONDS),
        redis_password=redis_password or None,
        redis_sentinels=sentinels,
        redis_sentinel_master=sentinel_master,
        redis_sentinel_password=_secret(config, "REDIS_SENTINEL_PASSWORD") or None,
        cooldown_seconds=_value(config, COOLDOWN_SECONDS),
        allowed_namespaces=_namespaces(config),
    )


def parse_webhook_settings(config: Mapping[str, Any]) -> WebhookSettings:
    """Validate the agent webhook's settings into WebhookSettings; raise ConfigError naming the culprit."""
    return WebhookSettings(
        webhook_url=_webhook_url(config),
        webhook_connect_timeout=_value(config, AGENT_WEBHOOK_CONNECT_TIMEOUT_SECONDS),
        webhook_read_timeout=_value(config, AGENT_WEBHOOK_READ_TIMEOUT_SECONDS),
        webhook_budget=_value(config, AGENT_WEBHOOK_BUDGET_SECONDS),
        webhook_secret=_webhook_secret(config),
    )


def parse_settings(config: Mapping[str, Any], token_setting: str) -> Settings:
    """Validate a mapping of raw settings into Settings; raise ConfigError naming the culprit."""
    store = parse_store_settings(config)
    log_level = str(config["LOG_LEVEL"]).upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    webhook = parse_webhook_settings(config)
    return Settings(
        **vars(store),
        **vars(webhook),
        tokens=(tokens := _tokens(config, token_setting)),
        agent_tokens=_agent_tokens(config, tokens),
        episodes=_episodes(config, store.cooldown_seconds),
        thresholds=_thresholds(config),
        recommendation_headroom=_value(config, RECOMMENDATION_HEADROOM),
        history_half_life_hours=_value(config, HISTORY_HALF_LIFE_HOURS),
        cpu_memory_price_ratio=_value(config, CPU_MEMORY_PRICE_RATIO),
        max_deployments=_value(config, MAX_DEPLOYMENTS),
        max_body_bytes=_value(config, MAX_BODY_BYTES),
        log_level=log_level,
    )
