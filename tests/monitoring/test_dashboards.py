"""The shipped dashboards: structure, and every field or metric they query exists.

Kibana (share/kibana/levity-dashboard.ndjson): saved objects that Kibana's import API accepts,
every panel resolving to a visualization in the file, every visualization on the data view of
share/kibana, and every field it aggregates or filters on mapped by the index template (a
field the template does not map would be dynamic, or absent, and the panel empty).
Grafana (share/grafana/levity-dashboard.json): every Levity metric a panel queries is one
Levity exposes (checked against levity.metrics' registry), and Fluentd's are the plugin's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from levity import metrics

SHARE = Path(__file__).resolve().parents[2] / "share"
KIBANA = SHARE / "kibana" / "levity-dashboard.ndjson"
DATA_VIEW = json.loads((SHARE / "kibana" / "ocpp-events-data-view.json").read_text())["data_view"]
TEMPLATE = json.loads((SHARE / "elasticsearch" / "ocpp-events-index-template.json").read_text())
MAPPED = set(TEMPLATE["template"]["mappings"]["properties"])
GRAFANA = SHARE / "grafana" / "levity-dashboard.json"
# fluent-plugin-prometheus' prometheus_output_monitor: the series the Fluentd panels read.
FLUENTD_METRICS = {"fluentd_output_status_buffer_total_bytes", "fluentd_output_status_buffer_queue_length",
                   "fluentd_output_status_retry_count"}
PROMQL_OPERATORS = {"and", "or", "unless"}


def saved_objects() -> list[dict]:
    lines = [line for line in KIBANA.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def visualizations() -> dict[str, dict]:
    return {o["id"]: o for o in saved_objects() if o["type"] == "visualization"}


def kql_fields(query: str) -> set[str]:
    """Field names of a KQL query's `field:value` terms."""
    return set(re.findall(r"([A-Za-z_@][\w.]*)\s*:", query))


def test_kibana_file_is_saved_objects_with_unique_ids():
    objects = saved_objects()
    assert {o["type"] for o in objects} == {"visualization", "dashboard"}
    ids = [(o["type"], o["id"]) for o in objects]
    assert len(ids) == len(set(ids))
    for o in objects:
        assert o["attributes"]["title"], o["id"]
        assert isinstance(o["references"], list)


def test_kibana_dashboard_panels_resolve_to_visualizations_in_the_file():
    [dashboard] = [o for o in saved_objects() if o["type"] == "dashboard"]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    references = {r["name"]: r for r in dashboard["references"]}
    shown = set()
    for panel in panels:
        reference = references[panel["panelRefName"]]
        assert reference["type"] == "visualization" and reference["id"] in visualizations()
        shown.add(reference["id"])
        grid = panel["gridData"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 48 and grid["h"] > 0
    assert shown == set(visualizations()), "every visualization is on the dashboard"
    cells = [(p["gridData"]["x"], p["gridData"]["y"]) for p in panels]
    assert len(cells) == len(set(cells)), "no two panels at the same place"


def test_kibana_visualizations_use_the_data_view_and_mapped_fields():
    for vid, vis in visualizations().items():
        [reference] = vis["references"]
        assert reference == {"id": DATA_VIEW["id"], "name": "kibanaSavedObjectMeta.searchSourceJSON.index",
                             "type": "index-pattern"}, vid
        search = json.loads(vis["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert search["indexRefName"] == reference["name"]
        assert search["query"]["language"] == "kuery"
        state = json.loads(vis["attributes"]["visState"])
        assert state["type"] in ("histogram", "line", "table", "pie", "metric"), vid
        assert state["aggs"] and state["aggs"][0]["schema"] == "metric"
        fields = kql_fields(search["query"]["query"])
        fields |= {agg["params"]["field"] for agg in state["aggs"] if "field" in agg["params"]}
        assert fields, vid
        assert fields <= MAPPED, f"{vid}: {sorted(fields - MAPPED)} not in the index template"
        for agg in state["aggs"]:
            if agg["type"] == "date_histogram":
                assert agg["params"]["field"] == DATA_VIEW["timeFieldName"]
            if agg["type"] == "sum":
                kind = TEMPLATE["template"]["mappings"]["properties"][agg["params"]["field"]]["type"]
                assert kind in ("long", "integer", "float"), f"{vid}: sum over a {kind}"


def test_kibana_dashboard_covers_what_operators_ask():
    queries = " ".join(json.loads(v["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
                       for v in visualizations().values())
    for event_type in ("transaction_start", "transaction_stop", "status_notification", "boot_notification",
                       "call_error", "command"):
        assert f"event_type:{event_type}" in queries


def test_kql_field_extraction_sees_fields():
    """The helper the field check relies on finds what a query names."""
    assert kql_fields("event_type:call_error or (event_type:x and not error_code:NoError)") == \
        {"event_type", "error_code"}


def exposed_metric_names() -> set[str]:
    """Every series name Levity's /metrics can have, after touching each labelled metric once."""
    metrics.set_known_actions(["Heartbeat"])
    metrics.record_call("Heartbeat", False, 0.01)
    metrics.record_command("Reset", "Accepted")
    metrics.record_refused(404)
    metrics.set_state(connected_by_version={"1.6": 1}, transactions_active=0, audit_stats={},
                      fluentd_servers={"tcp://127.0.0.1:24224": True}, spool_limit_bytes=1, calls_throttled=0)
    names = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names |= {sample.name for sample in family.samples}
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers left after dropping label
    matchers, ranges, strings, `by (...)` groupings and function names."""
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    text = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b[a-z_]+\s*\(", "(", text)
    return set(re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_:]*\b", text)) - PROMQL_OPERATORS


def grafana_expressions() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_grafana_dashboard_structure():
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_grafana_dashboard_queries_only_metrics_that_exist():
    exposed = exposed_metric_names() | FLUENTD_METRICS
    queried = set()
    for expr in grafana_expressions():
        assert expr.count("(") == expr.count(")"), expr
        names = metric_names(expr)
        assert names, expr
        queried |= names
        assert names <= exposed, f"{expr}: {sorted(names - exposed)} not exposed"
    for name in ("levity_calls_total", "levity_call_duration_seconds_bucket", "levity_connected_charge_points",
                 "levity_audit_events_total", "levity_fluentd_up", "levity_workers_up",
                 "fluentd_output_status_buffer_total_bytes"):
        assert name in queried, f"no panel shows {name}"


def test_metric_names_finds_the_series_of_an_expression():
    assert metric_names('histogram_quantile(0.95, sum by (le, action) (rate(levity_call_duration_seconds_bucket'
                        '{instance=~"$instance"}[$__rate_interval])))') == {"levity_call_duration_seconds_bucket"}
    assert metric_names("sum(levity_audit_spool_bytes) / sum(levity_audit_spool_limit_bytes)") == \
        {"levity_audit_spool_bytes", "levity_audit_spool_limit_bytes"}


@pytest.mark.parametrize("expr", ["levity_made_up_total", "rate(levity_calls_count[5m])"])
def test_the_metric_check_would_catch_a_typo(expr):
    assert not metric_names(expr) <= exposed_metric_names()
