"""The cost service: the cost engine POSTs its payloads here (path, port and token: shared.web.services.COST)."""

from flask import Flask

from shared.web.factory import create_service_app
from shared.web.services import COST


def create_app(test_config=None) -> Flask:
    """Build the cost service app; only COST_ENGINE_TOKEN is accepted."""
    return create_service_app(COST, test_config)
