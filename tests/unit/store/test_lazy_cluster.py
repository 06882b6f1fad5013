"""LazyCluster: a Cluster-mode client exists before any seed node answers, and is built once one does."""

import pytest
from redis import exceptions as redis_errors

from devtools.harness import free_port
from shared.store.connection import connect_redis, unavailable_code
from shared.store.lazy_cluster import LazyCluster


def test_cluster_mode_starts_with_no_seed_answering(store_settings):
    seed, other_seed = free_port(), free_port()
    client = connect_redis(
        store_settings(
            REDIS_URL=f"redis://127.0.0.1:{seed}/0",
            REDIS_CLUSTER="true",
            REDIS_CLUSTER_NODES=f"127.0.0.1:{other_seed}",
            REDIS_TIMEOUT_SECONDS="0.5",
        )
    )
    assert isinstance(client, LazyCluster)
    with pytest.raises(redis_errors.ConnectionError, match="no Redis Cluster seed node answers") as refused:
        client.ping()
    assert unavailable_code(refused.value) == "REDIS_UNAVAILABLE"


class StandInCluster:
    """What the build gives once a seed answers."""

    def ping(self):
        """PONG."""
        return True


def test_the_client_is_built_on_the_first_use_after_a_seed_answers_and_kept():
    answers = [redis_errors.RedisClusterException("Redis Cluster cannot be connected"), OSError("refused")]
    builds = []

    def build():
        builds.append(1)
        if answers:
            raise answers.pop(0)
        return StandInCluster()

    cluster = LazyCluster(build).try_connect()  # no seed answers: stays lazy, raises nothing
    with pytest.raises(redis_errors.ConnectionError):
        cluster.ping()
    assert cluster.ping() is True
    assert isinstance(cluster.client(), StandInCluster) and len(builds) == 3
