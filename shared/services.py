"""What a running service is made of: the parts its requests use, built once per app."""

from dataclasses import dataclass

from flask import current_app

from shared.config import Settings
from shared.ingest import Aggregator, Source
from shared.redis_connection import connect_redis
from shared.schemas import PayloadSchema
from shared.state import StateRepository
from shared.webhook import AgentWebhook


@dataclass
class Service:
    """Everything a service's requests use, built once by the factory."""

    name: str
    path: str
    settings: Settings
    schema: PayloadSchema
    source: Source
    aggregator: Aggregator


def build_service(
    name: str, path: str, settings: Settings, schema_class: type[PayloadSchema], source: Source
) -> Service:
    """A Service from validated settings: its schema, its Redis repository and its webhook."""
    repository = StateRepository(
        connect_redis(settings),
        settings.cooldown_seconds,
        history_half_life_seconds=settings.history_half_life_hours * 3600,
    )
    return Service(
        name=name,
        path=path,
        settings=settings,
        schema=schema_class(allowed_namespaces=settings.allowed_namespaces, max_deployments=settings.max_deployments),
        source=source,
        aggregator=Aggregator(
            repository,
            AgentWebhook.from_settings(settings),
            settings.thresholds,
            settings.recommendation_headroom,
            cpu_memory_price_ratio=settings.cpu_memory_price_ratio,
        ),
    )


def init_app(app, service: Service) -> None:
    """Attach a Service to an app: its requests find it with service()."""
    app.extensions["aggregator"] = service


def service() -> Service:
    """The Service of the app handling this request."""
    return current_app.extensions["aggregator"]
