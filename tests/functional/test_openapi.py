"""The OpenAPI documents: valid, generated from the validating schemas, and true of the live services."""

import json
import subprocess
import sys

import pytest
import requests
from openapi_spec_validator import validate

from cost_service import create_app as create_cost_app
from devtools.harness import GunicornService, service_env
from shared.web.services import COST, FORECAST
from tests.conftest import AGENT_TOKEN, COST_TOKEN, FIXTURES, FORECAST_TOKEN, auth


@pytest.mark.parametrize("client_name", ["cost_client", "forecast_client"])
def test_document_is_valid_openapi(request, client_name):
    document = request.getfixturevalue(client_name).get("/openapi.json").get_json()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}


def test_ingest_operation_documents_every_status(cost_client):
    document = cost_client.get("/openapi.json").get_json()
    # The literal URL, not COST.path: the document is what callers code against, and it must publish
    # the contract's path whatever the descriptor says (COST.path would only compare it with itself).
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


def test_the_agents_paths_are_documented_only_when_they_are_served(base_config):
    without = create_cost_app(base_config).config["OPENAPI"]
    assert not [path for path in without["paths"] if path.startswith("/deployments")]
    document = create_cost_app({**base_config, "AGENT_TOKEN": AGENT_TOKEN}).config["OPENAPI"]
    validate(document)
    decision = document["paths"]["/deployments/{namespace}/{name}/decision"]["post"]
    assert {"200", "401", "404", "409", "422", "503"} <= set(decision["responses"])
    assert "get" in document["paths"]["/deployments/{namespace}/{name}"]


@pytest.mark.gunicorn
@pytest.mark.slow
@pytest.mark.parametrize(
    ("app_uri", "token", "paths"),
    [
        (COST.app, COST_TOKEN, "^/(?!deployments)"),
        (FORECAST.app, FORECAST_TOKEN, "^/(?!deployments)"),
        (COST.app, AGENT_TOKEN, "^/deployments"),
    ],
)
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    redis_server, redis_client, receiver, tmp_path, app_uri, token, paths
):
    env = service_env(
        redis_server.url, receiver.url, AGENT_WEBHOOK_BUDGET_SECONDS="0.5", AGENT_TOKEN=AGENT_TOKEN, LOG_LEVEL="WARNING"
    )
    service = GunicornService(app_uri, env).start(tmp_path / "service.log")
    if token == AGENT_TOKEN:
        # A deployment with an open episode, for the documented example path to find.
        seed = json.loads((FIXTURES / COST.seed).read_text())
        requests.post(f"{service.url}{COST.path}", json=seed, headers=auth(COST_TOKEN), timeout=10).raise_for_status()
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
                "--include-path-regex",
                paths,
                # On the agent's paths most generated names find nothing stored (404), and most
                # decisions name another episode (409) or an `until` out of range (422): answers
                # the document gives, which schemathesis would report as weak test data.
                *(["--warnings", "off"] if token == AGENT_TOKEN else []),
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
