"""The Redis client both services use, and which Redis errors mean "unavailable, retry later"."""

import contextlib
import threading

from redis import Redis, RedisCluster
from redis import exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry

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


def unavailable_code(exc):
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


def _client_options(settings):
    return {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        # One quick retry absorbs a connection Redis closed while idle; more would delay the 503.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), 1),
    }


def connect_redis(settings):
    """A Redis (or Redis Cluster) client whose calls fail within the timeout instead of hanging."""
    if settings.redis_cluster:
        return connect_cluster(settings)
    return Redis.from_url(settings.redis_url, **_client_options(settings))


def connect_cluster(settings):
    """A Redis Cluster client that starts even when no seed node answers (see LazyCluster)."""
    seeds = [ClusterNode(host, port) for host, port in settings.redis_cluster_nodes]

    def build():
        return RedisCluster.from_url(settings.redis_url, startup_nodes=list(seeds), **_client_options(settings))

    cluster = LazyCluster(build)
    cluster.try_connect()
    return cluster


class LazyCluster:
    """Stands in for a RedisCluster client that is built on first use, when a seed node answers.

    Building a RedisCluster reads the slot map from a seed node and fails when none answers; a
    service must still start then (and answer 503 until the cluster is reachable). Every
    attribute is the real client's; until one can be built, using it raises a ConnectionError.
    """

    def __init__(self, build):
        self._build = build
        self._client = None
        self._lock = threading.Lock()

    def try_connect(self):
        """Build the client now if a seed answers; stay lazy otherwise."""
        with contextlib.suppress(redis_errors.ConnectionError):
            self.client()
        return self

    def client(self):
        """The RedisCluster client, built now if it was not yet."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._build()
                    except (redis_errors.RedisClusterException, redis_errors.RedisError, OSError) as exc:
                        raise redis_errors.ConnectionError(f"no Redis Cluster seed node answers: {exc}") from None
        return self._client

    def __getattr__(self, name):
        return getattr(self.client(), name)
