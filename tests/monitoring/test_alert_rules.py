"""The alert rules (share/prometheus/levity-alerts.yml) through promtool: `check rules`, and
`test rules` on the unit tests in levity-alerts.test.yml, which this module writes from CASES.

promtool compares an alert's annotations exactly, so the expected ones are the rule's own
templates with the case's labels filled in (the rules use $labels only). After changing the
rules or CASES, regenerate the test file and review its diff:
    LEVITY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/monitoring
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

SHARE = Path(__file__).resolve().parents[2] / "share" / "prometheus"
RULES = SHARE / "levity-alerts.yml"
TESTS = SHARE / "levity-alerts.test.yml"
REQUIRED = {"LevityAuditEventsDropped", "LevityAuditSpoolNearlyFull", "LevityAuditBacklogGrowing",
            "LevityFluentdDown", "FluentdBufferGrowing", "LevityWorkerDown", "LevityHandshakesRefusedInBulk",
            "LevityNoChargerConnected"}

LEVITY = {"instance": "levity-1:9000", "job": "levity"}
FLUENTD = {"instance": "fluentd-1:24231", "job": "fluentd"}
ES_OUTPUT = {**FLUENTD, "plugin_id": "elasticsearch", "type": "elasticsearch"}


def series(name: str, labels: dict[str, str], values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


# alert: (input series, [(eval minutes, labels of each firing alert)]); an empty list means
# "not firing (yet)" at that time.
CASES: dict[str, tuple[list[dict], list[tuple[int, list[dict]]]]] = {
    "LevityAuditEventsDropped": (
        [series("levity_audit_events_total", {**LEVITY, "state": "dropped"}, "0x10 3x20"),
         series("levity_audit_events_total", {**LEVITY, "state": "emitted"}, "0+100x30")],
        [(5, []), (15, [{**LEVITY, "state": "dropped"}]), (30, [])]),
    "LevityAuditSpoolNearlyFull": (
        [series("levity_audit_spool_bytes", LEVITY, "0x5 900x20"),
         series("levity_audit_spool_limit_bytes", LEVITY, "1000x25")],
        [(8, []), (15, [LEVITY])]),
    "LevityAuditBacklogGrowing": (
        [series("levity_audit_unacknowledged_events", LEVITY, "0+100x40 4000x30")],
        [(10, []), (30, [LEVITY]), (65, [])]),
    "LevityFluentdDown": (
        [series("levity_fluentd_up", {**LEVITY, "server": "tcp://fluentd-1:24224"}, "1x5 0x10")],
        [(6, []), (10, [{**LEVITY, "server": "tcp://fluentd-1:24224"}])]),
    "FluentdBufferGrowing": (
        [series("fluentd_output_status_buffer_total_bytes", ES_OUTPUT, "0+100000x60")],
        [(20, []), (50, [ES_OUTPUT])]),
    "FluentdOutputRetrying": (
        [series("fluentd_output_status_retry_count", ES_OUTPUT, "0+1x30"),
         series("fluentd_output_status_buffer_queue_length", ES_OUTPUT, "5x30")],
        [(10, []), (25, [ES_OUTPUT])]),
    "LevityDown": (
        [series("up", LEVITY, "1x3 0x5")],
        [(4, []), (7, [LEVITY])]),
    "LevityWorkerDown": (
        [series("levity_workers", LEVITY, "2x15"), series("levity_workers_up", LEVITY, "2x3 1x10 2x2")],
        [(4, []), (10, [LEVITY]), (15, [])]),
    "LevityHandshakesRefusedInBulk": (
        [series("levity_handshakes_refused_total", {**LEVITY, "status": "401"}, "0+60x30"),
         series("levity_handshakes_refused_total", {**LEVITY, "status": "404"}, "0+1x30")],
        [(5, []), (20, [{"instance": LEVITY["instance"], "status": "401"}])]),
    "LevityNoChargerConnected": (
        [series("levity_connected_charge_points", {**LEVITY, "ocpp_version": "1.6"}, "3x5 0x30")],
        [(15, []), (25, [{"instance": LEVITY["instance"]}])]),
}


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def expand(template: str, labels: dict[str, str]) -> str:
    def label(match: re.Match) -> str:
        return labels[match.group(1)]

    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", label, template)
    assert "{{" not in text, f"a template beyond $labels, which the tests cannot state: {template}"
    return text


def unit_tests() -> dict:
    every = rules()
    tests = []
    for alert, (input_series, evaluations) in CASES.items():
        rule = every[alert]
        checks = []
        for minutes, firing in evaluations:
            checks.append({"eval_time": f"{minutes}m", "alertname": alert, "exp_alerts": [
                {"exp_labels": {**labels, **rule.get("labels", {})},
                 "exp_annotations": {k: expand(v, labels) for k, v in rule["annotations"].items()}}
                for labels in firing]})
        tests.append({"name": alert, "interval": "1m", "input_series": input_series, "alert_rule_test": checks})
    return {"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": tests}


class IndentedDumper(yaml.SafeDumper):
    """Sequences indented under their key, as yamllint (and ansible-lint) want them."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def render_unit_tests() -> str:
    header = ("---\n# promtool test rules levity-alerts.test.yml: unit tests of levity-alerts.yml.\n"
              "# Written by tests/monitoring/test_alert_rules.py from its CASES: edit those, not this file.\n")
    return header + yaml.dump(unit_tests(), Dumper=IndentedDumper, sort_keys=False, width=120)


def test_every_alert_has_a_summary_a_runbook_a_severity_and_a_unit_test():
    every = rules()
    assert REQUIRED <= set(every)
    for name, rule in every.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["runbook"]) > 80, f"{name}: the runbook says what to do"
        assert name in CASES, f"{name} has no promtool unit test"
        evaluations = CASES[name][1]
        assert any(firing for _, firing in evaluations) and any(not firing for _, firing in evaluations), \
            f"{name}: tested both firing and not firing"


def test_the_unit_test_file_is_up_to_date():
    text = render_unit_tests()
    if os.environ.get("LEVITY_UPDATE_GOLDEN"):
        TESTS.write_text(text)
    assert TESTS.read_text() == text, "regenerate with LEVITY_UPDATE_GOLDEN=1 and review the diff"


def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.skip("promtool not found (Debian package prometheus; scripts/test-host-setup.sh installs it), "
                    "or set PROMTOOL")
    return path


def test_promtool_check_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = subprocess.run([promtool(), "test", "rules", TESTS.name], cwd=SHARE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_catches_a_broken_rule(tmp_path):
    """The check is real: a rule with a PromQL syntax error fails it."""
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("levity_fluentd_up == 0", "levity_fluentd_up ==", 1))
    result = subprocess.run([promtool(), "check", "rules", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0


def test_rules_read_only_metrics_that_exist():
    from tests.monitoring.test_dashboards import FLUENTD_METRICS, exposed_metric_names, metric_names

    exposed = exposed_metric_names() | FLUENTD_METRICS | {"up"}
    for name, rule in rules().items():
        names = metric_names(rule["expr"])
        assert names and names <= exposed, f"{name}: {sorted(names - exposed)} not exposed"
