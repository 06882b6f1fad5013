"""Tokens never reach the logs, whatever the request does."""

import json

import pytest
import requests

from devtools.harness import GunicornService, free_port, service_env
from shared.web.services import COST, FORECAST
from tests.conftest import COST_TOKEN, FORECAST_TOKEN

# Three gunicorn services and a delivery retried until its budget runs out.
pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

ROTATED = "rotated-cost-token-0123456789"
SECRET = "whsec_bG9nLXRlc3Qtc2lnbmluZy1rZXktMDE="


def test_no_token_appears_in_any_log(redis_server, redis_client, receiver, tmp_path, cost_payload):
    token_file = tmp_path / "forecast-token"
    token_file.write_text(FORECAST_TOKEN)
    # The forecaster's token comes from its file here (FORECAST_TOKEN unset: both would be refused).
    env = service_env(
        redis_server.url,
        receiver.url,
        COST_ENGINE_TOKEN=f"{COST_TOKEN},{ROTATED}",
        FORECAST_TOKEN=None,
        FORECAST_TOKEN_FILE=str(token_file),
        LOG_LEVEL="DEBUG",
        AGENT_WEBHOOK_BUDGET_SECONDS="1",
        AGENT_WEBHOOK_SECRET=SECRET,
    )
    cost = GunicornService(COST.app, env).start(tmp_path / "cost.log")
    forecast = GunicornService(FORECAST.app, env).start(tmp_path / "forecast.log")
    broken = GunicornService(COST.app, {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).start(
        tmp_path / "broken.log"
    )
    try:
        for token in (COST_TOKEN, ROTATED, FORECAST_TOKEN, "not-a-real-token-but-secret"):
            headers = {"Authorization": f"Bearer {token}"}
            requests.post(f"{cost.url}{COST.path}", json=cost_payload, headers=headers, timeout=10)
            requests.post(f"{cost.url}{COST.path}", json={"bad": token}, headers=headers, timeout=10)
            requests.post(f"{forecast.url}{FORECAST.path}", json={}, headers=headers, timeout=10)
            requests.post(f"{broken.url}{COST.path}", json=cost_payload, headers=headers, timeout=10)
        receiver.status = 500
        redis_client.flushdb()
        response = requests.post(
            f"{cost.url}{COST.path}", json=cost_payload, headers={"Authorization": f"Bearer {ROTATED}"}, timeout=10
        )
        assert response.json()["delivery"] == "failed"
    finally:
        for service in (cost, forecast, broken):
            service.stop()
    logs = "".join((tmp_path / name).read_text() for name in ("cost.log", "forecast.log", "broken.log"))
    records = [json.loads(line) for line in logs.splitlines()]  # every line, gunicorn's included, is JSON
    assert {201, 401, 422, 503} <= {r.get("status") for r in records}
    assert any(r["message"] == "agent webhook delivery failed" for r in records)
    for secret in (COST_TOKEN, ROTATED, FORECAST_TOKEN, "not-a-real-token-but-secret", SECRET, SECRET[6:]):
        assert secret not in logs
