"""Sentinel mode's two gaps in redis-py: which Sentinel to believe, and when to stop writing.

redis-py's Sentinel takes the first Sentinel's answer, and its SentinelConnectionPool learns of a
new primary only when it makes a connection, so an idle or reused connection keeps writing to a
demoted primary until that primary refuses (about 10 s after the promotion, and what it took in
between is lost). NewestEpochSentinel believes the newest configuration; FollowingPrimaryPool
listens to the Sentinels' failover events, stops writing as a promotion starts and follows the
switch.

What redis-py already does is left to it: its SentinelManagedConnection closes a connection whose
server answers READONLY (no longer the primary) and raises a ConnectionError, a 503 to retry, and
the next connection asks the Sentinels again. (A command that writes nothing is answered by such a
server; every state change of the services is a write.)
"""

import logging
import os
import threading
import time
from typing import Any

from redis import Redis
from redis import exceptions as redis_errors
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

log = logging.getLogger("aggregator")

# How long writes stay refused after a Sentinel starts promoting a replica, when neither the
# switch nor an abort is announced; then the Sentinels are asked again.
FAILOVER_HOLD_SECONDS = 15.0

# Sentinel events (published on channels of the same name) that move us. The leader publishes
# the first right before it sends REPLICAOF NO ONE to the chosen replica.
PROMOTING = "+failover-state-send-slaveof-noone"
SWITCHED = "+switch-master"
ABORTED = "-failover-abort-*"


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


class FollowingPrimaryPool(SentinelConnectionPool):
    """A Sentinel connection pool that stops writing when a failover starts and follows the new primary.

    Each process (every gunicorn worker) listens to every Sentinel's events in a daemon thread per
    Sentinel. When a Sentinel starts promoting a replica, the pool refuses connections (a 503 for
    the caller) so that nothing more is written to the primary that is about to be demoted; when
    a Sentinel announces the switch, it drops its connections and connects to the new primary.
    """

    def __init__(
        self, service_name: str, sentinel_manager: Sentinel, *, watcher_options: dict[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self.watcher_options = watcher_options
        self._watching_pid: int | None = None
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

    def _ensure_watching(self) -> None:
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

    def _listen(self, host: str, port: int) -> None:
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

    def _on_event(self, channel: bytes | str, data: bytes | str) -> None:
        """Hold at a promotion of our primary, follow at its switch or an aborted failover; ignore other primaries."""
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
