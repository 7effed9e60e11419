"""docs/metrics.md is the contract: the dashboard and the alerts use only documented metrics and
labels. (That every documented metric is served: test_metrics_live.py.)"""

from __future__ import annotations

import pytest
from chart.helpers import find
from chart.promql import (
    alert_expressions,
    dashboard_queries,
    dashboard_variable_queries,
    documented_metrics,
    family,
    metric_names,
    selector_labels,
)

# Labels Prometheus itself puts on every scraped series (target labels), and histogram buckets.
SCRAPE_LABELS = {"namespace", "pod", "instance", "job", "container", "le"}


@pytest.fixture(scope="module")
def documented():
    return documented_metrics()


@pytest.fixture(scope="module")
def alert_exprs(render) -> dict[str, str]:
    (rule,) = find(render("--set", "prometheusRule.enabled=true"), "PrometheusRule")
    return alert_expressions(rule["spec"])


def test_the_doc_lists_every_component(documented) -> None:
    kinds = {d.type for d in documented.values()}
    assert kinds == {"gauge", "counter", "histogram"}
    assert {"training_step", "grader_requests_total", "distill_operator_jobs"} <= set(documented)
    assert documented["timing_seconds"].labels == {"distilljob", "phase"}
    assert documented["distill_operator_progress_scrape_errors_total"].labels == set()


def test_dashboard_uses_only_documented_metrics(documented) -> None:
    expressions = [q.expr for q in dashboard_queries()] + dashboard_variable_queries()
    used = {family(name, documented) for expr in expressions for name in metric_names(expr)}
    assert used - set(documented) == set()
    assert len(used) >= 15  # the parsing found the panels' metrics at all


def test_alerts_use_only_documented_metrics(documented, alert_exprs) -> None:
    used = {family(n, documented) for expr in alert_exprs.values() for n in metric_names(expr)}
    assert used - set(documented) == set()
    assert {"distill_operator_jobs", "training_step", "distill_kl_per_token"} <= used


def test_label_matchers_name_documented_labels(documented, alert_exprs) -> None:
    expressions = [q.expr for q in dashboard_queries()] + list(alert_exprs.values())
    unknown = {
        (metric, label)
        for expr in expressions
        for metric, label in selector_labels(expr)
        if label not in SCRAPE_LABELS and label not in documented[family(metric, documented)].labels
    }
    assert unknown == set()


def test_job_panels_filter_on_the_job_variable() -> None:
    rows = {q.row for q in dashboard_queries()}
    assert rows == {"Training", "Grader", "Operator"}
    # The operator serves every job at once: its row is not per job.
    unfiltered = [
        q.panel for q in dashboard_queries() if q.row != "Operator" and "$job" not in q.expr
    ]
    assert unfiltered == []
