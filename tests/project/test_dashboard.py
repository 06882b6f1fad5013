"""The Grafana dashboard: well-formed, every query parses with promtool, and it covers what operators watch."""

import json
import re
import subprocess

import yaml
from prometheus_client.metrics import MetricWrapperBase

from devtools.harness import ROOT, needs_prometheus
from shared.runtime import metrics

DASHBOARD = ROOT / "deploy" / "grafana" / "aggregator.json"
# What Grafana substitutes before a query reaches Prometheus; any valid value will do for parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$service": ".+"}


def dashboard():
    """The dashboard JSON."""
    return json.loads(DASHBOARD.read_text())


def graph_panels():
    """Every panel that draws queries (rows left out)."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries():
    """(panel title, PromQL as Prometheus receives it) for every query of the dashboard."""
    found = [(panel["title"], target["expr"]) for panel in graph_panels() for target in panel["targets"]]
    found += [(a["name"], a["expr"]) for a in dashboard()["annotations"]["list"] if "expr" in a]
    service = dashboard()["templating"]["list"][1]
    found.append(("service variable", re.fullmatch(r"label_values\((.+), service\)", service["definition"]).group(1)))
    return [(title, substitute(expr)) for title, expr in found]


def substitute(expr):
    """The query with Grafana's variables replaced as Grafana would."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def exported_metric_names():
    """The sample names the services expose, from the metric objects in shared/runtime/metrics.py."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                kind_suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
                names.update(family.name + suffix for suffix in kind_suffixes.get(family.type, ("",)))
    return names


@needs_prometheus("promtool")
def test_every_query_parses_with_promtool(tmp_path):
    # promtool parses each expression as a recording rule: a PromQL syntax error fails the check.
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_the_dashboard_reads_exists():
    exported = exported_metric_names() | {"ALERTS"}
    for title, expr in queries():
        for name in re.findall(r"\b(aggregator_[a-z_]+|ALERTS)\b", expr):
            assert name in exported, f"{title}: {name} is not a metric the services export"


def test_it_shows_what_the_issue_asks_for_by_service():
    exprs = [expr for _, expr in queries()]
    wanted = {
        "ingest rate and statuses": r"sum by \(service, status\) \(rate\(aggregator_ingest_requests_total",
        "p50 latency": r"histogram_quantile\(0\.5, .*aggregator_request_duration_seconds_bucket",
        "p99 latency": r"histogram_quantile\(0\.99, .*aggregator_request_duration_seconds_bucket",
        "rule firings": r"sum by \(service, rule\) .*aggregator_rule_firings_total",
        "triggers by outcome": r"sum by \(service, outcome\) .*aggregator_triggers_total",
        "webhook duration": r"histogram_quantile\(0\.99, .*aggregator_webhook_duration_seconds_bucket",
        "redis errors": r"sum by \(service\) .*aggregator_redis_errors_total",
    }
    for what, pattern in wanted.items():
        assert any(re.search(pattern, expr) for expr in exprs), f"no panel shows {what}"
    # Every graph can be narrowed to the services picked in the dashboard's service variable.
    for panel in graph_panels():
        for target in panel["targets"]:
            assert 'service=~"$service"' in target["expr"], panel["title"]


def test_the_layout_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in columns for y in rows}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in graph_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
