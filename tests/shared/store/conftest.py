"""Fixtures of the store's unit tests: StoreSettings from the documented defaults and a few overrides."""

import pytest

from shared.runtime.settings import DEFAULTS, parse_store_settings


@pytest.fixture
def store_settings():
    """A function giving StoreSettings parsed from the defaults with the settings given as keywords."""
    return lambda **overrides: parse_store_settings({**DEFAULTS, **overrides})
