"""The chart's PrometheusRule with the real promtool: the rendered rules pass `promtool
check rules`, and every alert expression fires (and only then) as tests/chart/alerts.test.yaml
says, under `promtool test rules`, pools handed from one replica to another included. Every
alert has its runbook in docs/operations.md, at an absolute URL."""

import re
import shutil
import subprocess

import pytest
import yaml

import promtool
from conftest import ROOT, helm_rendered

ALERT_TESTS = ROOT / "tests" / "chart" / "alerts.test.yaml"
DEFAULT_RUNBOOKS = yaml.safe_load((ROOT / "charts/clusterpool-operator/values.yaml").read_text())["prometheusRule"][
    "runbookBaseUrl"
]


@pytest.fixture(scope="module")
def promtool_bin():
    return str(promtool.build())


@pytest.fixture
def rules(helm_bin, tmp_path):
    """The PrometheusRule as rendered with the default values (and the gateway's alerts), as a
    plain rules file."""
    objs = helm_rendered(helm_bin, "--set", "prometheusRule.enabled=true", "--set", "gateway.enabled=true")
    rule = objs[("PrometheusRule", "rel-clusterpool-operator")]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def promtool_run(promtool_bin, *args, cwd):
    return subprocess.run([promtool_bin, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules(path):
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_the_rendered_rules_pass_promtool_check(promtool_bin, rules):
    r = promtool_run(promtool_bin, "check", "rules", str(rules), cwd=rules.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules(rules))} rules found" in r.stdout + r.stderr


def test_every_alert_fires_as_its_unit_tests_say(promtool_bin, rules):
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tested = {t["alertname"] for group in tests["tests"] for t in group["alert_rule_test"] if t["exp_alerts"]}
    assert tested == {r["alert"] for r in alert_rules(rules)}, "an alert without a firing test"
    shutil.copy(ALERT_TESTS, rules.parent / ALERT_TESTS.name)
    r = promtool_run(promtool_bin, "test", "rules", ALERT_TESTS.name, cwd=rules.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_a_wrong_expectation_fails_promtool_test(promtool_bin, rules):
    """The unit tests can fail: the same file with one alert expected a step early."""
    text = ALERT_TESTS.read_text().replace(
        "- eval_time: 8m\n        alertname: ClusterPoolPanic", "- eval_time: 6m\n        alertname: ClusterPoolPanic"
    )
    assert text != ALERT_TESTS.read_text()
    (rules.parent / "early.test.yaml").write_text(text)
    r = promtool_run(promtool_bin, "test", "rules", "early.test.yaml", cwd=rules.parent)
    assert r.returncode != 0 and "ClusterPoolPanic" in r.stdout + r.stderr


def test_the_hand_over_keeps_an_alert_only_when_series_are_merged_by_pool(promtool_bin, rules):
    """The hand-over group fails against rules that alert on each replica's series as they
    come (the chart's rules before they merged them by namespace and pool)."""
    per_series = {
        "ClusterPoolNotReady": "clusterpool_pool_ready == 0",
        "ClusterPoolEndpointsEjected": 'clusterpool_pool_endpoints{state="ejected"} > 0',
    }
    doc = yaml.safe_load(rules.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"] = per_series.get(rule.get("alert"), rule["expr"])
    rules.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(ALERT_TESTS, rules.parent / ALERT_TESTS.name)
    r = promtool_run(promtool_bin, "test", "rules", ALERT_TESTS.name, cwd=rules.parent)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'pool="moved"' in out and "ClusterPoolEndpointsEjected" in out, out


def test_every_alert_has_a_runbook_section(rules):
    doc = (ROOT / "docs" / "operations.md").read_text()
    sections = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^### (.+)$", doc, re.M)
    }
    assert DEFAULT_RUNBOOKS.startswith("https://") and DEFAULT_RUNBOOKS.endswith("/docs/operations.md")
    for rule in alert_rules(rules):
        url = rule["annotations"]["runbook_url"]
        base, section = url.split("#", 1)
        assert base == DEFAULT_RUNBOOKS and section in sections, url
        assert rule["alert"].lower() in sections
