"""The Redis client both services use, and which Redis errors mean "unavailable, retry later"."""

from redis import Redis, RedisCluster
from redis import exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff
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


def connect_redis(settings):
    """A Redis (or Redis Cluster) client whose calls fail within the timeout instead of hanging."""
    client_class = RedisCluster if settings.redis_cluster else Redis
    return client_class.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        # One quick retry absorbs a connection Redis closed while idle; more would delay the 503.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), 1),
    )
