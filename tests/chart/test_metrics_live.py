"""Live metrics: a real grader, a local trainer run on tiny models (grading through that grader)
and the operator (against FakeKube) serve every metric of docs/metrics.md and nothing
undocumented; a real Prometheus scraping them every second answers every dashboard query with
data and evaluates the alert rules without errors. The trainer trains until the module is done.

    .venv/bin/python -m pytest tests/chart/test_metrics_live.py -q     # about 30 s
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from chart.helpers import REPO_ROOT, find
from chart.live import (
    Process,
    Prometheus,
    free_port,
    has_finite_value,
    http_get,
    samples,
    scrape,
    start_operator,
    wait_until,
)
from chart.promql import dashboard_queries, documented_metrics, family
from fakekube import FakeKube

from distill_grader.client import HttpGraderClient
from distill_grader.schema import GradeRequestItem

pytestmark = pytest.mark.slow

JOB = "tiny-distill"
DJ = ("distill.dev", "v1alpha1", "distilljobs")
NAMESPACE = "default"
# prometheus_client's default collectors (the grader and the operator use the default registry).
RUNTIME_PREFIXES = ("process_", "python_")
Sample = tuple[str, frozenset[str]]  # (sample name, label names)


@dataclasses.dataclass
class Stack:
    """Everything running while the module's tests do; the trainer trains until teardown."""

    ports: dict[str, int]  # trainer, grader, operator
    trainer: Process
    prometheus: Prometheus | None
    started: float


def _sample_set(exposition: str) -> set[Sample]:
    return {(name, frozenset(labels)) for name, labels, _ in samples(exposition)}


def _tiny_job(work: Path) -> Path:
    """A gae run with a teacher, validation and checkpoints every step (every metric and phase),
    long enough to outlast the tests: the fixture stops it."""
    from distill_trainer import data, tiny

    tokenizer = tiny.build_tokenizer()
    shape = tiny.TinyModelConfig(hidden_size=32, num_layers=2, intermediate_size=64)
    for name, seed in (("student", 0), ("teacher", 1)):
        tiny.build_model(tokenizer, shape, seed=seed).save_pretrained(work / name)
        tokenizer.save_pretrained(work / name)
    paths = data.prep_arithmetic(work / "data", train=8, test=2, max_operand=9)
    job = {
        "apiVersion": "distill.dev/v1alpha1",
        "kind": "DistillJob",
        "metadata": {"name": JOB},
        "spec": {
            "student": {"model": str(work / "student")},
            "teacher": {"model": str(work / "teacher")},
            "algorithm": {"advEstimator": "gae", "rolloutN": 2},
            "training": {
                "batchSize": 2,
                "ppoMiniBatchSize": 2,
                "totalSteps": 10_000,
                "testFreq": 1,
                "saveFreq": 1,
            },
            "rollout": {"maxPromptLength": 64, "maxResponseLength": 6},
            "data": {"train": str(paths["train"]), "val": str(paths["test"])},
            "resources": {"critic": {"gpusPerReplica": 0}},
            "checkpoint": {"uri": str(work / "checkpoints")},
        },
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _start_trainer(job: Path, work: Path, port: int, grader_url: str) -> Process:
    command = [sys.executable, "-m", "distill_trainer", "run", str(job), "--backend", "inprocess",
               "--device", "cpu", "--metrics-port", str(port), "--output-dir", str(work / "out"),
               "--no-progress"]  # fmt: skip
    env = {"DISTILL_GRADER_URL": grader_url, "OMP_NUM_THREADS": "1"}
    return Process(command, work / "trainer.log", env)


def _rule_file(render, work: Path) -> Path:
    (rule,) = find(render("--set", "prometheusRule.enabled=true"), "PrometheusRule")
    path = work / "alerts.rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def _start_grader(port: int, work: Path) -> Process:
    grader = Process(
        [sys.executable, "-m", "distill_grader", "--port", str(port)],
        work / "grader.log",
        {"DISTILL_JOB_NAME": JOB},
    )

    def healthy() -> bool:
        return http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200

    try:
        wait_until(healthy, "grader /healthz", alive=grader.alive)
    except TimeoutError:
        grader.stop()
        raise AssertionError(f"grader did not start:\n{grader.log()}") from None
    return grader


def _start_prometheus(ports: dict[str, int], work: Path, rules: Path) -> Prometheus | None:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        return None
    targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    return Prometheus(binary, targets, work, (rules,))


def _submit(kube: FakeKube, job_file: Path) -> None:
    """The DistillJob the trainer runs, so the operator reconciles it (and counts that)."""
    body = yaml.safe_load(job_file.read_text())
    body["metadata"]["namespace"] = NAMESPACE
    kube.store.create(kube.store.registry.find(*DJ), NAMESPACE, body)
    kube.wait_for(lambda: kube.get("ray.io", "v1", "rayjobs", NAMESPACE, JOB), timeout=30)


@pytest.fixture(scope="module")
def stack(render, tmp_path_factory, upstream_schemas: Path) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("live")
    crds = [REPO_ROOT / "crds" / "distilljobs.distill.dev.yaml"]
    crds.append(upstream_schemas / "ray.io_rayjobs.yaml")
    ports = {"trainer": free_port(), "grader": free_port()}
    (deployment,) = find(render(), "Deployment")
    operator_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    with FakeKube(crds=crds) as kube, contextlib.ExitStack() as cleanup:
        operator, ports["operator"] = start_operator(operator_args, kube.kubeconfig, work)
        cleanup.callback(operator.stop)
        cleanup.callback(_start_grader(ports["grader"], work).stop)
        prometheus = _start_prometheus(ports, work, _rule_file(render, work))
        if prometheus is not None:
            cleanup.callback(prometheus.stop)
        job = _tiny_job(work)
        _submit(kube, job)
        started = time.time()
        url = f"http://127.0.0.1:{ports['grader']}"
        trainer = _start_trainer(job, work, ports["trainer"], url)
        cleanup.callback(trainer.stop)
        yield Stack(ports=ports, trainer=trainer, prometheus=prometheus, started=started)


@pytest.fixture(scope="module")
def served(stack: Stack) -> dict[str, set[Sample]]:
    """What each component serves, once the trainer has served every documented gauge (its
    first step, validation and checkpoint done); the grader has graded that step by then."""
    trainer_metrics = {m.name for m in documented_metrics().values() if m.component == "Trainer"}
    seen: set[Sample] = set()

    def trainer_complete() -> bool:
        status, body = http_get(f"http://127.0.0.1:{stack.ports['trainer']}/metrics", timeout=2)
        if status == 200:
            seen.update(_sample_set(body))
        return trainer_metrics <= {name for name, _ in seen}

    # On timeout, the tests name what is missing (and the trainer's log tells why).
    with contextlib.suppress(TimeoutError):
        wait_until(trainer_complete, "trainer metrics", timeout=90, alive=stack.trainer.alive)
    assert stack.trainer.alive(), stack.trainer.log()
    # The trainer's client grades trivially gradable answers itself (all of a tiny model's may
    # be), so one request of our own makes sure the grader has served a batch.
    grader_url = f"http://127.0.0.1:{stack.ports['grader']}"
    with HttpGraderClient(grader_url, fast_path=False) as client:
        client.grade(
            [GradeRequestItem(id="0", response="\\boxed{\\frac{1}{2}}", ground_truth="0.5")]
        )
    return {
        "Trainer": seen,
        "Grader": _sample_set(scrape(stack.ports["grader"])),
        "Operator": _sample_set(scrape(stack.ports["operator"])),
    }


def test_every_documented_metric_is_served_with_its_labels(served) -> None:
    problems = []
    for metric in documented_metrics().values():
        name = metric.name + ("_bucket" if metric.type == "histogram" else "")
        labels = {lbls - {"le"} for sample, lbls in served[metric.component] if sample == name}
        if not labels:
            problems.append(f"{metric.component} does not serve {name}")
        elif labels != {metric.labels}:
            problems.append(f"{name}: served labels {labels}, documented {set(metric.labels)}")
    assert problems == []


@pytest.mark.parametrize("component", ["Trainer", "Grader", "Operator"])
def test_nothing_undocumented_is_served(served, component: str) -> None:
    documented = documented_metrics()
    names = {family(sample, documented) for sample, _ in served[component]}
    ours = {name for name in names if not name.startswith(RUNTIME_PREFIXES)}
    assert {n for n in ours if n not in documented or documented[n].component != component} == set()


def _panel_expr(expr: str) -> str:
    """What Grafana would send: the job variable set, $__rate_interval at 4 × scrape interval."""
    return expr.replace("$job", JOB).replace("$__rate_interval", "4s")


def test_every_dashboard_query_returns_data(stack: Stack, served) -> None:
    if stack.prometheus is None:
        pytest.skip("prometheus not installed: run `make tools`")
    prometheus = stack.prometheus
    waiting = {f"{q.panel}: {q.expr}": _panel_expr(q.expr) for q in dashboard_queries()}

    def all_answered() -> bool:
        for panel, expr in list(waiting.items()):
            if has_finite_value(prometheus.query_range(expr, stack.started - 5, time.time())):
                del waiting[panel]
        return not waiting

    with contextlib.suppress(TimeoutError):  # the assertion names the panels left without data
        wait_until(all_answered, "panel queries", timeout=60, alive=stack.trainer.alive)
    assert sorted(waiting) == []
    jobs = prometheus.api("label/distilljob/values", **{"match[]": "training_step"})
    assert JOB in jobs  # the dashboard's `job` variable: label_values(training_step, distilljob)


def test_alert_rules_evaluate_without_errors(stack: Stack) -> None:
    if stack.prometheus is None:
        pytest.skip("prometheus not installed: run `make tools`")

    def evaluated_rules() -> list[dict]:
        groups = stack.prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        never = "0001-01-01T00:00:00Z"  # Go's zero time: not evaluated yet
        return rules if all(r["lastEvaluation"] != never for r in rules) else []

    rules = wait_until(evaluated_rules, "every rule evaluated", timeout=20)
    assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}
    assert len(rules) == 6
