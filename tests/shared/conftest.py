"""Fixtures of the state tests: each one runs against one redis-server, a Redis Cluster and Valkey."""

import pytest

from shared.store.repository import StateRepository
from shared.store.settings import RedisMode


@pytest.fixture
def redis_client(store):
    """The store's client (the `store` fixture in tests/conftest.py makes it, empty)."""
    return store[2]


@pytest.fixture
def mode(store):
    """How that client reaches the store."""
    return RedisMode.CLUSTER if store[1] else RedisMode.SINGLE


@pytest.fixture
def repo(redis_client, mode):
    """A repository over that client, with a 30-minute cooldown."""
    return StateRepository(redis_client, cooldown_seconds=1800, mode=mode)
