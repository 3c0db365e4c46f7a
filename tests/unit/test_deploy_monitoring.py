"""The Grafana dashboard and the Prometheus alert rules use only series the code exports, and
the rules pass ``promtool check rules`` and their ``promtool test rules`` unit tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.plugins.deploy import DeployKit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "care-router.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"

#: Grafana's own variables, replaced by a duration before promtool parses the query.
GRAFANA_RANGES = ("$__rate_interval", "$__range", "$__interval")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: scripts/test.sh installs Debian's 'prometheus' package "
    "(apt-get install prometheus) when it runs as root; install it to run this check",
)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the rule file."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def check_series(kit: DeployKit, where: str, expr: str) -> list[str]:
    """Problems of one query: unknown series, label names no selected series carries."""
    known = kit.exported_series() | kit.prometheus_series
    problems: list[str] = []
    selected = kit.promql_series(expr)
    if not selected:
        problems.append(f"{where}: selects no series of the code: {expr}")
    for name, labels in selected.items():
        if name not in known:
            problems.append(f"{where}: {name} is not exported by pipeline/metrics.py")
            continue
        problems += [f"{where}: {name} has no label {lbl!r}" for lbl in labels - known[name]]
    carried = set().union(*(known.get(n, set()) for n in selected)) if selected else set()
    problems += [
        f"{where}: grouping by {lbl!r}, which none of its series carries"
        for lbl in kit.promql_grouping_labels(expr) - carried
    ]
    return problems


def test_every_dashboard_query_uses_only_exported_series(deploy_kit: DeployKit) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    problems = [p for title, expr in queries for p in check_series(deploy_kit, title, expr)]
    assert problems == []


def test_the_check_catches_a_series_the_code_does_not_export(deploy_kit: DeployKit) -> None:
    kit = deploy_kit
    assert check_series(kit, "x", "rate(pipeline_no_such_total[5m])")
    assert check_series(kit, "x", 'sum(pipeline_open_cases{stage="route"})')
    assert check_series(kit, "x", "sum by (channel) (pipeline_open_cases)")
    assert check_series(kit, "x", "sum by (stage) (rate(pipeline_messages_total[5m]))") == []


def test_dashboard_has_the_panels_operators_need(deploy_kit: DeployKit) -> None:
    series = {name for _, expr in dashboard_queries() for name in deploy_kit.promql_series(expr)}
    for needed in (
        "pipeline_messages_total",  # throughput per stage, outcomes, auto-reply rate
        "pipeline_end_to_end_seconds_bucket",  # p50 / p99
        "pipeline_consumer_lag",
        "pipeline_dead_letters_total",
        "pipeline_open_cases",
        "pipeline_case_events_total",  # SLA warnings and breaches
        "pipeline_deliveries_total",
        "pipeline_recontacts_total",
        "pipeline_nps_answers_total",
    ):
        assert needed in series, needed


def test_dashboard_datasource_is_the_provisioned_one() -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    source = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    datasources = yaml.safe_load(source.read_text(encoding="utf-8"))
    uid = datasources["datasources"][0]["uid"]
    (var,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert var["current"]["value"] == uid
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_alert_uses_only_exported_series_and_has_a_unit_test(deploy_kit: DeployKit) -> None:
    rules = alert_rules()
    problems = [p for r in rules for p in check_series(deploy_kit, r["alert"], r["expr"])]
    assert problems == []
    tested = {
        t["alertname"]
        for group in yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
        for t in group.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert {r["alert"] for r in rules} == tested
    assert {r["labels"]["severity"] for r in rules} <= {"warning", "critical"}


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_unit_tests_of_every_alert_pass() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = []
    for n, (_, expr) in enumerate(dashboard_queries()):
        for var in GRAFANA_RANGES:
            expr = expr.replace(var, "5m")
        rules.append({"record": f"dashboard:query{n}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "sum(("}]}]})
    )
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
