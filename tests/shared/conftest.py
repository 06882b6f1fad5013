"""Fixtures of the state tests: each one runs against one redis-server, a Redis Cluster and Valkey."""

import pytest

from shared.store.repository import StateRepository


@pytest.fixture
def redis_client(store):
    """The store's client (the `store` fixture in tests/conftest.py makes it, empty)."""
    return store[2]


@pytest.fixture
def repo(redis_client):
    """A repository over that client, with a 30-minute cooldown."""
    return StateRepository(redis_client, cooldown_seconds=1800)
