"""The OpenAPI documents: valid, generated from the validating schemas, and true of the live services."""

import subprocess
import sys

import pytest
from openapi_spec_validator import validate

from cost_service import create_app as create_cost_app
from shared.services import COST, FORECAST
from tests.conftest import COST_TOKEN, FORECAST_TOKEN
from tests.support import GunicornService


@pytest.mark.parametrize("client_name", ["cost_client", "forecast_client"])
def test_document_is_valid_openapi(request, client_name):
    document = request.getfixturevalue(client_name).get("/openapi.json").get_json()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}


def test_ingest_operation_documents_every_status(cost_client):
    document = cost_client.get("/openapi.json").get_json()
    operation = document["paths"]["/metrics/cost"]["post"]
    assert set(operation["responses"]) == {"201", "400", "401", "413", "415", "422", "500", "503"}
    assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert operation["security"] == [{"bearerAuth": []}]
    assert "/metrics/forecast" not in document["paths"]


def test_document_follows_the_settings(base_config):
    app = create_cost_app({**base_config, "MAX_DEPLOYMENTS": "7", "ALLOWED_NAMESPACES": "default,shop"})
    payload = app.test_client().get("/openapi.json").get_json()["components"]["schemas"]["CostPayload"]
    assert payload["properties"]["deployments"]["maxItems"] == 7
    assert payload["properties"]["namespace"]["enum"] == ["default", "shop"]
    assert payload["additionalProperties"] is False
    item = payload["properties"]["deployments"]["items"]
    assert item["required"] == ["name", "current_requests", "current_usage"]


@pytest.mark.gunicorn
@pytest.mark.slow
@pytest.mark.parametrize(("app_uri", "token"), [(COST.app, COST_TOKEN), (FORECAST.app, FORECAST_TOKEN)])
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    redis_server, redis_client, receiver, tmp_path, app_uri, token
):
    env = {
        "REDIS_URL": redis_server.url,
        "AGENT_WEBHOOK_URL": receiver.url,
        "AGENT_WEBHOOK_BUDGET_SECONDS": "0.5",
        "COST_ENGINE_TOKEN": COST_TOKEN,
        "FORECAST_TOKEN": FORECAST_TOKEN,
        "LOG_LEVEL": "WARNING",
    }
    service = GunicornService(app_uri, env).start(tmp_path / "service.log")
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{service.url}/openapi.json",
                "-H",
                f"Authorization: Bearer {token}",
                "--checks",
                "all",
                # The schema cannot say that names are unique or that a timestamp is at most an hour
                # ahead, so some schema-valid payloads are rightly refused with 422.
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "30",
                "--seed",
                "1",
            ],
            cwd=tmp_path,  # schemathesis keeps its own files in the working directory
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        service.stop()
    assert done.returncode == 0, done.stdout[-4000:]
    assert "generated" in done.stdout and "No issues found" in done.stdout, done.stdout[-2000:]
