"""The Redis client both services use, and which Redis errors mean "unavailable, retry later"."""

from redis import Redis, RedisCluster
from redis import exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

# Redis being away (down, failing over, loading) is the caller's cue to retry, not our bug.
REDIS_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
)


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
