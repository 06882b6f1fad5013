import subprocess
import sys

import pytest

from cost_service import create_app as create_cost_app
from devtools.harness import ROOT
from forecast_service import create_app as create_forecast_app
from shared.runtime.settings import ConfigError
from shared.web.services import COST, FORECAST, service_of
from tests.conftest import COST_TOKEN


def test_test_config_overrides_the_environment(base_config, monkeypatch):
    monkeypatch.setenv("COOLDOWN_SECONDS", "60")
    app = create_cost_app(base_config)
    assert service_of(app).settings.cooldown_seconds == 60
    app = create_cost_app({**base_config, "COOLDOWN_SECONDS": "90"})
    assert service_of(app).settings.cooldown_seconds == 90


def test_each_service_needs_only_its_own_token(base_config):
    cost_only = {k: v for k, v in base_config.items() if k != FORECAST.token_setting}
    app = create_cost_app(cost_only)
    # The cost service it built: its own name, its caller's token, and its ingest path (only its own).
    assert app.name == COST.package and service_of(app).settings.tokens == (COST_TOKEN,)
    ingest = {rule.rule for rule in app.url_map.iter_rules() if "POST" in (rule.methods or ())}
    assert COST.path in ingest and FORECAST.path not in ingest
    with pytest.raises(ConfigError, match="FORECAST_TOKEN"):
        create_forecast_app(cost_only)


def test_missing_webhook_url_is_a_clear_error(base_config, monkeypatch):
    monkeypatch.delenv("AGENT_WEBHOOK_URL", raising=False)
    with pytest.raises(ConfigError, match="AGENT_WEBHOOK_URL is required"):
        create_cost_app({**base_config, "AGENT_WEBHOOK_URL": ""})


def test_the_ingest_paths_are_the_contracts_urls():
    # The literal URLs, on purpose: every other test posts to COST.path / FORECAST.path, so this is
    # where a change of the descriptor that would move the callers' URLs gets caught.
    assert (COST.path, FORECAST.path) == ("/metrics/cost", "/metrics/forecast")


def test_each_service_serves_only_its_own_path(cost_client, forecast_client):
    assert cost_client.post(FORECAST.path, json={}).status_code == 404
    assert forecast_client.post(COST.path, json={}).status_code == 404


def start_gunicorn(env):
    """Run gunicorn on the cost app with only `env`, as the image does, until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", COST.app],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.gunicorn
def test_gunicorn_refuses_to_start_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PORT": "0", "AGENT_WEBHOOK_URL": "http://127.0.0.1:9/"}
    done = start_gunicorn(env)
    assert done.returncode == 1
    assert "Error: COST_ENGINE_TOKEN is required (or COST_ENGINE_TOKEN_FILE)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.gunicorn
@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("redis://:pw-not-for-logs@127.0.0.1:9/0?socket_timeout=abc", "Error: REDIS_URL's socket_timeout must be"),
        ("redis://:pw-not-for-logs@127.0.0.1:9/notanumber", "Error: REDIS_URL's database (the path) must be"),
        ("rediss://:pw-not-for-logs@127.0.0.1:9/0?ssl_ca_certs=/nowhere/ca.crt", "Error: REDIS_URL's ssl_ca_certs"),
    ],
)
def test_gunicorn_refuses_a_bad_redis_url_with_one_line(url, line):
    env = {"PATH": "/usr/bin:/bin", "PORT": "0", "AGENT_WEBHOOK_URL": "http://127.0.0.1:9/", "REDIS_URL": url}
    env["COST_ENGINE_TOKEN"] = "t" * 20
    done = start_gunicorn(env)
    assert done.returncode == 1
    errors = [text for text in done.stderr.splitlines() if text.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(line), done.stderr
    assert "Traceback" not in done.stderr and "pw-not-for-logs" not in done.stderr + done.stdout
