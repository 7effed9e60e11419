"""The Grafana dashboard "Distillation", built with grafana-foundation-sdk (Grafana 10.1 schema).

Written to `charts/distill-operator/dashboards/distill.json` by `scripts/build_chart_assets.py`;
the chart ships it in a ConfigMap for kube-prometheus-stack's Grafana sidecar. Every query filters
on the `job` variable (label `distilljob`, which the trainer and the grader put on their metrics);
tests/chart checks each query against a real Prometheus and each metric against docs/metrics.md.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

UID = "distill-jobs"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'distilljob=~"$job"'
RATE = "$__rate_interval"
RECONCILES = "distill_operator_reconcile_total"


class Query(NamedTuple):
    expr: str
    legend: str


class PanelSpec(NamedTuple):
    title: str
    unit: str
    description: str
    queries: list[Query]
    kind: str = "timeseries"  # or "stat"
    stacked: bool = False
    width: int = 12  # of the grid's 24 columns


def _quantiles(metric: str, what: str) -> list[Query]:
    by = f"sum by (le, distilljob) (rate({metric}_bucket{{{JOB}}}[{RATE}]))"
    return [
        Query(f"histogram_quantile({q}, {by})", f"{{{{distilljob}}}} {what} p{int(q * 100)}")
        for q in (0.5, 0.95)
    ]


TRAINING = [
    PanelSpec(
        "Progress",
        "percentunit",
        "Completed training steps over the planned total.",
        [Query(f"training_step{{{JOB}}} / training_total_steps{{{JOB}}}", "{{distilljob}}")],
        kind="stat",
        width=6,
    ),
    PanelSpec(
        "Reward (train / validation)",
        "none",
        "Mean grader score of the step's rollouts, and of the last validation pass.",
        [
            Query(f"training_step_reward{{{JOB}}}", "{{distilljob}} train"),
            Query(f"val_reward{{{JOB}}}", "{{distilljob}} val"),
        ],
        width=18,
    ),
    PanelSpec(
        "Reverse KL to the teacher (per token)",
        "none",
        "Mean per-token log π_student − log π_teacher on response tokens (nats).",
        [Query(f"distill_kl_per_token{{{JOB}}}", "{{distilljob}}")],
    ),
    PanelSpec(
        "KL coefficient α",
        "none",
        "Weight of the per-token KL subtracted from the normalised advantage.",
        [Query(f"distill_kl_coef{{{JOB}}}", "{{distilljob}}")],
    ),
    PanelSpec(
        "Policy entropy",
        "none",
        "Mean per-token entropy of the student on its own rollouts (nats).",
        [Query(f"actor_entropy{{{JOB}}}", "{{distilljob}}")],
    ),
    PanelSpec(
        "Clip fractions",
        "percentunit",
        "PPO ratio clip fraction, and responses cut at maxResponseLength.",
        [
            Query(f"actor_pg_clipfrac{{{JOB}}}", "{{distilljob}} PPO clip"),
            Query(f"response_length_clip_ratio{{{JOB}}}", "{{distilljob}} length clip"),
        ],
    ),
    PanelSpec(
        "Response length",
        "none",
        "Mean generated tokens per response.",
        [Query(f"response_length_mean{{{JOB}}}", "{{distilljob}}")],
    ),
    PanelSpec(
        "Tokens per second",
        "none",
        "Prompt + response tokens processed per second of step time.",
        [Query(f"throughput_tokens_per_second{{{JOB}}}", "{{distilljob}}")],
    ),
    PanelSpec(
        "Step time by phase",
        "s",
        "Seconds each phase of the last step took (stacked); their sum is about the step time.",
        [Query(f'timing_seconds{{{JOB}, phase!="step"}}', "{{distilljob}} {{phase}}")],
        stacked=True,
        width=24,
    ),
]

GRADER = [
    PanelSpec(
        "Grader throughput",
        "reqps",
        "Grading requests and items per second.",
        [
            Query(
                f"sum by (distilljob, status) (rate(grader_requests_total{{{JOB}}}[{RATE}]))",
                "{{distilljob}} requests {{status}}",
            ),
            Query(
                f"sum by (distilljob) (rate(grader_items_total{{{JOB}}}[{RATE}]))",
                "{{distilljob}} items",
            ),
        ],
    ),
    PanelSpec(
        "Grader latency",
        "s",
        "Median and 95th percentile of request and per-item grading time.",
        _quantiles("grader_request_duration_seconds", "request")
        + _quantiles("grader_item_duration_seconds", "item"),
    ),
    PanelSpec(
        "Graded items by reason",
        "reqps",
        "Why items scored what they did (correct, wrong, timeout, …), per second.",
        [
            Query(
                f"sum by (distilljob, reason) (rate(grader_items_total{{{JOB}}}[{RATE}]))",
                "{{distilljob}} {{reason}}",
            )
        ],
        stacked=True,
    ),
]

OPERATOR = [
    PanelSpec(
        "Operator reconcile errors",
        "reqps",
        "Handler runs that raised, per second (all jobs: the operator is shared); handlers that "
        "only succeeded show 0 rather than no data.",
        [
            Query(
                f'sum by (handler) (rate({RECONCILES}{{outcome="error"}}[{RATE}]))'
                f" or sum by (handler) (rate({RECONCILES}[{RATE}])) * 0",
                "{{handler}}",
            )
        ],
    ),
    PanelSpec(
        "DistillJobs by phase",
        "none",
        "Jobs the operator knows, by status.phase.",
        [Query("sum by (phase) (distill_operator_jobs)", "{{phase}}")],
        stacked=True,
    ),
]

ROWS = [("Training", TRAINING), ("Grader", GRADER), ("Operator", OPERATOR)]


def _panel(spec: PanelSpec, panel_id: int) -> Any:
    if spec.kind == "stat":
        last = gcommon.ReduceDataOptions().calcs(["lastNotNull"])
        builder = stat.Panel().reduce_options(last)
    else:
        builder = timeseries.Panel()
        if spec.stacked:
            builder = builder.stacking(gcommon.StackingConfig().mode(common.StackingMode.NORMAL))
            builder = builder.fill_opacity(40)
    builder = builder.id(panel_id).title(spec.title).description(spec.description)
    builder = builder.unit(spec.unit).datasource(DATASOURCE).height(8).span(spec.width)
    for ref, query in zip("ABCDEFGH", spec.queries, strict=False):
        builder = builder.with_target(
            prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref)
        )
    return builder


def _variables() -> list[Any]:
    datasource = gdash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    job = (
        gdash.QueryVariable("job")
        .label("DistillJob")
        .datasource(DATASOURCE)
        .query("label_values(training_step, distilljob)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return [datasource, job]


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict (what Grafana's sidecar imports)."""
    builder = (
        gdash.Dashboard("Distillation")
        .uid(UID)
        .description("DistillJob training, grading and operator health (distill-operator).")
        .tags(["distill-operator", "distillation", "ray"])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
        .variables(_variables())
    )
    panel_id = 0
    for title, panels in ROWS:
        panel_id += 1
        builder = builder.with_row(gdash.Row(title).id(panel_id))
        for spec in panels:
            panel_id += 1
            builder = builder.with_panel(_panel(spec, panel_id))
    return json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))
