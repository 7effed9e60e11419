"""The chart's PodMonitors and ServiceMonitor select what the operator really creates."""

from __future__ import annotations

from typing import Any

from chart.helpers import FULL_VALUES, REPO_ROOT, find, load_yaml

from distill_api import load_job
from distill_operator.builders import build_grader_deployment, build_rayjob


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _job_pods() -> dict[str, dict[str, Any]]:
    document = load_yaml(REPO_ROOT / "examples" / "math-distill.yaml")
    document["metadata"]["uid"] = "6f1c2a8e-0000-4000-8000-000000000001"  # as the API server sets
    job = load_job(document)
    cluster = build_rayjob(job)["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]
    workers = cluster["workerGroupSpecs"]
    grader = build_grader_deployment(job)["spec"]["template"]
    return {"trainer": head, "grader": grader, "worker": workers[0]["template"]}


def _port_names(pod: dict[str, Any]) -> set[str]:
    return {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}


def test_pod_monitors_scrape_the_trainer_and_grader_pods(render) -> None:
    monitors = {
        m["metadata"]["name"]: m["spec"]
        for m in find(render("--values", str(FULL_VALUES)), "PodMonitor")
    }
    pods = _job_pods()
    for component in ("trainer", "grader"):
        spec = monitors[f"distill-{component}"]
        selected = [
            name
            for name, pod in pods.items()
            if _selects(spec["selector"], pod["metadata"]["labels"])
        ]
        assert selected == [component]
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["port"] in _port_names(pods[component])
        assert endpoint["path"] == "/metrics"
        assert spec["namespaceSelector"] == {"matchNames": ["ml-research", "ml-prod"]}
    assert find(render(), "PodMonitor") == []


def test_service_monitor_selects_only_the_operator_service(render) -> None:
    objects = render("--values", str(FULL_VALUES))
    (monitor,) = find(objects, "ServiceMonitor")
    (service,) = find(objects, "Service")
    assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # A DistillJob named like the release must not end up behind the operator's Service.
    for pod in _job_pods().values():
        labels = {**pod["metadata"]["labels"], "app.kubernetes.io/instance": "distill"}
        assert not all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
