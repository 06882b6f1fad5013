"""The forecast service: the forecaster POSTs its payloads here (path, port and token: shared.web.services.FORECAST)."""

from flask import Flask

from shared.web.factory import create_service_app
from shared.web.services import FORECAST


def create_app(test_config=None) -> Flask:
    """Build the forecast service app; only FORECAST_TOKEN is accepted."""
    return create_service_app(FORECAST, test_config)
