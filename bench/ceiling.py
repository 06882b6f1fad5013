"""The ceiling: the cheapest Flask app that accepts the same requests, run under the same gunicorn settings.

Its ingest endpoints only parse the JSON body and answer 201, so the service's requests per second
divided by this app's, for the same payload and load, says how much the service adds on top of
Flask, werkzeug and gunicorn themselves.
"""

from flask import Flask, jsonify, request

from shared.web.services import SERVICES


def ingest():
    """Parse the JSON body and accept it without looking at it."""
    request.get_json()
    return jsonify({}), 201


def healthz():
    """Liveness, so the benchmark can wait for start-up the same way as for the services."""
    return jsonify(status="ok")


def create_app(test_config=None):
    """Build the ceiling app; it takes no settings."""
    app = Flask(__name__)
    app.config.from_mapping(test_config or {})
    for spec in SERVICES:
        app.add_url_rule(spec.path, spec.name, ingest, methods=["POST"])
    app.add_url_rule("/healthz", "healthz", healthz)
    return app
