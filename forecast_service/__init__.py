"""The forecast service: the forecaster POSTs /metrics/forecast here (port 8002)."""

from shared.ingest import FORECAST
from shared.schemas import ForecastPayloadSchema
from shared.web import create_service_app


def create_app(test_config=None):
    """Build the forecast service app; only FORECAST_TOKEN is accepted."""
    return create_service_app(
        __name__,
        test_config,
        path="/metrics/forecast",
        token_setting="FORECAST_TOKEN",
        schema_class=ForecastPayloadSchema,
        source=FORECAST,
    )
