"""The Redis client both services use (one server, Cluster, Sentinel), and the errors that mean "retry later".

The gap-fillers each mode needs beyond redis-py live in modules of their own: lazy_cluster.py
(a Cluster client that starts before its seeds answer) and sentinel.py (which Sentinel to believe,
and stopping writes during a failover).
"""

from typing import Any

from redis import Redis, RedisCluster
from redis import exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from shared.store.lazy_cluster import LazyCluster
from shared.store.sentinel import FollowingPrimaryPool, NewestEpochSentinel
from shared.store.settings import RedisMode, StoreSettings

# Redis being away (down, failing over, loading) or refusing writes (out of memory, a read-only
# replica, an ACL without our commands) is the caller's cue to retry, not our bug. Each error gets
# the code the 503 names it by; the first matching class wins, so subclasses come before parents.
UNAVAILABLE_CODES = (
    (redis_errors.OutOfMemoryError, "REDIS_OUT_OF_MEMORY"),
    (redis_errors.ReadOnlyError, "REDIS_READ_ONLY"),
    (redis_errors.MasterDownError, "REDIS_MASTER_DOWN"),
    (redis_errors.BusyLoadingError, "REDIS_LOADING"),
    (redis_errors.NoPermissionError, "REDIS_NO_PERMISSION"),
    (redis_errors.ConnectionError, "REDIS_UNAVAILABLE"),
    (redis_errors.TimeoutError, "REDIS_UNAVAILABLE"),
    (redis_errors.ClusterDownError, "REDIS_UNAVAILABLE"),
    (redis_errors.TryAgainError, "REDIS_UNAVAILABLE"),
)
# Refusals redis-py has no class for: it keeps the reply's first word in the message.
UNAVAILABLE_PREFIXES = (
    ("OOM ", "REDIS_OUT_OF_MEMORY"),
    ("BUSY ", "REDIS_BUSY"),
    ("MISCONF ", "REDIS_PERSISTENCE_FAILING"),
    ("MASTERDOWN ", "REDIS_MASTER_DOWN"),
)
REDIS_UNAVAILABLE = tuple(error for error, _ in UNAVAILABLE_CODES)


def unavailable_code(exc: BaseException) -> str | None:
    """The error code for a Redis error that means "retry later", or None when it is a bug of ours."""
    for error, code in UNAVAILABLE_CODES:
        if isinstance(exc, error):
            return code
    if isinstance(exc, redis_errors.ResponseError):
        message = str(exc)
        for prefix, code in UNAVAILABLE_PREFIXES:
            if message.startswith(prefix):
                return code
    return None


# The least a Redis ACL user of the services needs: the commands of ingest's scripts (store with
# the usage history, claim, settle, release; the commands they call run under the same user),
# SCRIPT LOAD for a Redis that lost its script cache (redis-py's Script loads one on NOSCRIPT),
# the history reads, the failed list, the failed-triggers and redeliver commands (GET, PTTL,
# LREM) and /readyz, PING for the client's health check (health_check_interval), SELECT for a
# database other than 0, and the key prefixes of shared/store/repository.py. docs/operations.md
# quotes it and tests/functional/test_redis_acl.py gives a user exactly this rule.
MINIMAL_ACL_RULE = (
    "resetkeys ~app:* ~{app:* ~trigger:* ~{trigger:* ~triggers:* ~cluster:* ~{cluster:* resetchannels -@all "
    "+ping +select +evalsha +script|load +get +set +del +exists +ttl +pttl +hget +hmget +hset +hsetnx +hdel "
    "+hgetall +hincrby +hlen +expire +pexpire +lpush +ltrim +lrange +lrem"
)

# What a Redis Cluster user needs on top: redis-py's cluster client reads the slot map (CLUSTER
# SLOTS) and the command table (COMMAND) to route each command to the node holding its key, and
# readiness reads the cluster's state (CLUSTER INFO).
CLUSTER_ACL_ADDITIONS = "+cluster|slots +cluster|info +command"

# redis-py names itself with CLIENT SETINFO on every new connection: a command Redis 7.0 lacks and
# a minimal ACL user may not run (each refusal would land in the ACL log), for a label in CLIENT LIST.
NO_CLIENT_SETINFO = {"driver_info": None}

# One quick retry absorbs a connection Redis closed while idle; more would delay the 503.
RETRY_ATTEMPTS = 1


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), RETRY_ATTEMPTS)


def _client_options(settings: StoreSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": _retry(),
        **NO_CLIENT_SETINFO,
    }
    if settings.redis_password:
        options["password"] = settings.redis_password
    return options


def connect_redis(settings: StoreSettings) -> Redis | LazyCluster:
    """A Redis (or Redis Cluster, or Sentinel-managed) client whose calls fail within the timeout instead of hanging."""
    if settings.mode is RedisMode.SENTINEL:
        return connect_sentinel(settings)
    if settings.mode is RedisMode.CLUSTER:
        return connect_cluster(settings)
    return Redis.from_url(settings.redis_url, **_client_options(settings))


def connect_cluster(settings: StoreSettings) -> LazyCluster:
    """A Redis Cluster client that starts even when no seed node answers (see LazyCluster)."""
    seeds = [ClusterNode(host, port) for host, port in settings.redis_cluster_nodes]

    def build() -> RedisCluster:
        return RedisCluster.from_url(settings.redis_url, startup_nodes=list(seeds), **_client_options(settings))

    cluster = LazyCluster(build)
    cluster.try_connect()
    return cluster


def connect_sentinel(settings: StoreSettings) -> Redis:
    """A client of the primary the Sentinels name, which moves to a new primary as soon as one is announced.

    REDIS_URL gives the data nodes' scheme (rediss:// = TLS), user, password, database and
    options; its host and port are not used. With rediss://, the Sentinels are reached over TLS
    with the same options.
    """
    master = settings.redis_sentinel_master
    if master is None:  # the settings parser requires it with REDIS_SENTINELS
        raise ValueError("Sentinel mode needs the primary's name (REDIS_SENTINEL_MASTER)")
    options = {
        name: value for name, value in parse_url(settings.redis_url).items() if name not in ("host", "port", "path")
    }
    tls = options.pop("connection_class", None) is not None
    if settings.redis_password:
        options["password"] = settings.redis_password
    timeouts = {"socket_timeout": settings.redis_timeout, "socket_connect_timeout": settings.redis_timeout}
    sentinel_options = {name: value for name, value in options.items() if name.startswith("ssl_")}
    if tls:
        sentinel_options["ssl"] = True
    if settings.redis_sentinel_password:
        sentinel_options["password"] = settings.redis_sentinel_password
    # No retries against a Sentinel: the next Sentinel in the list is the retry (redis-py's default
    # would back off for seconds on every refused or unreachable one).
    sentinel_options["retry"] = Retry(NoBackoff(), 0)
    sentinel = NewestEpochSentinel(
        list(settings.redis_sentinels), sentinel_kwargs={**timeouts, **sentinel_options}, **timeouts
    )
    return Redis.from_pool(
        FollowingPrimaryPool(
            master,
            sentinel,
            # Closes a connection whose server answers READONLY and raises a ConnectionError (see sentinel.py).
            connection_class=SentinelManagedSSLConnection if tls else SentinelManagedConnection,
            retry=_retry(),
            watcher_options={**timeouts, **sentinel_options},
            **NO_CLIENT_SETINFO,
            # REDIS_URL's own socket_timeout and socket_connect_timeout win, as outside Sentinel mode.
            **{**timeouts, **options},
        )
    )
