"""The PrometheusRule's alerts: valid for promtool, and firing exactly when they should.

The rules are written once (charts/distill-operator/files/alerts.yaml), rendered by Helm, and the
rendered text is what promtool checks and unit-tests (tests/chart/rules/alerts_test.yaml).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chart.helpers import FULL_VALUES, find
from conftest import tool

RULE_TESTS = Path(__file__).parent / "rules" / "alerts_test.yaml"


def _write_rules(render, path: Path, *values: str) -> dict:
    (rule,) = find(render("--set", "prometheusRule.enabled=true", *values), "PrometheusRule")
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return rule


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("values", [[], ["--values", str(FULL_VALUES)]], ids=["defaults", "full"])
def test_rendered_rules_pass_promtool_check(render, tmp_path: Path, values: list[str]) -> None:
    rules = tmp_path / "alerts.rules.yaml"
    _write_rules(render, rules, *values)
    result = _promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_alerts_fire_as_specified(render, tmp_path: Path) -> None:
    _write_rules(render, tmp_path / "alerts.rules.yaml")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode == 0, result.stdout + result.stderr


def test_thresholds_and_labels_come_from_values(render, tmp_path: Path) -> None:
    rule = _write_rules(render, tmp_path / "rules.yaml", "--values", str(FULL_VALUES))
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "DistillJobFailed",
        "DistillJobNoProgress",
        "DistillRewardFlat",
        "DistillKLExploding",
        "DistillGraderErrors",
        "DistillOperatorReconcileErrors",
    }
    assert all(a["labels"]["team"] == "ml-platform" for a in alerts.values())
    assert alerts["DistillJobFailed"]["labels"]["severity"] == "critical"
    assert "changes(training_step[45m]) == 0" in alerts["DistillJobNoProgress"]["expr"]
    assert ">= 20" in alerts["DistillRewardFlat"]["expr"]
    assert "distill_kl_per_token > 0.8" in alerts["DistillKLExploding"]["expr"]
    assert "> 0.1" in alerts["DistillGraderErrors"]["expr"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
