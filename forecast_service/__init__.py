"""The forecast service: the forecaster POSTs its payloads here (path, port and token: shared.services.FORECAST)."""

from flask import Flask

from shared.services import FORECAST
from shared.web import create_service_app


def create_app(test_config=None) -> Flask:
    """Build the forecast service app; only FORECAST_TOKEN is accepted."""
    return create_service_app(FORECAST, test_config)
