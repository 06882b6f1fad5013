"""The Redis client both services use, and which Redis errors mean "unavailable, retry later"."""

import contextlib
import logging
import os
import threading
import time
from typing import Any

from redis import Redis, RedisCluster
from redis import exceptions as redis_errors
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from shared.store.settings import RedisMode, StoreSettings

log = logging.getLogger("aggregator")

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
# LREM) and /readyz, PING for the client's health check (health_check_interval), ROLE for
# Sentinel mode, SELECT for a database other than 0, and the key prefixes of
# shared/store/repository.py. docs/operations.md quotes it and
# tests/test_redis_acl.py gives a user exactly this rule.
MINIMAL_ACL_RULE = (
    "resetkeys ~app:* ~{app:* ~trigger:* ~{trigger:* ~triggers:* ~cluster:* ~{cluster:* resetchannels -@all "
    "+ping +role +select +evalsha +script|load +get +set +del +exists +ttl +pttl +hget +hmget +hset +hsetnx +hdel "
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

# How long writes stay refused after a Sentinel starts promoting a replica, when neither the
# switch nor an abort is announced; then the Sentinels are asked again.
FAILOVER_HOLD_SECONDS = 15.0


def _retry():
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), RETRY_ATTEMPTS)


def _client_options(settings):
    options = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": _retry(),
        **NO_CLIENT_SETINFO,
    }
    if settings.redis_password:
        options["password"] = settings.redis_password
    return options


def connect_redis(settings: StoreSettings) -> "Redis | LazyCluster":
    """A Redis (or Redis Cluster, or Sentinel-managed) client whose calls fail within the timeout instead of hanging."""
    if settings.mode is RedisMode.SENTINEL:
        return connect_sentinel(settings)
    if settings.mode is RedisMode.CLUSTER:
        return connect_cluster(settings)
    return Redis.from_url(settings.redis_url, **_client_options(settings))


def connect_cluster(settings: StoreSettings) -> "LazyCluster":
    """A Redis Cluster client that starts even when no seed node answers (see LazyCluster)."""
    seeds = [ClusterNode(host, port) for host, port in settings.redis_cluster_nodes]

    def build() -> RedisCluster:
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

    def __getattr__(self, name):
        return getattr(self.client(), name)


# ---- Sentinel mode -------------------------------------------------------------------------


def connect_sentinel(settings: StoreSettings) -> Redis:
    """A client of the primary the Sentinels name, which moves to a new primary as soon as one is announced.

    REDIS_URL gives the data nodes' scheme (rediss:// = TLS), user, password, database and
    options; its host and port are not used. With rediss://, the Sentinels are reached over TLS
    with the same options.
    """
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
            settings.redis_sentinel_master,
            sentinel,
            connection_class=PrimaryCheckedSSLConnection if tls else PrimaryCheckedConnection,
            retry=_retry(),
            watcher_options={**timeouts, **sentinel_options},
            **NO_CLIENT_SETINFO,
            # REDIS_URL's own socket_timeout and socket_connect_timeout win, as outside Sentinel mode.
            **{**timeouts, **options},
        )
    )


class NewestEpochSentinel(Sentinel):
    """Asks every Sentinel and believes the one with the newest configuration epoch.

    redis-py takes the first answer; right after a failover a Sentinel that has not heard of it
    yet would send new connections back to the demoted primary.
    """

    def discover_master(self, service_name: str) -> tuple[str, int]:
        """The (host, port) of the primary in the newest configuration any reachable Sentinel holds."""
        best, errors = None, []
        for sentinel in self.sentinels:
            try:
                masters = sentinel.sentinel_masters()
                state = masters.get(service_name) if isinstance(masters, dict) else None
            except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
                errors.append(repr(exc))
                continue
            if state and self.check_master_state(state, service_name):
                epoch = int(state.get("config-epoch", 0))
                if best is None or epoch > best[0]:
                    best = (epoch, (state["ip"], state["port"]))
        if best is None:
            raise MasterNotFoundError(f"No primary found for {service_name!r} {'; '.join(errors)}".strip())
        return best[1]


class PrimaryCheckedConnection(SentinelManagedConnection):
    """A connection that refuses a server which is not (or no longer) a primary."""

    def connect_to(self, address: tuple[str, int]) -> None:
        """Connect, then check with ROLE that the server takes writes."""
        super().connect_to(address)
        self.send_command("ROLE")
        role = self.read_response()[0]
        role = role.decode() if isinstance(role, bytes) else role
        if role != "master":
            self.disconnect()
            # A ConnectionError: to the caller this is "Redis unavailable", a 503 to retry.
            raise redis_errors.ConnectionError(f"{address[0]}:{address[1]} is a {role}, not the primary")


class PrimaryCheckedSSLConnection(PrimaryCheckedConnection, SentinelManagedSSLConnection):
    """PrimaryCheckedConnection over TLS."""


# Sentinel events (published on channels of the same name) that move us. The leader publishes
# the first right before it sends REPLICAOF NO ONE to the chosen replica.
PROMOTING = "+failover-state-send-slaveof-noone"
SWITCHED = "+switch-master"
ABORTED = "-failover-abort-*"


class FollowingPrimaryPool(SentinelConnectionPool):
    """A Sentinel connection pool that stops writing when a failover starts and follows the new primary.

    Each process (every gunicorn worker) listens to every Sentinel's events in a daemon thread per
    Sentinel. When a Sentinel starts promoting a replica, the pool refuses connections (a 503 for
    the caller) so that nothing more is written to the primary that is about to be demoted; when
    a Sentinel announces the switch, it drops its connections and connects to the new primary.
    """

    def __init__(self, service_name, sentinel_manager, *, watcher_options, **kwargs):
        super().__init__(service_name, sentinel_manager, **kwargs)
        self.watcher_options = watcher_options
        self._watching_pid = None
        self._held_until = 0.0
        self._follow_lock = threading.Lock()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connection to the current primary; a ConnectionError while a failover is under way."""
        self._ensure_watching()
        if time.monotonic() < self._held_until:
            raise redis_errors.ConnectionError(f"failover of {self.service_name!r} under way; no primary to write to")
        return super().get_connection(*args, **kwargs)

    def hold(self) -> None:
        """Refuse connections until the failover ends, and close the idle ones to the old primary."""
        self._held_until = time.monotonic() + FAILOVER_HOLD_SECONDS
        self.disconnect(inuse_connections=False)
        log.warning("redis sentinel: failover of %s started; refusing writes until it ends", self.service_name)

    def follow(self) -> None:
        """Ask the Sentinels for the primary; on a change, drop every connection to the old one."""
        with self._follow_lock:
            old = self.proxy.master_address
            try:
                address = self.sentinel_manager.discover_master(self.service_name)
            except redis_errors.ConnectionError as exc:
                log.warning("redis sentinel: no primary known for %s: %s", self.service_name, exc)
                return
            self.proxy.master_address = address
            self._held_until = 0.0
            if address != old:
                # Idle connections close now; the ones in use are no longer owned and close on release.
                self.disconnect(inuse_connections=False)
                if old is not None:
                    log.warning("redis sentinel: %s moved from %s:%s to %s:%s", self.service_name, *old, *address)

    def _ensure_watching(self):
        # Threads do not survive fork: gunicorn's preloaded master builds the client, each worker
        # starts its own listeners on first use.
        if self._watching_pid == os.getpid():
            return
        with self._follow_lock:
            if self._watching_pid == os.getpid():
                return
            self._watching_pid = os.getpid()
            for sentinel in self.sentinel_manager.sentinels:
                kwargs = sentinel.connection_pool.connection_kwargs
                thread = threading.Thread(
                    target=self._listen,
                    args=(kwargs["host"], kwargs["port"]),
                    name=f"sentinel-events-{kwargs['host']}:{kwargs['port']}",
                    daemon=True,
                )
                thread.start()

    def _listen(self, host, port):
        """Follow one Sentinel's failover events for good, reconnecting after errors."""
        options = {**self.watcher_options, "socket_timeout": None, "socket_keepalive": True}
        while True:
            try:
                pubsub = Redis(host, port, **options).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(PROMOTING, SWITCHED)
                pubsub.psubscribe(ABORTED)
                # Catch up with a switch announced while we were not listening.
                if self._watching_pid == os.getpid() and self.proxy.master_address is not None:
                    self.follow()
                while True:
                    message = pubsub.get_message(timeout=30)
                    if message:
                        self._on_event(message["channel"], message["data"])
            except Exception as exc:  # a Sentinel restarting must not end the thread
                log.debug("redis sentinel %s:%s events: %r; reconnecting", host, port, exc)
                time.sleep(1)

    def _on_event(self, channel, data):
        channel = channel.decode() if isinstance(channel, bytes) else channel
        words = (data.decode() if isinstance(data, bytes) else data).split()
        if channel == SWITCHED:  # "<master-name> <old-ip> <old-port> <new-ip> <new-port>"
            master = words[0] if words else None
        elif "@" in words:  # "<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>"
            master = words[words.index("@") + 1]
        else:  # "master <master-name> <ip> <port>"
            master = words[1] if len(words) > 1 else None
        if master != self.service_name:
            return
        if channel == PROMOTING:
            self.hold()
        else:
            self.follow()
