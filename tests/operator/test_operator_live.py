"""The real operator process (`python -m distill_operator`) against the fake API server.

KubeRay is not running: where KubeRay would move a RayJob along, the test writes the RayJob's
status itself, as KubeRay reports it, and waits (with a deadline) for the DistillJob to follow.
One operator serves the whole module; each test uses its own DistillJob.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from conftest import tool
from fakekube import FakeKube
from fakekube.fixtures import crd_paths

from distill_api import load_job
from distill_operator import rbac
from distill_operator.builders import build_children

NS = "default"
DJ = ("distill.dev", "v1alpha1", "distilljobs")
RAYJOB = ("ray.io", "v1", "rayjobs")
KINDS = {
    "ConfigMap": ("", "v1", "configmaps"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "RayJob": RAYJOB,
}


class Cluster:
    """What a user (kubectl) and KubeRay would do, through the kubernetes client."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.custom = kubernetes.client.CustomObjectsApi(kube.api_client())

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"].pop("uid", None)
        body["metadata"].pop("generation", None)
        return self.custom.create_namespaced_custom_object(*DJ[:2], NS, DJ[2], body)

    def job(self, name: str) -> dict[str, Any]:
        return self.kube.get(*DJ, NS, name) or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(*DJ[:2], NS, DJ[2], name, {"spec": spec})

    def kuberay_reports(self, name: str, **status: Any) -> None:
        self.custom.patch_namespaced_custom_object_status(
            *RAYJOB[:2], NS, RAYJOB[2], name, {"status": status}
        )

    def child(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.kube.get(*KINDS[kind], NS, name)

    def wait_job(self, name: str, check: Callable[[dict[str, Any]], Any], timeout: float = 20):
        """Wait until check(status) is truthy; returns the status."""
        return self.kube.wait_for(
            lambda: check(status := self.job(name).get("status") or {}) and status, timeout
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.kube.list("", "v1", "events", NS)
            if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "DistillJob"
        ]

    def wait_event(self, name: str, reason: str) -> dict[str, Any]:
        return self.kube.wait_for(
            lambda: next((e for e in self.events(name) if e["reason"] == reason), None)
        )


def is_subset(expected: Any, actual: Any) -> bool:
    """Every field we built is in the stored object (the server may add defaults)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and is_subset(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(is_subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return expected == actual


def condition(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == condition_type), {})


@pytest.fixture(scope="module")
def kube(repo_root: Path, shared_schemas: Path) -> Iterator[FakeKube]:
    with FakeKube(crds=crd_paths(repo_root, shared_schemas)) as server:
        yield server


@pytest.fixture(scope="module")
def operator(kube, trainer_metrics, module_operator_factory):
    return module_operator_factory(
        kube.kubeconfig,
        "--progress-interval",
        "0.3",
        "--progress-url-template",
        trainer_metrics.url_template,
    )


@pytest.fixture(scope="module")
def cluster(kube: FakeKube, operator) -> Cluster:
    return Cluster(kube)


def new_job(cluster: Cluster, example_body, name: str, **overrides: Any) -> dict[str, Any]:
    """Create a DistillJob from the math-distill example and wait until its RayJob exists."""
    created = cluster.create_job(
        example_body("math-distill.yaml", NS, metadata__name=name, **overrides)
    )
    cluster.kube.wait_for(lambda: cluster.child("RayJob", name), timeout=30)
    return created


def test_create_makes_the_built_objects_and_reports_pending(cluster, example_body) -> None:
    created = new_job(cluster, example_body, "create")
    status = cluster.wait_job("create", lambda s: s.get("phase") and s.get("rayJobName"))
    for obj in build_children(load_job(created)):
        stored = cluster.child(obj["kind"], obj["metadata"]["name"])
        assert stored is not None, f"{obj['kind']} {obj['metadata']['name']} missing"
        assert is_subset(obj["metadata"]["ownerReferences"], stored["metadata"]["ownerReferences"])
        assert is_subset(obj.get("spec", obj.get("data")), stored.get("spec", stored.get("data")))
    assert status["phase"] == "Pending"
    assert status["rayJobName"] == "create"
    assert condition(status, "Running") | {"lastTransitionTime": None} == {
        "type": "Running",
        "status": "False",
        "reason": "RayJobCreated",
        "message": "",
        "observedGeneration": 1,
        "lastTransitionTime": None,
    }
    assert "RayJob create" in cluster.wait_event("create", "Created")["message"]
    # Handler progress lives in annotations (the status schema has no room for kopf's).
    annotations = cluster.job("create")["metadata"]["annotations"]
    assert "distill.dev/last-handled-configuration" in annotations


def test_rayjob_status_drives_the_phase_to_success(cluster, example_body) -> None:
    new_job(cluster, example_body, "lifecycle")
    cluster.kuberay_reports("lifecycle", jobDeploymentStatus="Initializing")
    cluster.wait_job(
        "lifecycle", lambda s: condition(s, "Running").get("reason") == "RayJobInitializing"
    )

    cluster.kuberay_reports("lifecycle", jobDeploymentStatus="Running", jobStatus="RUNNING")
    running = cluster.wait_job("lifecycle", lambda s: s.get("phase") == "Running")
    assert condition(running, "Running")["status"] == "True"
    assert running["startTime"]
    cluster.wait_event("lifecycle", "Running")

    cluster.kuberay_reports("lifecycle", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    done = cluster.wait_job("lifecycle", lambda s: s.get("phase") == "Succeeded")
    assert condition(done, "Succeeded")["status"] == "True"
    assert condition(done, "Running")["status"] == "False"
    assert done["completionTime"] >= done["startTime"]
    assert done["startTime"] == running["startTime"]
    # The grader of a finished job is scaled to zero.
    cluster.kube.wait_for(
        lambda: cluster.child("Deployment", "lifecycle-grader")["spec"]["replicas"] == 0
    )


def test_failed_rayjob_fails_the_job_with_kuberays_reason(cluster, example_body) -> None:
    new_job(cluster, example_body, "crash")
    cluster.kuberay_reports(
        "crash",
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 1",
    )
    status = cluster.wait_job("crash", lambda s: s.get("phase") == "Failed")
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "AppFailed")
    event = cluster.wait_event("crash", "AppFailed")
    assert event["type"] == "Warning" and "exit code 1" in event["message"]


def test_suspend_and_resume_reach_the_rayjob_and_grader(cluster, example_body) -> None:
    new_job(cluster, example_body, "pause")
    cluster.patch_spec("pause", {"suspend": True})
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "pause")["spec"].get("suspend") is True)
    assert cluster.child("Deployment", "pause-grader")["spec"]["replicas"] == 0
    cluster.kuberay_reports("pause", jobDeploymentStatus="Suspended")
    cluster.wait_job("pause", lambda s: s.get("phase") == "Suspended")

    cluster.patch_spec("pause", {"suspend": False})
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "pause")["spec"].get("suspend") is False)
    cluster.kube.wait_for(
        lambda: cluster.child("Deployment", "pause-grader")["spec"]["replicas"] == 2
    )
    cluster.wait_job("pause", lambda s: s.get("observedGeneration") == 3)


def test_grader_changes_are_applied(cluster, example_body) -> None:
    new_job(cluster, example_body, "regrade")
    cluster.patch_spec("regrade", {"grader": {"replicas": 4, "timeoutSeconds": 30}})
    grader = cluster.kube.wait_for(
        lambda: (d := cluster.child("Deployment", "regrade-grader"))["spec"]["replicas"] == 4 and d
    )
    env = {
        e["name"]: e["value"] for e in grader["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["GRADER_ITEM_TIMEOUT_S"] == "30.0"
    spec = json.loads(cluster.child("ConfigMap", "regrade-spec")["data"]["job.json"])["spec"]
    assert spec["grader"] == {"replicas": 4, "timeoutSeconds": 30.0}


def test_progress_timer_copies_trainer_metrics_into_status(
    cluster, example_body, trainer_metrics, operator
) -> None:
    new_job(cluster, example_body, "progress")
    trainer_metrics.set(
        "progress",
        training_step=12,
        training_total_steps=400,
        training_step_reward=0.625,
        distill_kl_per_token=0.0312,
        val_reward=0.5,
        training_last_checkpoint_step=10,
    )
    cluster.kuberay_reports("progress", jobDeploymentStatus="Running", jobStatus="RUNNING")
    status = cluster.wait_job("progress", lambda s: s.get("step") == 12)
    assert (status["totalSteps"], status["reward"], status["klPerToken"]) == (400, 0.625, 0.0312)
    assert status["valReward"] == 0.5
    assert status["lastCheckpoint"] == "s3://distill-checkpoints/math-distill/global_step_10/"
    trainer_metrics.set("progress", training_step=13, training_step_reward=0.75)
    status = cluster.wait_job("progress", lambda s: s.get("step") == 13)
    assert status["reward"] == 0.75


def test_unreachable_trainer_is_counted_not_fatal(cluster, example_body, operator) -> None:
    new_job(cluster, example_body, "no-metrics")  # the test exporter answers 503 for it
    before = operator.metric("distill_operator_progress_scrape_errors_total")
    cluster.kuberay_reports("no-metrics", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.kube.wait_for(
        lambda: operator.metric("distill_operator_progress_scrape_errors_total") >= before + 2
    )
    status = cluster.job("no-metrics")["status"]
    assert status["phase"] == "Running" and "step" not in status


def test_deleting_the_job_deletes_what_it_owns(cluster, example_body, operator) -> None:
    new_job(cluster, example_body, "doomed")
    cluster.custom.delete_namespaced_custom_object(*DJ[:2], NS, DJ[2], "doomed")
    for kind, name in [
        ("RayJob", "doomed"),
        ("Deployment", "doomed-grader"),
        ("Service", "doomed-trainer"),
        ("ConfigMap", "doomed-spec"),
    ]:
        cluster.kube.wait_for(lambda k=kind, n=name: cluster.child(k, n) is None)


def test_operator_metrics_liveness_and_json_logs(cluster, example_body, operator) -> None:
    new_job(cluster, example_body, "observed")
    cluster.wait_job("observed", lambda s: s.get("phase") == "Pending")
    assert operator.get(operator.liveness_port, "/healthz")[0] == 200
    assert (
        operator.metric(
            "distill_operator_reconcile_total", handler="distilljob_create", outcome="success"
        )
        >= 1
    )
    assert (
        operator.metric(
            "distill_operator_reconcile_duration_seconds_count", handler="rayjob_status_changed"
        )
        >= 1
    )
    jobs = {
        j["metadata"]["name"]: j.get("status", {}).get("phase") for j in cluster.kube.list(*DJ, NS)
    }
    pending = sum(phase == "Pending" for phase in jobs.values())
    cluster.kube.wait_for(
        lambda: operator.metric("distill_operator_jobs", phase="Pending") == pending
    )
    records = [json.loads(line) for line in operator.log_lines() if line.startswith("{")]
    assert len(records) == len(operator.log_lines())
    assert any(r["message"].startswith("RayJob default/observed created") for r in records)


def test_kubectl_apply_get_and_describe(cluster, trainer_metrics, repo_root) -> None:
    kubectl = tool("kubectl")

    def run(*args: str) -> str:
        command = [kubectl, "--kubeconfig", cluster.kube.kubeconfig, *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=True
        ).stdout

    assert "created" in run("apply", "-f", str(repo_root / "examples" / "math-distill.yaml"))
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "math-distill"), timeout=30)
    trainer_metrics.set(
        "math-distill",
        training_step=12,
        training_total_steps=400,
        training_step_reward=0.625,
        distill_kl_per_token=0.0312,
    )
    cluster.kuberay_reports("math-distill", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_job("math-distill", lambda s: s.get("step") == 12)

    header, row = run("get", "dj", "math-distill").splitlines()
    assert header.split() == ["NAME", "PHASE", "STEP", "REWARD", "KL", "AGE"]
    assert row.split()[:5] == ["math-distill", "Running", "12", "0.625", "0.0312"]
    header, row = run("get", "distilljobs", "math-distill", "-o", "wide").splitlines()
    assert header.split()[:6] == ["NAME", "PHASE", "STEP", "TOTAL", "REWARD", "KL"]
    assert "400" in row.split() and "math-distill" in row.split()[1:]

    described = run("describe", "dj", "math-distill")
    events = described[described.index("Events:") :]
    assert "Created" in events and "RayJob math-distill" in events
    assert "Running" in events


def test_every_api_call_is_covered_by_rbac(cluster, example_body, trainer_metrics) -> None:
    """A whole job lifecycle (plus whatever this module did before), then every request the
    fake API server saw must be granted by rbac.REQUIRED_PERMISSIONS."""
    new_job(cluster, example_body, "audited")
    trainer_metrics.set("audited", training_step=1)
    cluster.kuberay_reports("audited", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_job("audited", lambda s: s.get("step") == 1)
    cluster.patch_spec("audited", {"suspend": True})
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "audited")["spec"].get("suspend"))
    cluster.kuberay_reports("audited", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_job("audited", lambda s: s.get("phase") == "Succeeded")
    cluster.custom.delete_namespaced_custom_object(*DJ[:2], NS, DJ[2], "audited")

    # What the test itself does as a user (create/delete DistillJobs, kubectl describe) and as
    # KubeRay (RayJob status).
    by_test = {
        ("create", "distill.dev", "distilljobs"),
        ("delete", "distill.dev", "distilljobs"),
        ("list", "", "events"),
        ("patch", "ray.io", "rayjobs/status"),
    }
    seen = {
        (r.verb, r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""))
        for r in cluster.kube.requests
    }
    missing = {call for call in seen - by_test if not rbac.allows(call[1], call[2], call[0])}
    assert not missing, f"calls not in rbac.REQUIRED_PERMISSIONS: {sorted(missing)}"
