"""A Redis Cluster client that exists before any seed node answers.

The gap in redis-py: building a RedisCluster reads the slot map from a seed node at once and raises
when none answers, so a service whose cluster is not up yet could not even start. A service must
start then, answer 503 until the cluster is reachable, and need no restart once it is.
"""

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from redis import RedisCluster
from redis import exceptions as redis_errors


class LazyCluster:
    """Stands in for a RedisCluster client that is built on first use, when a seed node answers.

    Every attribute is the real client's; until one can be built, using it raises a ConnectionError
    (a 503 for the caller), and the next use tries the seeds again.
    """

    def __init__(self, build: Callable[[], RedisCluster]) -> None:
        self._build = build
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def try_connect(self) -> "LazyCluster":
        """Build the client now if a seed answers; stay lazy otherwise."""
        with contextlib.suppress(redis_errors.ConnectionError):
            self.client()
        return self

    def client(self) -> RedisCluster:
        """The RedisCluster client, built now if it was not yet."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._build()
                    except (redis_errors.RedisClusterException, redis_errors.RedisError, OSError) as exc:
                        raise redis_errors.ConnectionError(f"no Redis Cluster seed node answers: {exc}") from None
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)
