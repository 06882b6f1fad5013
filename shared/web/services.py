"""The two services: each one's facts, stated once here, and the parts a running one's requests use."""

from dataclasses import dataclass

from flask import Flask, current_app

from shared.core.rules import cost_gap, evaluate_cost, evaluate_forecast, forecast_gap
from shared.core.schemas import CostPayloadSchema, ForecastPayloadSchema, PayloadSchema
from shared.delivery.webhook import AgentWebhook
from shared.flow.ingest import Aggregator, Source
from shared.runtime.settings import Settings
from shared.store.connection import connect_redis
from shared.store.repository import StateRepository, claim_lease_seconds


@dataclass(frozen=True)
class ServiceSpec:
    """What distinguishes one service: the factory, `make run`, the tests and the benchmark all read it."""

    name: str  # short name: the trigger's "source", `make run`'s labels, the benchmark's endpoints
    package: str  # the Python package with create_app(): the Flask app name, and the metrics' service label
    path: str  # the ingest path its caller POSTs to
    token_setting: str  # the setting holding its caller's bearer token(s)
    schema_class: type[PayloadSchema]
    source: Source
    port: int  # where it listens in the container, the manifests and `make run`
    seed: str  # the spec's seed payload, under tests/fixtures/

    @property
    def app(self) -> str:
        """The gunicorn app spec, as the image's APP_MODULE and `make run` give it."""
        return f"{self.package}:create_app()"

    @property
    def deployment(self) -> str:
        """Its Kubernetes Deployment (and Service) name."""
        return f"{self.name}-service"


COST = ServiceSpec(
    name="cost",
    package="cost_service",
    path="/metrics/cost",
    token_setting="COST_ENGINE_TOKEN",
    schema_class=CostPayloadSchema,
    source=Source("cost", StateRepository.save_cost, cost_gap, evaluate_cost),
    port=8000,
    seed="cost_seed.json",
)
FORECAST = ServiceSpec(
    name="forecast",
    package="forecast_service",
    path="/metrics/forecast",
    token_setting="FORECAST_TOKEN",
    schema_class=ForecastPayloadSchema,
    source=Source("forecast", StateRepository.save_forecast, forecast_gap, evaluate_forecast),
    port=8002,
    seed="forecast_seed.json",
)
SERVICES = (COST, FORECAST)


@dataclass
class Service:
    """Everything a service's requests use, built once by the factory."""

    package: str  # ServiceSpec.package: the Flask app name, and the metrics' and the log lines' service
    path: str
    settings: Settings
    schema: PayloadSchema
    source: Source
    aggregator: Aggregator


def build_service(spec: ServiceSpec, settings: Settings) -> Service:
    """A Service from its descriptor and validated settings: its schema, its Redis repository and its webhook."""
    repository = StateRepository(
        connect_redis(settings),
        settings.cooldown_seconds,
        history_half_life_seconds=settings.history_half_life_hours * 3600,
        mode=settings.mode,
        claim_lease_seconds=claim_lease_seconds(settings.redis_timeout, settings.webhook_budget),
        episodes=settings.episodes,
    )
    return Service(
        package=spec.package,
        path=spec.path,
        settings=settings,
        schema=spec.schema_class(
            allowed_namespaces=settings.allowed_namespaces, max_deployments=settings.max_deployments
        ),
        source=spec.source,
        aggregator=Aggregator(
            repository,
            AgentWebhook.from_settings(settings),
            settings.thresholds,
            settings.recommendation_headroom,
            cpu_memory_price_ratio=settings.cpu_memory_price_ratio,
        ),
    )


# Where an app keeps its Service, among its Flask extensions.
EXTENSION = "service"


def init_app(app: Flask, service: Service) -> None:
    """Attach a Service to an app: its requests find it with service(), anything else with service_of(app)."""
    app.extensions[EXTENSION] = service


def service_of(app: Flask) -> Service:
    """The Service attached to `app`."""
    return app.extensions[EXTENSION]


def service() -> Service:
    """The Service of the app handling this request."""
    return service_of(current_app)
