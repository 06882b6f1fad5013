"""The cost service: the cost engine POSTs its payloads here (path, port and token: shared.services.COST)."""

from flask import Flask

from shared.services import COST
from shared.web import create_service_app


def create_app(test_config=None) -> Flask:
    """Build the cost service app; only COST_ENGINE_TOKEN is accepted."""
    return create_service_app(COST, test_config)
