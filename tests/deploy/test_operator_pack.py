"""The operator pack, offline: the Grafana dashboard and the Prometheus alert rules are
valid, every PromQL expression in them parses (promql-parser, the Prometheus parser's
Rust port), every metric they name is one a jetsource service exports, they cover what
#18 asks for, and the chart ships the same files (a ConfigMap for Grafana's sidecar, a
PrometheusRule), each behind its flag."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml

from tests.deploy import exported_metrics
from tests.deploy.chart import CHART, KUBE_VERSION, ROOT, by_kind, manifests, render
from tests.deploy.exported_metrics import all_sample_names, sample_names

DASHBOARD = ROOT / "deploy" / "grafana" / "jetsource.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
MONITORING = ("monitoring.coreos.com/v1",)

SERVICES = sorted(exported_metrics.SERVICES)
# Every service process exports these about itself (jetsource.core.metrics).
SHARED = {"jetsource_build_info", "jetsource_nats_connected"}

# Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$model": ".*",
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # collapsed rows keep theirs inside
    return found


def dashboard_queries() -> dict[str, str]:
    """'panel title [refId]' -> PromQL with Grafana's variables substituted."""
    queries = {}
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[f"{panel['title']} [{target['refId']}]"] = expr
    return queries


def template_queries() -> dict[str, str]:
    """Variables' label_values(metric, label): the metric selector as PromQL."""
    found = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
        assert match, f"variable {variable['name']}: {text}"
        found[f"variable {variable['name']}"] = match.group(1)
    return found


def alert_queries() -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for rule in alert_rules()}


def all_queries() -> dict[str, str]:
    return dashboard_queries() | template_queries() | alert_queries()


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


# --- valid, parsed, every metric real -------------------------------------------------


def test_dashboard_is_valid_json_with_unique_ids_and_a_prometheus_datasource() -> None:
    board = dashboard()
    assert board["uid"] == "jetsource-overview" and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


@pytest.mark.parametrize(("where", "expr"), sorted(all_queries().items()))
def test_every_promql_expression_parses(where: str, expr: str) -> None:
    assert "$" not in expr, f"{where}: an unsubstituted Grafana variable"
    promql_parser.parse(expr)  # raises ValueError on anything Prometheus would refuse


def test_the_parser_refuses_broken_promql() -> None:
    for broken in ("rate(x[5m]", "sum by (le (x)", "x{a=}", "histogram_quantile(0.99, )"):
        with pytest.raises(ValueError):
            promql_parser.parse(broken)


def test_every_metric_used_is_exported_by_some_service() -> None:
    exported = all_sample_names()
    used = {name: where for where, expr in all_queries().items() for name in metric_names(expr)}
    assert len(used) >= 15
    unknown = {name: where for name, where in used.items() if name not in exported}
    assert not unknown, f"not exported by any service: {unknown}"


def test_a_misspelled_metric_would_be_caught() -> None:
    assert "jetsource_projector_lags" not in all_sample_names()
    assert metric_names("sum(rate(jetsource_projector_lags[5m])) / on() group_left x") == {
        "jetsource_projector_lags",
        "x",
    }


# --- what #18 asks for ----------------------------------------------------------------


def used_by_dashboard() -> set[str]:
    return {n for expr in dashboard_queries().values() for n in metric_names(expr)}


def test_dashboard_shows_what_operators_need() -> None:
    used = used_by_dashboard()
    assert {
        "jetsource_publisher_commands_total",  # command rate and outcomes
        "jetsource_publisher_command_seconds_bucket",  # command latency
        "jetsource_projector_lag",
        "jetsource_projector_freshness_seconds_bucket",
        "jetsource_projector_dead_letters_pending",
        "jetsource_projector_stalled",
        "jetsource_query_seconds_bucket",
        "jetsource_nats_connected",
        "jetsource_build_info",
        "jetsource_observer_events_total",  # events recorded per second by outcome
        "jetsource_observer_call_seconds_bucket",
        "jetsource_observer_writable",
        "jetsource_process_query_requests_total",
        "jetsource_process_query_seconds_bucket",
        "jetsource_process_query_watches",
        "jetsource_omni_webhooks_total",  # webhooks by provider and HTTP status
        "jetsource_omni_webhook_seconds_bucket",
        "jetsource_omni_query_requests_total",  # OmniQueryService (gRPC) by outcome
        "jetsource_omni_query_seconds_bucket",
        "jetsource_omni_api_requests_total",  # REST reads by route and status
        "jetsource_omni_api_seconds_bucket",
    } <= used
    queries = dashboard_queries().values()
    for histogram in (
        "freshness_seconds_bucket",
        "jetsource_observer_call_seconds_bucket",
        "jetsource_process_query_seconds_bucket",
        "jetsource_omni_webhook_seconds_bucket",
        "jetsource_omni_query_seconds_bucket",
        "jetsource_omni_api_seconds_bucket",
    ):
        latencies = [e for e in queries if histogram in e]
        assert any(e.startswith("histogram_quantile(0.5,") for e in latencies), histogram
        assert any(e.startswith("histogram_quantile(0.99,") for e in latencies), histogram
    outcomes = [e for e in queries if "commands_total" in e]
    assert any("by (outcome)" in e for e in outcomes)
    assert any("by (outcome)" in e for e in queries if "jetsource_observer_events_total" in e)
    assert any(
        "by (provider, status)" in e for e in queries if "jetsource_omni_webhooks_total" in e
    )
    assert any("by (method, outcome)" in e for e in queries if "omni_query_requests" in e)
    # REST by route template: a raw path would be a series per id.
    assert any("route" in e and "status" in e for e in queries if "omni_api_requests" in e)
    # A watch's time is how long its stream stayed open: not a latency.
    for e in queries:
        if "jetsource_process_query_seconds_bucket" in e:
            assert 'method!~"Watch.*"' in e, e


def test_every_service_that_exports_metrics_has_a_panel() -> None:
    used = used_by_dashboard()
    for service in SERVICES:
        own = sample_names(service, skip=SHARED)
        assert own, f"{service} exports no metric of its own"
        assert own & used, f"no panel shows a metric of {service}: {sorted(own)}"
    assert {"jetsource_build_info", "jetsource_nats_connected"} <= used


def test_the_ingest_instance_label_is_read_as_exported_instance() -> None:
    """jetsource_omni_webhooks_total's own `instance` label (the messaging instance)
    collides with the scrape target's: Prometheus stores it as `exported_instance`
    (neither the compose scrape config nor the ServiceMonitor honours labels)."""
    assert "instance" in exported_metrics.label_names("ingest", "jetsource_omni_webhooks")
    for where, expr in all_queries().items():
        if "jetsource_omni_webhooks_total" in expr:
            assert not re.search(r"\binstance\b", expr), where


def test_alert_rules_cover_lag_dead_letters_errors_freshness_stalls_and_nats() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert {
        "JetsourceProjectorLagGrowing",
        "JetsourceDeadLetters",
        "JetsourceCommandErrors",
        "JetsourceFreshnessHigh",
        "JetsourceModelStalled",
        "JetsourceNatsDisconnected",
    } <= set(rules)
    needs = {
        "JetsourceProjectorLagGrowing": "jetsource_projector_lag",
        "JetsourceDeadLetters": "jetsource_projector_dead_letters_pending",
        "JetsourceCommandErrors": "jetsource_publisher_commands_total",
        "JetsourceFreshnessHigh": "jetsource_projector_freshness_seconds_bucket",
        "JetsourceModelStalled": "jetsource_projector_stalled",
        "JetsourceNatsDisconnected": "jetsource_nats_connected",
    }
    for alert, metric in needs.items():
        assert metric in metric_names(rules[alert]["expr"]), alert
    for name, rule in rules.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        # Alert templates use Go template syntax with balanced braces.
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), name
    # Dead letters fire on any; a rebuild's freshness cannot fire the freshness alert alone.
    assert rules["JetsourceDeadLetters"]["expr"].strip().endswith("> 0")
    assert rules["JetsourceFreshnessHigh"]["expr"].lstrip().startswith("min by (model)")


def test_alert_rules_cover_the_observer_process_query_and_ingest() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    needs = {
        "JetsourceObserverNotWritable": "jetsource_observer_writable",
        "JetsourceObserverRefusals": "jetsource_observer_events_total",
        "JetsourceObserverErrors": "jetsource_observer_events_total",
        "JetsourceProcessQueryErrors": "jetsource_process_query_requests_total",
        "JetsourceWebhookErrors": "jetsource_omni_webhooks_total",
        "JetsourceWebhookSignaturesRefused": "jetsource_omni_webhooks_total",
        "JetsourceWebhooksRejected": "jetsource_omni_webhooks_total",
        "JetsourceOmniQueryErrors": "jetsource_omni_query_requests_total",
        "JetsourceOmniReadErrors": "jetsource_omni_api_requests_total",
    }
    for alert, metric in needs.items():
        assert alert in rules, alert
        assert metric in metric_names(rules[alert]["expr"]), alert
    assert rules["JetsourceObserverNotWritable"]["labels"]["severity"] == "critical"
    assert rules["JetsourceObserverNotWritable"]["expr"].strip().endswith("== 0")
    assert 'outcome="refused"' in rules["JetsourceObserverRefusals"]["expr"]
    assert "unavailable|conflict|error" in rules["JetsourceObserverErrors"]["expr"]
    assert 'status=~"5.."' in rules["JetsourceWebhookErrors"]["expr"]
    assert 'status="401"' in rules["JetsourceWebhookSignaturesRefused"]["expr"]
    assert "unavailable" in rules["JetsourceOmniQueryErrors"]["expr"]
    assert 'status=~"5.."' in rules["JetsourceOmniReadErrors"]["expr"]
    # Every service with metrics of its own has an alert on one of them.
    alerted = {n for expr in alert_queries().values() for n in metric_names(expr)}
    for service in SERVICES:
        assert sample_names(service, skip=SHARED) & alerted, service


def test_every_writable_gauge_has_an_alert_and_a_panel() -> None:
    """A service that cannot store what it is sent says so in a ``*_writable`` gauge
    (publisher, observer, ingest): each one is alerted on at 0 and shown on the
    dashboard. The ingest's had neither: an ingress unable to store webhooks was seen
    only once providers' retries were answered 503 for 5 minutes."""
    writable = {n for n in all_sample_names() if n.endswith("_writable")}
    assert {"jetsource_publisher_writable", "jetsource_ingest_writable"} <= writable
    rules = {r["alert"]: r["expr"] for r in alert_rules()}
    for gauge in sorted(writable):
        alerts = [a for a, expr in rules.items() if gauge in metric_names(expr)]
        assert alerts, f"no alert on {gauge}"
        assert any(rules[a].strip().endswith("== 0") for a in alerts), gauge
        assert gauge in used_by_dashboard(), f"no panel shows {gauge}"


# --- the chart ships the same files, behind flags -------------------------------------


def test_the_chart_ships_the_same_dashboard_and_rules() -> None:
    """Helm reads files inside the chart only: the copies must not drift."""
    chart_files = CHART / "files"
    assert (chart_files / "grafana" / "jetsource.json").read_bytes() == DASHBOARD.read_bytes()
    assert (chart_files / "prometheus" / "alerts.yml").read_bytes() == ALERTS.read_bytes()


def test_no_dashboard_configmap_or_rules_unless_asked() -> None:
    docs = manifests(render(None, MONITORING))
    assert "js-jetsource-dashboard" not in by_kind(docs, "ConfigMap")
    assert by_kind(docs, "PrometheusRule") == {}


def test_the_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard() -> None:
    values = {
        "metrics": {
            "grafanaDashboard": {
                "enabled": True,
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "jetsource"},
            }
        }
    }
    docs = manifests(render(values))
    config_map = by_kind(docs, "ConfigMap")["js-jetsource-dashboard"]
    kubernetes_validate.validate(config_map, KUBE_VERSION, strict=True)
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "jetsource"}
    assert json.loads(config_map["data"]["jetsource.json"]) == dashboard()
    default_namespace = manifests(render({"metrics": {"grafanaDashboard": {"enabled": True}}}))
    assert (
        by_kind(default_namespace, "ConfigMap")["js-jetsource-dashboard"]["metadata"]["namespace"]
        == "ctx"
    )


def test_prometheus_rule_only_where_the_crd_is_served_and_asked() -> None:
    on = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}}}
    assert by_kind(manifests(render(on)), "PrometheusRule") == {}
    notes = render(on)["jetsource/templates/NOTES.txt"]
    assert "No PrometheusRule was rendered" in notes
    rules = by_kind(manifests(render(on, MONITORING)), "PrometheusRule")
    assert list(rules) == ["js-jetsource"]
    rule = rules["js-jetsource"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "ctx"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    # The spec is the rule file as is (annotation templates untouched by Helm).
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert "{{ $labels.model }}" in json.dumps(rule["spec"])


def test_production_values_turn_both_on() -> None:
    production = yaml.safe_load((CHART / "values-production.yaml").read_text())
    docs = manifests(render(production, MONITORING))
    assert "js-jetsource-dashboard" in by_kind(docs, "ConfigMap")
    rule = by_kind(docs, "PrometheusRule")["js-jetsource"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_the_chart_files_are_packaged() -> None:
    ignored = (CHART / ".helmignore").read_text().split()
    for pattern in ignored:
        assert not Path("files").match(pattern.rstrip("/")), pattern
