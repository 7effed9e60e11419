"""Reading docs/metrics.md and the metric names out of PromQL expressions (dashboard, alerts)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from chart.helpers import CHART, REPO_ROOT

METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
DASHBOARD = CHART / "dashboards" / "distill.json"
_ROW = re.compile(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \| (gauge|counter|histogram) \| ([^|]*) \|")
# PromQL words that look like metric names: functions, aggregations, operators, modifiers.
_KEYWORDS = {
    "abs", "and", "avg", "bool", "by", "ceil", "changes", "clamp_max", "clamp_min", "count",
    "delta", "deriv", "group_left", "group_right", "histogram_quantile", "idelta", "ignoring",
    "increase", "irate", "label_values", "max", "max_over_time", "min", "min_over_time",
    "offset", "on", "or", "quantile", "rate", "resets", "round", "sum", "topk", "unless",
    "vector", "without", "last_over_time", "avg_over_time", "absent", "humanizePercentage",
}  # fmt: skip
_SUFFIXES = ("_bucket", "_sum", "_count")


class Documented(NamedTuple):
    name: str
    type: str
    labels: frozenset[str]
    component: str  # the `## ` section it is listed under: Trainer, Grader or Operator


def documented_metrics() -> dict[str, Documented]:
    """Each table row of docs/metrics.md: `name` | type | `label`, `label` (or —) | meaning."""
    rows, section = {}, ""
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        match = _ROW.match(line)
        if match:
            name, kind, labels = match.groups()
            found = frozenset(re.findall(r"`([a-z_]+)`", labels))
            rows[name] = Documented(name, kind, found, section)
    return rows


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, ranges and `by (...)` removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    literals = re.compile(r"\d+[smhdwy]|e|Inf|NaN")  # durations, exponents, special floats
    return {w for w in words if w not in _KEYWORDS and not literals.fullmatch(w)}


def family(name: str, documented: dict[str, Documented]) -> str:
    """The documented metric a sample name belongs to: `x_bucket`/`_sum`/`_count`/`_created` of
    a histogram `x`, `x_created` of a counter `x_total`; other names stay as they are."""
    for suffix in (*_SUFFIXES, "_created"):
        base = name.removesuffix(suffix)
        if base != name and base in documented and documented[base].type == "histogram":
            return base
    counter = name.removesuffix("_created") + "_total"
    if name.endswith("_created") and counter in documented:
        return counter
    return name


class PanelQuery(NamedTuple):
    row: str
    panel: str
    expr: str


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[PanelQuery]:
    """Every target of every panel, with the row the panel sits under."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    queries, row = [], ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        for target in panel.get("targets", []):
            queries.append(PanelQuery(row, panel["title"], target["expr"]))
    return queries


def dashboard_variable_queries(dashboard: dict[str, Any] | None = None) -> list[str]:
    """The series selectors of the query variables (`label_values(SELECTOR, label)`)."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    queries = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q) for q in queries]


def selector_labels(expr: str) -> set[tuple[str, str]]:
    """(metric, label) for every label matcher written right after a metric name."""
    pairs = set()
    for metric, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            pairs.add((metric, label))
    return pairs


def alert_expressions(rendered_rules: dict[str, Any]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rendered_rules["groups"] for r in g["rules"]}


def load_rules(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())
