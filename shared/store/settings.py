"""What reaching the state store takes; shared.runtime.settings reads it from the environment."""

import enum
from dataclasses import dataclass


class RedisMode(enum.Enum):
    """How the state store is reached; StoreSettings.mode is the one place that decides it."""

    SINGLE = "single"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True)
class StoreSettings:
    """What reaching the state store takes: all the failed-triggers command needs."""

    redis_url: str
    redis_cluster: bool
    redis_cluster_nodes: tuple[tuple[str, int], ...]
    redis_timeout: float
    # The data nodes' password from REDIS_PASSWORD(_FILE), overriding REDIS_URL's; None when unset.
    redis_password: str | None
    # Sentinel mode: (host, port) pairs and the monitored primary's name; () and None otherwise.
    redis_sentinels: tuple[tuple[str, int], ...]
    redis_sentinel_master: str | None
    redis_sentinel_password: str | None
    cooldown_seconds: int
    allowed_namespaces: frozenset[str]

    @property
    def mode(self) -> RedisMode:
        """The one Redis mode these settings select (the parser refuses Sentinel and Cluster together)."""
        if self.redis_sentinels:
            return RedisMode.SENTINEL
        return RedisMode.CLUSTER if self.redis_cluster else RedisMode.SINGLE
