"""The real operator process (`python -m distill_operator`) against the fake API server: what a
DistillJob becomes, how its status follows the RayJob, progress, deletion, observability.

KubeRay is not running: where KubeRay would move a RayJob along, the test writes the RayJob's
status itself, as KubeRay reports it, and waits (with a deadline) for the DistillJob to follow.
One operator serves the session (conftest `cluster`); each test uses its own DistillJob.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from conftest import tool

from distill_api import load_job
from distill_operator import rbac
from distill_operator.builders import build_children

FINALIZER = "distill.dev/finalizer"


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


def table_cells(header: str, row: str) -> dict[str, str]:
    """A `kubectl get` row by column, cut where the header's columns start (cells may be empty)."""
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    bounds = zip(starts, [*starts[1:], None], strict=True)
    return {header[a:b].strip(): row[a:b].strip() for a, b in bounds}


def finalizers(cluster, name: str) -> list[str]:
    return cluster.job(name).get("metadata", {}).get("finalizers") or []


def test_create_makes_the_built_objects_and_reports_pending(cluster, conditions) -> None:
    created = cluster.new_job("create")
    status = cluster.wait_job("create", lambda s: s.get("phase") and s.get("rayJobName"))
    for obj in build_children(load_job(created)):
        stored = cluster.child(obj["kind"], obj["metadata"]["name"])
        assert stored is not None, f"{obj['kind']} {obj['metadata']['name']} missing"
        # The stored RayJob passed the API server's check against KubeRay's own CRD schema, and
        # kept every field we built (nothing pruned as unknown).
        assert is_subset(obj["metadata"]["ownerReferences"], stored["metadata"]["ownerReferences"])
        assert is_subset(obj.get("spec", obj.get("data")), stored.get("spec", stored.get("data")))
    assert status["phase"] == "Pending"
    assert status["rayJobName"] == "create"
    assert conditions(status, "Created")["status"] == "True"
    assert conditions(status, "Running") | {"lastTransitionTime": None} == {
        "type": "Running",
        "status": "False",
        "reason": "RayJobCreated",
        "message": "",
        "observedGeneration": 1,
        "lastTransitionTime": None,
    }
    assert "RayJob create" in cluster.wait_event("create", "Created")["message"]
    # Handler progress lives in annotations: the strict status schema would prune status.kopf.
    job = cluster.job("create")
    assert "distill.dev/last-handled-configuration" in job["metadata"]["annotations"]
    assert "kopf" not in job["status"]
    assert finalizers(cluster, "create") == []  # nothing to clean up outside the cluster


def test_rayjob_status_drives_the_phase_to_success(cluster, conditions) -> None:
    cluster.new_job("lifecycle")
    cluster.wait_event("lifecycle", "Pending")
    cluster.kuberay_reports("lifecycle", jobDeploymentStatus="Initializing")
    cluster.wait_job(
        "lifecycle", lambda s: conditions(s, "Running").get("reason") == "RayJobInitializing"
    )
    # Still Pending, but a new step of the RayJob's own lifecycle: an Event of its own.
    initializing = cluster.wait_event("lifecycle", "RayJobInitializing")
    assert initializing["message"] == "DistillJob is Pending (RayJobInitializing)"

    cluster.kuberay_reports("lifecycle", jobDeploymentStatus="Running", jobStatus="RUNNING")
    running = cluster.wait_phase("lifecycle", "Running")
    assert conditions(running, "Running")["status"] == "True"
    assert running["startTime"]
    assert cluster.wait_event("lifecycle", "Running")["type"] == "Normal"
    # kopf's finalizer, so that it can stop the progress timer before the job goes.
    cluster.kube.wait_for(lambda: finalizers(cluster, "lifecycle") == [FINALIZER])

    # The Ray job is done but KubeRay waits for the submitter: not Succeeded yet.
    cluster.kuberay_reports("lifecycle", jobDeploymentStatus="Running", jobStatus="SUCCEEDED")
    cluster.wait_job(
        "lifecycle", lambda s: conditions(s, "Running").get("reason") == "WaitingForSubmitter"
    )
    assert cluster.job("lifecycle")["status"]["phase"] == "Running"
    cluster.kuberay_reports("lifecycle", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    done = cluster.wait_phase("lifecycle", "Succeeded")
    assert conditions(done, "Succeeded")["status"] == "True"
    assert conditions(done, "Running")["status"] == "False"
    assert done["completionTime"] >= done["startTime"]
    assert done["startTime"] == running["startTime"]
    assert done["finalModel"] == "s3://distill-checkpoints/math-distill/final/"
    assert cluster.wait_event("lifecycle", "Succeeded")["type"] == "Normal"
    # No timer for a finished job, so no finalizer; and its grader is scaled to zero.
    cluster.kube.wait_for(lambda: finalizers(cluster, "lifecycle") == [])
    cluster.kube.wait_for(
        lambda: cluster.child("Deployment", "lifecycle-grader")["spec"]["replicas"] == 0
    )


def test_failed_rayjob_fails_the_job_with_kuberays_reason(cluster, conditions) -> None:
    cluster.new_job("crash")
    cluster.kuberay_reports(
        "crash",
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 1",
    )
    status = cluster.wait_phase("crash", "Failed")
    failed = conditions(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "AppFailed")
    assert status["completionTime"]
    event = cluster.wait_event("crash", "AppFailed")
    assert event["type"] == "Warning" and "exit code 1" in event["message"]


def test_progress_timer_copies_trainer_metrics_into_status(cluster, trainer_metrics) -> None:
    cluster.new_job("progress")
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
    assert status["lastCheckpoint"] == {
        "uri": "s3://distill-checkpoints/math-distill/global_step_10/",
        "step": 10,
    }
    assert "finalModel" not in status
    trainer_metrics.set(
        "progress", training_step=13, training_step_reward=0.75, training_final_model_saved=1
    )
    status = cluster.wait_job("progress", lambda s: s.get("step") == 13)
    assert status["reward"] == 0.75
    assert status["finalModel"] == "s3://distill-checkpoints/math-distill/final/"


def test_unreachable_trainer_is_counted_not_fatal(cluster) -> None:
    operator = cluster.operator
    cluster.new_job("no-metrics")  # the test exporter answers 503 for it
    before = operator.metric("distill_operator_progress_scrape_errors_total")
    cluster.kuberay_reports("no-metrics", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_phase("no-metrics", "Running")

    def warnings() -> list[dict[str, Any]]:
        records = [json.loads(line) for line in operator.log_lines() if line.startswith("{")]
        return [
            r
            for r in records
            if r.get("k8s", {}).get("name") == "no-metrics" and r["severity"] == "warn"
        ]

    # Two failed scrapes of this job's trainer, each logged; the timer keeps going.
    logged = cluster.kube.wait_for(lambda: len(warnings()) >= 2 and warnings())
    assert "/no-metrics/metrics" in logged[0]["message"] and "503" in logged[0]["message"]
    assert operator.metric("distill_operator_progress_scrape_errors_total") >= before + 2
    status = cluster.job("no-metrics")["status"]
    assert status["phase"] == "Running" and "step" not in status


def test_deleting_a_running_job_deletes_what_it_owns(cluster) -> None:
    cluster.new_job("doomed")
    cluster.kuberay_reports("doomed", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.kube.wait_for(lambda: finalizers(cluster, "doomed") == [FINALIZER])
    cluster.delete_job("doomed")
    # The operator stops the timer and lets go; garbage collection takes the owned objects.
    cluster.kube.wait_for(lambda: not cluster.job("doomed"))
    for kind, name in [
        ("RayJob", "doomed"),
        ("Deployment", "doomed-grader"),
        ("Service", "doomed-grader"),
        ("Service", "doomed-trainer"),
        ("ConfigMap", "doomed-spec"),
    ]:
        cluster.kube.wait_for(lambda k=kind, n=name: cluster.child(k, n) is None)


def test_operator_metrics_liveness_and_json_logs(cluster) -> None:
    operator = cluster.operator
    cluster.new_job("observed")
    cluster.wait_phase("observed", "Pending")
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

    def pending() -> int:
        jobs = cluster.kube.list("distill.dev", "v1alpha1", "distilljobs", "default")
        return sum(j.get("status", {}).get("phase") == "Pending" for j in jobs)

    cluster.kube.wait_for(
        lambda: operator.metric("distill_operator_jobs", phase="Pending") == pending()
    )
    lines = operator.log_lines()  # read once: the operator keeps writing
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len(lines)
    created = next(r for r in records if r["message"].startswith("RayJob default/observed"))
    assert created["message"] == "RayJob default/observed created"
    assert created["k8s"]["name"] == "observed"  # the object a line is about, as JSON


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
    columns = header.split()
    assert columns == ["NAME", "PHASE", "QUEUE", "REASON", "STEP", "REWARD", "KL", "AGE"]
    cells = table_cells(header, row)
    assert cells["NAME"] == "math-distill" and cells["PHASE"] == "Running"
    assert (cells["STEP"], cells["REWARD"], cells["KL"]) == ("12", "0.625", "0.0312")
    # Not queued, and Running: no reason to give.
    assert cells["QUEUE"] in ("", "<none>") and cells["REASON"] in ("", "<none>")
    header, row = run("get", "distilljobs", "math-distill", "-o", "wide").splitlines()
    assert header.split()[:8] == [
        "NAME",
        "PHASE",
        "QUEUE",
        "REASON",
        "STEP",
        "TOTAL",
        "REWARD",
        "KL",
    ]
    assert "400" in row.split() and "math-distill" in row.split()[1:]

    described = run("describe", "dj", "math-distill")
    events = described[described.index("Events:") :]
    assert "Created" in events and "RayJob math-distill" in events
    assert "Running" in events


def test_every_api_call_is_covered_by_rbac(cluster, trainer_metrics) -> None:
    """A whole job lifecycle (plus whatever the session did before), then every request the
    fake API server saw must be granted by rbac.REQUIRED_PERMISSIONS."""
    cluster.new_job("audited")
    trainer_metrics.set("audited", training_step=1)
    cluster.kuberay_reports("audited", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_job("audited", lambda s: s.get("step") == 1)
    cluster.patch_spec("audited", {"suspend": True})
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "audited")["spec"].get("suspend"))
    cluster.kuberay_reports("audited", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_phase("audited", "Succeeded")
    cluster.delete_job("audited")
    cluster.kube.wait_for(lambda: not cluster.job("audited"))

    # What the tests themselves do as a user (create/patch/delete DistillJobs, delete owned
    # objects, kubectl describe) and as KubeRay or Kueue (RayJob status and suspend, Workloads).
    by_tests = {
        ("create", "distill.dev", "distilljobs"),
        ("delete", "distill.dev", "distilljobs"),
        ("delete", "", "services"),
        ("delete", "apps", "deployments"),
        ("delete", "ray.io", "rayjobs"),
        ("list", "", "events"),
        ("patch", "ray.io", "rayjobs/status"),
        ("create", "kueue.x-k8s.io", "workloads"),
        ("patch", "kueue.x-k8s.io", "workloads/status"),
    }
    seen = {(r.verb, r.group, r.rbac_resource) for r in cluster.kube.requests}
    missing = {call for call in seen - by_tests if not rbac.allows(call[1], call[2], call[0])}
    assert not missing, f"calls not in rbac.REQUIRED_PERMISSIONS: {sorted(missing)}"
    # The children are watched to notice deletions, filtered by the API server, not by kopf.
    selectors = {
        (r.resource, r.label_selector)
        for r in cluster.kube.requests
        if r.verb in ("list", "watch") and r.resource in {"configmaps", "services", "rayjobs"}
    }
    assert selectors == {
        ("configmaps", "distill.dev/job"),
        ("services", "distill.dev/job"),
        ("rayjobs", "distill.dev/job"),
    }
