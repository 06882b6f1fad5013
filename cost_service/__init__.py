"""The cost service: the cost engine POSTs /metrics/cost here (port 8000)."""

from shared.ingest import COST
from shared.schemas import CostPayloadSchema
from shared.web import create_service_app


def create_app(test_config=None):
    """Build the cost service app; only COST_ENGINE_TOKEN is accepted."""
    return create_service_app(
        __name__,
        test_config,
        path="/metrics/cost",
        token_setting="COST_ENGINE_TOKEN",
        schema_class=CostPayloadSchema,
        source=COST,
    )
