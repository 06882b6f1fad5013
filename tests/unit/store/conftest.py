"""Fixtures of the store's unit tests: a repository over each store (redis-server, Cluster, Valkey), StoreSettings."""

import pytest

from shared.runtime.settings import DEFAULTS, parse_store_settings
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


@pytest.fixture
def store_settings():
    """A function giving StoreSettings parsed from the defaults with the settings given as keywords."""
    return lambda **overrides: parse_store_settings({**DEFAULTS, **overrides})
