"""One Lua script over many units of keys: one call on a single Redis, one call per node on a Redis Cluster.

A unit is the keys (all in one slot) and arguments of one independent piece of work, such as one
deployment's guarded write. The scripts handle any number of units in one call and answer with
one reply per unit, in order. On a cluster the units are grouped by the primary serving their
slot and each group goes to its node as one call: the scripts are declared with
``allow-cross-slot-keys`` (Redis 7), and every unit's keys share a slot, so no unit ever spans
two. The calls to different nodes are all sent before any reply is read, so a step costs one
round trip's wait whatever the number of nodes.

What is left here is the gap redis-py's script support does not cover: its Script routes a call
by its keys, so keys of many slots cannot go to one node in one call, and it sends one call at a
time. SingleRunner is only Script's call. ClusterRunner groups the units by primary, writes the
EVALSHA of every group before reading a reply (using the Script's SHA), and passes the keys as
arguments (see scripts/prologue.lua); a node that lacks the script, and a unit retried alone
after a redirection, go through the Script's own call, which loads it (SCRIPT LOAD) on NOSCRIPT.
"""

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

from redis import Redis, RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.store.lazy_cluster import LazyCluster
from shared.store.settings import RedisMode


class NotLocalError(ResponseError):
    """A script reached a key of a slot its node does not serve (any more, or not yet)."""


# A group that meets these is sent again one unit at a time through the cluster client, which
# follows redirections; MovedError is an AskError.
_REDIRECTED = (AskError, TryAgainError, NotLocalError)
# After these the slot map may be wrong (a primary died or was replaced): read it again.
_NODE_LOST = (RedisConnectionError, RedisTimeoutError, ClusterDownError)
# A slot map refresh costs a CLUSTER SLOTS; under a burst of failures one per interval is enough.
REFRESH_INTERVAL_SECONDS = 0.5


class Unit(NamedTuple):
    """The keys (one slot) and arguments of one piece of work; `kind` tells a script's sections apart."""

    # A NamedTuple: thousands are built per request, and it is the cheapest record to build.
    keys: tuple
    args: tuple = ()
    kind: int = 0


# Given the units of one call, the arguments that go before the units' own (counts, shared values).
Header = Callable[[Sequence[Unit]], list]


def _classify(exc):
    """A script's error as the cluster error it stands for: a key its node no longer serves (slots
    moved since our map was read) is a redirection; a cluster that is down is ClusterDownError."""
    message = str(exc)
    if "non local key" in message:
        return NotLocalError(message)
    if "cluster is down" in message:
        return ClusterDownError(message)
    return exc


def _flatten(units, header):
    # One pass with list +=: it runs over thousands of units per call.
    keys, argv = [], header(units)
    for unit in units:
        keys += unit.keys
        argv += unit.args
    return keys, argv


def _undeclared(keys, argv):
    """The ARGV of a call whose keys, of several slots, go undeclared (see scripts/prologue.lua)."""
    return [len(keys), *keys, *argv]


class SingleRunner:
    """Runs a script over all units in one call to one Redis."""

    def __init__(self, redis: Redis):
        self.redis = redis

    def register(self, body: str) -> Script:
        """A script of this runner's Redis."""
        return self.redis.register_script(body)

    def run(self, script: Script, units: Sequence[Unit], header: Header) -> list:
        """The script's reply for each unit, in order."""
        if not units:
            return []
        keys, argv = _flatten(units, header)
        return list(script(keys, argv, client=self.redis))

    def probe(self, script: Script) -> None:
        """Run a keyless script once; raise what Redis answers when it refuses."""
        script(client=self.redis)


class ClusterRunner:
    """Runs a script over units in one call per primary of a Redis Cluster.

    `run` answers one entry per unit: the script's reply, or the exception that the unit's call
    ended with, so that a caller can undo what succeeded elsewhere before raising (see
    `raise_first`).
    """

    def __init__(self, cluster: RedisCluster | LazyCluster):
        self.cluster = cluster  # a RedisCluster, or a LazyCluster standing in for one
        self._refresh_lock = threading.Lock()
        self._refreshed_at = 0.0

    def register(self, body: str) -> Script:
        """A script of this runner's cluster; registering it reaches no node (a LazyCluster stays lazy)."""
        # Given bytes, Script asks its client for no encoder; every call here names its client.
        return Script(cast(RedisCluster, self.cluster), body.encode())

    def run(self, script: Script, units: Sequence[Unit], header: Header) -> list:
        """The script's reply (or the exception met) for each unit, in order."""
        if not units:
            return []
        cluster = self._client()
        groups = self._group(cluster, units)
        results: list = [None] * len(units)
        sent = []
        for node, indexes in groups:
            subset = [units[i] for i in indexes]
            keys, argv = _flatten(subset, header)
            pool = cluster.get_redis_connection(node).connection_pool
            try:
                connection = pool.get_connection()
            except Exception as exc:
                self._fail(indexes, exc, results)
                continue
            try:
                connection.send_command("EVALSHA", script.sha, 0, *_undeclared(keys, argv))
            except Exception as exc:
                connection.disconnect()
                pool.release(connection)
                self._fail(indexes, exc, results)
                continue
            sent.append((node, indexes, subset, pool, connection))
        # Every call is on the wire before the first reply is read.
        try:
            while sent:
                node, indexes, subset, pool, connection = sent.pop(0)
                self._collect(cluster, script, units, header, results, node, indexes, subset, pool, connection)
        finally:
            # Cut short (a worker timeout, say): a connection with a reply still unread is unusable.
            for _, _, _, pool, connection in sent:
                connection.disconnect()
                pool.release(connection)
        return results

    def _collect(self, cluster, script, units, header, results, node, indexes, subset, pool, connection):
        """Read one node's reply into `results`, following NOSCRIPT and redirections."""
        try:
            reply = connection.read_response()
        except NoScriptError:
            pool.release(connection)
            reply = self._retry_on(cluster, node, script, subset, header)
        except ResponseError as exc:
            pool.release(connection)
            reply = _classify(exc)
        except Exception as exc:
            connection.disconnect()
            pool.release(connection)
            self._fail(indexes, exc, results)
            return
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        else:
            pool.release(connection)
        if isinstance(reply, _REDIRECTED):
            self.refresh(reply)
            self._one_by_one(cluster, script, units, indexes, header, results)
        elif isinstance(reply, Exception):
            self._fail(indexes, reply, results)
        else:
            for index, value in zip(indexes, reply):
                results[index] = value

    def probe(self, script: Script) -> None:
        """Raise unless the cluster is whole (cluster_state:ok) and every primary runs a keyless script."""
        cluster = self._client()
        try:
            state = cluster.cluster_info().get("cluster_state")
            if state != "ok":
                raise ClusterDownError(f"cluster_state is {state}")
            # Keyless, so it goes to each primary in turn: every one of them takes some of the writes.
            for node in cluster.get_primaries():
                script(client=cluster.get_redis_connection(node))
        except _NODE_LOST as exc:
            self.refresh(exc)
            raise

    def _client(self):
        return self.cluster.client() if isinstance(self.cluster, LazyCluster) else self.cluster

    def _group(self, cluster, units):
        """[(primary node, indexes of its units)], keeping the units' order within each group."""
        groups: dict = {}
        manager = cluster.nodes_manager
        try:
            for index, unit in enumerate(units):
                key = unit.keys[0]
                node = manager.get_node_from_slot(key_slot(key.encode() if isinstance(key, str) else key))
                groups.setdefault(node.name, (node, []))[1].append(index)
        except RedisClusterException as exc:
            # A slot no node serves (the map is being rebuilt): unavailable for now.
            self.refresh(exc)
            raise ClusterDownError(f"slot not covered: {exc}") from None
        return list(groups.values())

    def _retry_on(self, cluster, node, script, subset, header):
        """The group's call again on its node, after Redis said it lacks the script."""
        keys, argv = _flatten(subset, header)
        try:
            return script([], _undeclared(keys, argv), client=cluster.get_redis_connection(node))
        except Exception as exc:
            return _classify(exc) if isinstance(exc, ResponseError) else exc

    def _one_by_one(self, cluster, script, units, indexes, header, results):
        """A group met a redirection (slots moving): each unit alone, routed and redirected by the client."""
        for index in indexes:
            keys, argv = _flatten([units[index]], header)
            try:
                results[index] = script(keys, argv, client=cluster)[0]
            except Exception as exc:
                results[index] = exc

    def _fail(self, indexes, exc, results):
        if isinstance(exc, _NODE_LOST):
            self.refresh(exc)
        for index in indexes:
            results[index] = exc

    def refresh(self, reason: BaseException | None = None) -> None:
        """Read the slot map again (at most once per REFRESH_INTERVAL_SECONDS), so a failover heals itself."""
        with self._refresh_lock:
            if time.monotonic() - self._refreshed_at < REFRESH_INTERVAL_SECONDS:
                return
            self._refreshed_at = time.monotonic()
        # When no node answers yet, the next failure tries again.
        with contextlib.suppress(Exception):
            self._client().nodes_manager.initialize()


def raise_first(results: Sequence) -> None:
    """Raise the first exception among run()'s results, if any."""
    for result in results:
        if isinstance(result, Exception):
            raise result


def runner_for(redis: Redis | RedisCluster | LazyCluster, mode: RedisMode) -> SingleRunner | ClusterRunner:
    """The runner suited to a client of `mode`: per node on a Redis Cluster, one call otherwise (Sentinel too)."""
    if mode is RedisMode.CLUSTER:
        return ClusterRunner(cast(RedisCluster | LazyCluster, redis))
    return SingleRunner(cast(Redis, redis))
