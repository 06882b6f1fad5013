"""The shipped alerts: unit-tested with promtool, one source for both deployments, and true of a real Prometheus."""

import os
import re
import shutil
import subprocess

import pytest
import requests
import yaml

from devtools.harness import ROOT, GunicornService, PrometheusServer, needs_prometheus, service_env, wait_until
from devtools.prometheus_rule import ALERTS, PROMETHEUS_RULE, prometheus_rule
from shared.web.services import COST
from tests.conftest import COST_TOKEN
from tests.project.test_dashboard import queries as dashboard_queries

ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "prometheus-rule"
SELECTOR = re.compile(r"\b(aggregator_[a-z_]+)(?:\{([^}]*)\})?")


def promtool(*args):
    """Run promtool (tests that call this carry needs_prometheus("promtool")); return the finished process."""
    return subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def alert_rules():
    """Every alerting rule of deploy/prometheus/alerts.yml."""
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


@needs_prometheus("promtool")
def test_the_rules_pass_promtools_checks():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_prometheus("promtool")
def test_each_alert_fires_on_the_first_failure_and_stays_quiet_on_healthy_traffic():
    done = promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    # Every alert has a unit test that expects it to fire.
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    expected_to_fire = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    assert expected_to_fire == {rule["alert"] for rule in alert_rules()}


def test_the_prometheus_rule_carries_the_alerts_file_unchanged():
    assert PROMETHEUS_RULE.read_text() == prometheus_rule(ALERTS.read_text()), "run `make prometheus-rule`"
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_the_prometheus_rule_is_an_optional_component():
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component" and component["resources"] == ["prometheusrule.yaml"]
    # The default renderings stay free of the operator's kind.
    for directory in ("deploy/k8s", "deploy/k8s/base", "deploy/k8s/hpa"):
        kustomization = yaml.safe_load((ROOT / directory / "kustomization.yaml").read_text())
        assert not kustomization.get("components")
        assert "prometheusrule.yaml" not in kustomization.get("resources", [])


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_an_overlay_with_the_component_renders_the_rule(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(ROOT / "deploy" / "k8s", tmp_path)],
                "components": [os.path.relpath(COMPONENT, tmp_path)],
            }
        )
    )
    done = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(done.stdout) if doc]
    assert kinds.count("PrometheusRule") == 1 and kinds.count("Deployment") == 2


def metric_page_series(page):
    """{(name, frozenset of label pairs): value} of a Prometheus text page."""
    series = {}
    for line in page.splitlines():
        match = re.fullmatch(r"([a-z_:]+)(?:\{(.*)\})? (\S+)", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            series[(match.group(1), labels)] = float(match.group(3))
    return series


@pytest.fixture
def cost_under_gunicorn(redis_server, redis_client, receiver, tmp_path):
    """The cost service under gunicorn with its own metrics directory; the agent refuses every call."""
    receiver.status = 400
    env = service_env(redis_server.url, receiver.url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    service = GunicornService(COST.app, env, workers=2).start(tmp_path / "cost.log")
    yield service
    service.stop()


@pytest.mark.gunicorn
def test_every_series_the_alerts_read_exists_at_zero_when_the_service_starts(cost_under_gunicorn):
    series = metric_page_series(requests.get(f"{cost_under_gunicorn.url}/metrics", timeout=10).text)
    for rule in alert_rules():
        for name, matchers in SELECTOR.findall(rule["expr"]):
            wanted = set(re.findall(r'(\w+)="([^"]*)"', matchers)) | {("service", "cost_service")}
            found = {key: value for key, value in series.items() if key[0] == name and wanted <= key[1]}
            assert found, f"{rule['alert']}: no {name} series with {sorted(wanted)} before any traffic"
            assert set(found.values()) == {0.0}, f"{rule['alert']}: {name} is not at zero: {found}"


@pytest.mark.prometheus
@pytest.mark.gunicorn
@needs_prometheus("prometheus")
def test_a_real_prometheus_alerts_on_the_first_failed_delivery(cost_under_gunicorn, receiver, tmp_path, cost_payload):
    target = cost_under_gunicorn.url.removeprefix("http://")
    prometheus = PrometheusServer(tmp_path / "prometheus", [target], rule_files=[ALERTS]).start()
    try:
        # Prometheus has scraped the service since its start, before anything failed.
        scraped = wait_until(lambda: prometheus.query('up{job="aggregator"} == 1'), timeout=20)
        assert scraped, "prometheus never scraped the service"
        assert prometheus.alerts() == []

        answer = requests.post(
            f"{cost_under_gunicorn.url}{COST.path}",
            json=cost_payload,
            headers={"Authorization": f"Bearer {COST_TOKEN}"},
            timeout=10,
        )
        assert answer.status_code == 201 and answer.json()["delivery"] == "failed"
        assert [call["status"] for call in receiver.calls] == [400]

        def delivery_alert():
            return [a for a in prometheus.alerts() if a["labels"]["alertname"] == "AggregatorTriggerDeliveryFailed"]

        alerts = wait_until(delivery_alert, timeout=20)
        assert alerts, "no AggregatorTriggerDeliveryFailed alert within 20 s of the first failed delivery"
        assert alerts[0]["labels"]["service"] == "cost_service"
        assert alerts[0]["state"] in ("pending", "firing")
        # Nothing else is wrong, and nothing else alerts.
        assert {a["labels"]["alertname"] for a in prometheus.alerts()} == {"AggregatorTriggerDeliveryFailed"}
        # The dashboard's queries run on this Prometheus too, and its failed deliveries panel shows this one.
        answers = {title: prometheus.query(expr) for title, expr in dashboard_queries()}
        (failed_panel,) = answers["Failed deliveries (deployments, last hour)"]
        assert failed_panel["metric"] == {"service": "cost_service"} and float(failed_panel["value"][1]) > 0
    finally:
        prometheus.stop()
