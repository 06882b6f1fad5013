"""The app factory both services share: each concern it wires is a module of its own."""

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, abort

from shared.runtime import cli, logs, metrics
from shared.runtime.settings import DEFAULTS, ConfigError, parse_settings, read_environment
from shared.web import agent_api, api, errors, json_provider, probes, request_log, services
from shared.web.services import ServiceSpec


def create_service_app(spec: ServiceSpec, test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build a service app: defaults, then the environment, then test_config on top."""
    app = Flask(spec.package)
    json_provider.init_app(app)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(read_environment())
    app.config.from_mapping(test_config or {})
    cli.init_app(app)
    try:
        settings = parse_settings(app.config, spec.token_setting)
    except ConfigError as exc:
        if not cli.under_flask_cli():
            raise
        # The operator's commands read only the settings they use (see shared/runtime/cli.py): the flask
        # command line gets an app that carries them even without tokens or a webhook URL.
        message = f"The service is not configured: {exc}"
        app.before_request(lambda: abort(503, message))
        return app
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    logs.configure(logging.getLogger("aggregator"), settings.log_level)
    service = services.build_service(spec, settings)
    services.init_app(app, service)
    request_log.init_app(app)
    errors.init_app(app)
    app.register_blueprint(api.blueprint(spec.path))
    if settings.agent_tokens:
        app.register_blueprint(agent_api.blueprint())
    probes.init_app(app, service)
    # Under the flask command line the app serves nothing: no zero series for it in a live metrics directory.
    if not cli.under_flask_cli():
        metrics.start_series(spec.package)
    return app
