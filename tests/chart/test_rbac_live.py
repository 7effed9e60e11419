"""The real operator, started with the chart's own arguments against FakeKube, makes only API
calls that the chart's rendered (Cluster)Roles grant, cluster-wide and namespaced.

The test plays the user and KubeRay through FakeKube's store directly, so every request the
server records is the operator's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chart.helpers import CHART, REPO_ROOT, find, load_yaml
from chart.live import deep_get, start_operator
from fakekube import FakeKube

DJ = ("distill.dev", "v1alpha1", "distilljobs")
RAYJOB = ("ray.io", "v1", "rayjobs")
NAMESPACE = "team-a"


@pytest.fixture
def kube(upstream_schemas: Path) -> Iterator[FakeKube]:
    crds = [
        REPO_ROOT / "crds" / "distilljobs.distill.dev.yaml",
        upstream_schemas / "ray.io_rayjobs.yaml",
        CHART / "crds" / "kopf.dev_peerings.yaml",
    ]
    with FakeKube(crds=crds) as server:
        yield server


def _store(kube: FakeKube, verb: str, gvp: tuple[str, str, str], *args: Any) -> Any:
    resource = kube.store.registry.find(*gvp)
    return getattr(kube.store, verb)(resource, *args)


def _merge_patch(kube: FakeKube, gvp, name: str, patch: dict, subresource: str | None = None):
    return _store(
        kube, "patch", gvp, NAMESPACE, name, patch, "application/merge-patch+json", subresource
    )


def _phase(kube: FakeKube, name: str) -> str | None:
    return deep_get(kube.get(*DJ, NAMESPACE, name), "status", "phase")


def _live_a_job(kube: FakeKube) -> None:
    """Create, run, suspend, finish and delete one DistillJob, as a user and KubeRay would."""
    job = load_yaml(REPO_ROOT / "examples" / "math-distill.yaml")
    job["metadata"]["namespace"] = NAMESPACE
    _store(kube, "create", DJ, NAMESPACE, job)
    kube.wait_for(lambda: kube.get(*RAYJOB, NAMESPACE, "math-distill"), timeout=30)
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    _merge_patch(kube, RAYJOB, "math-distill", {"status": running}, "status")
    kube.wait_for(lambda: _phase(kube, "math-distill") == "Running", timeout=30)
    _merge_patch(kube, DJ, "math-distill", {"spec": {"suspend": True}})
    kube.wait_for(
        lambda: deep_get(kube.get(*RAYJOB, NAMESPACE, "math-distill"), "spec", "suspend"),
        timeout=30,
    )
    done = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    _merge_patch(kube, RAYJOB, "math-distill", {"status": done}, "status")
    kube.wait_for(lambda: _phase(kube, "math-distill") == "Succeeded", timeout=30)
    _store(kube, "delete", DJ, NAMESPACE, "math-distill")
    kube.wait_for(lambda: kube.get(*DJ, NAMESPACE, "math-distill") is None, timeout=30)


def _grants(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rules
    )


def _ungranted(kube: FakeKube, objects: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    """Recorded requests that no rendered ClusterRole, nor the Role of their namespace, grants."""
    cluster_rules = [r for role in find(objects, "ClusterRole") for r in role["rules"]]
    roles = {role["metadata"]["namespace"]: role["rules"] for role in find(objects, "Role")}
    missing = set()
    for r in kube.requests:
        resource = r.resource + (f"/{r.subresource}" if r.subresource else "")
        rules = cluster_rules + (roles.get(r.namespace, []) if r.namespace else [])
        if not _grants(rules, r.group, resource, r.verb):
            missing.add((r.verb, r.group, resource, r.namespace or "<cluster>"))
    return missing


def _operator_args(objects: list[dict[str, Any]]) -> list[str]:
    (deployment,) = find(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", f"watchNamespaces={{{NAMESPACE}}}", "--set", "replicas=2"],
    ],
    ids=["cluster-wide-standalone", "namespaced-peering"],
)
def test_operator_calls_only_what_the_chart_grants(render, kube, tmp_path, values) -> None:
    objects = render(*values)
    _store(kube, "create", ("", "v1", "namespaces"), None, {"metadata": {"name": NAMESPACE}})
    for peering in find(objects, "KopfPeering"):  # the chart's post-install hook objects
        _store(kube, "create", ("kopf.dev", "v1", "kopfpeerings"), NAMESPACE, peering)
    operator, _ = start_operator(_operator_args(objects), kube.kubeconfig, tmp_path)
    try:
        _live_a_job(kube)
    finally:
        operator.stop()
    verbs = {(r.verb, r.resource) for r in kube.requests}
    assert {("create", "rayjobs"), ("watch", "distilljobs"), ("patch", "distilljobs")} <= verbs
    if find(objects, "KopfPeering"):
        assert ("patch", "kopfpeerings") in verbs  # the replica announced itself
    assert _ungranted(kube, objects) == set()
