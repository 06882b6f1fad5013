"""Sentinel mode's gap-fillers: the newest epoch believed, and the pool's answer to each failover event.

The Sentinels' answers and events are stand-ins with the formats real Sentinels send; the data
nodes are real redis-servers. tests/functional/test_sentinel.py runs both against real Sentinels failing over.
"""

import fnmatch

import pytest
from redis import exceptions as redis_errors
from redis.sentinel import MasterNotFoundError

from devtools.harness import RedisServer
from shared.store import sentinel as sentinel_module
from shared.store.sentinel import ABORTED, PROMOTING, SWITCHED, FollowingPrimaryPool, NewestEpochSentinel

MASTER = "aggregator"


class StandInSentinel:
    """A Sentinel client that answers SENTINEL MASTERS with `masters`, or raises `error`."""

    def __init__(self, masters=None, error=None):
        self.masters, self.error = masters, error

    def sentinel_masters(self):
        """What SENTINEL MASTERS answers, parsed as redis-py parses it."""
        if self.error:
            raise self.error
        return self.masters


def primary_state(port, epoch, **flags):
    """One Sentinel's view of MASTER: a primary on `port`, in configuration `epoch`."""
    state = {"ip": "127.0.0.1", "port": port, "config-epoch": epoch, "num-other-sentinels": 2}
    return {MASTER: {**state, "is_master": True, "is_sdown": False, "is_odown": False, **flags}}


def newest_epoch_sentinel(*answers):
    """A NewestEpochSentinel asking the stand-ins `answers` instead of real Sentinels."""
    sentinel = NewestEpochSentinel([("127.0.0.1", 1)])
    sentinel.sentinels = list(answers)
    return sentinel


@pytest.mark.parametrize("order", [1, -1])
def test_the_sentinel_with_the_newest_epoch_is_believed_whatever_the_order(order):
    behind = StandInSentinel(primary_state(6379, epoch=1))  # has not heard of the failover yet
    current = StandInSentinel(primary_state(6380, epoch=2))
    unreachable = StandInSentinel(error=redis_errors.ConnectionError("refused"))
    sentinel = newest_epoch_sentinel(*[behind, unreachable, current][::order])
    assert sentinel.discover_master(MASTER) == ("127.0.0.1", 6380)


def test_a_primary_seen_down_or_another_service_is_not_believed():
    seen_down = StandInSentinel(primary_state(6381, epoch=3, is_odown=True))
    other_service = StandInSentinel({"other": primary_state(6382, epoch=4)[MASTER]})
    up = StandInSentinel(primary_state(6380, epoch=2))
    assert newest_epoch_sentinel(seen_down, other_service, up).discover_master(MASTER) == ("127.0.0.1", 6380)


def test_no_sentinel_knowing_a_primary_is_unavailable_naming_why():
    down = StandInSentinel(error=redis_errors.TimeoutError("timed out"))
    with pytest.raises(MasterNotFoundError, match="No primary found for 'aggregator'.*TimeoutError"):
        newest_epoch_sentinel(down, StandInSentinel({})).discover_master(MASTER)
    # A ConnectionError: the caller answers 503 and retries.
    assert issubclass(MasterNotFoundError, redis_errors.ConnectionError)


class StandInManager:
    """The Sentinels as the pool sees them: no event listener, and the primary the test names."""

    sentinels = ()

    def __init__(self, port):
        self.port = port
        self.asked = 0

    def discover_master(self, service_name):
        """The primary named now."""
        self.asked += 1
        return "127.0.0.1", self.port


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    """Two redis-servers: the primary before the failover, and the one after."""
    servers = [RedisServer(tmp_path_factory.mktemp(name)).start() for name in ("old", "new")]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def pool(old_and_new):
    """A FollowingPrimaryPool of MASTER whose Sentinels name the old primary, with one idle connection to it."""
    manager = StandInManager(old_and_new[0].port)
    following = FollowingPrimaryPool(MASTER, manager, watcher_options={}, client_name="following-pool-test")
    following.release(following.get_connection())
    yield following
    following.disconnect()


def connected_to(server):
    """How many of the pool's connections `server` holds."""
    with server.client() as admin:
        return sum(client["name"] == "following-pool-test" for client in admin.client_list())


def promotion_event(master=MASTER):
    """What the leading Sentinel publishes right before REPLICAOF NO ONE to the chosen replica."""
    return PROMOTING.encode(), f"slave 127.0.0.1:6380 127.0.0.1 6380 @ {master} 127.0.0.1 6379".encode()


def test_a_promotion_stops_writes_and_closes_idle_connections_to_the_old_primary(pool, old_and_new):
    old, _ = old_and_new
    assert connected_to(old) == 1
    pool._on_event(*promotion_event())
    with pytest.raises(redis_errors.ConnectionError, match="failover of 'aggregator' under way"):
        pool.get_connection()
    assert connected_to(old) == 0
    assert pool.sentinel_manager.asked == 1  # only for the first connection: a promotion names no primary yet


def test_the_switch_ends_the_hold_and_moves_every_new_connection(pool, old_and_new):
    old, new = old_and_new
    pool._on_event(*promotion_event())
    pool.sentinel_manager.port = new.port
    pool._on_event(SWITCHED.encode(), f"{MASTER} 127.0.0.1 {old.port} 127.0.0.1 {new.port}".encode())
    connection = pool.get_connection()
    assert (connection.port, connected_to(old), connected_to(new)) == (new.port, 0, 1)
    pool.release(connection)


def test_an_aborted_failover_ends_the_hold_on_the_same_primary(pool, old_and_new):
    old, _ = old_and_new
    pool._on_event(*promotion_event())
    pool._on_event(b"-failover-abort-not-elected", f"master {MASTER} 127.0.0.1 {old.port}".encode())
    assert fnmatch.fnmatchcase("-failover-abort-not-elected", ABORTED)  # the pattern the listener subscribes to
    connection = pool.get_connection()
    assert connection.port == old.port
    pool.release(connection)


def test_events_about_another_primary_change_nothing(pool, old_and_new):
    old, new = old_and_new
    pool.sentinel_manager.port = new.port
    pool._on_event(*promotion_event(master="other"))
    pool._on_event(SWITCHED, f"other 127.0.0.1 {old.port} 127.0.0.1 {new.port}")  # str as well as bytes
    connection = pool.get_connection()
    assert (connection.port, pool.sentinel_manager.asked) == (old.port, 1)
    pool.release(connection)


def test_a_hold_that_no_switch_ends_lasts_failover_hold_seconds(pool, old_and_new, monkeypatch):
    monkeypatch.setattr(sentinel_module, "FAILOVER_HOLD_SECONDS", 0.0)
    pool._on_event(*promotion_event())
    connection = pool.get_connection()
    assert connection.port == old_and_new[0].port
    pool.release(connection)
