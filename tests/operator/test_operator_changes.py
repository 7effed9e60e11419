"""What may change in a DistillJob, and who stops the rest: the API server's schema and CEL rules
(FakeKube evaluates the generated CRD's, transition rules included), then the operator.

Only `suspend`, the grader and `ttlSecondsAfterFinished` may change after creation; a queued
job's `suspend` belongs to Kueue. Uses the session's operator (conftest `cluster`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.rest import ApiException


def rejection(call: Any) -> dict[str, Any]:
    """The API server's 422 Status for a request that must be refused."""
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 422, refused.value.body
    return json.loads(refused.value.body)


def worker_groups(cluster, name: str) -> list[str]:
    rayjob = cluster.child("RayJob", name)
    return [g["groupName"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]]


def test_kl_off_means_no_teacher_and_gae_adds_a_critic(cluster) -> None:
    cluster.new_job("pure-rl", "math-rl-baseline.yaml")
    assert worker_groups(cluster, "pure-rl") == ["rollout", "actor"]
    critic = {"replicas": 1, "gpusPerReplica": 1, "cpu": "4", "memory": "16Gi"}
    cluster.new_job(
        "with-critic", spec__algorithm__advEstimator="gae", spec__resources__critic=critic
    )
    assert worker_groups(cluster, "with-critic") == ["rollout", "actor", "teacher", "critic"]


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        (
            {"spec__resources__rollout__gpusPerReplica": 3},
            "spec.resources.rollout.gpusPerReplica",
            "multiple of tensorParallelSize",
        ),
        ({"spec__algorithm__advEstimator": "gae"}, "spec.resources", "critic"),
        (
            {"spec__training__ppoMiniBatchSize": 24},
            "spec.training.ppoMiniBatchSize",
            "must divide training.batchSize",
        ),
        ({"spec__algorithm__rolloutN": 1}, "spec.algorithm.rolloutN", "at least 2"),
        ({"spec__algorithm__klEstimator": "k2"}, "spec.algorithm.klEstimator", "k2"),
        ({"spec__grader__cpu": "two"}, "spec.grader.cpu", "two"),
    ],
)
def test_api_server_rejects_invalid_jobs_naming_the_field(
    cluster, example_body, overrides: dict[str, Any], field: str, says: str
) -> None:
    body = example_body("math-distill.yaml", "default", metadata__name="bad", **overrides)
    status = rejection(lambda: cluster.create_job(body))
    assert any(c["field"] == field for c in status["details"]["causes"]), status
    assert field in status["message"] and says in status["message"]
    assert cluster.job("bad") == {}


def test_running_job_takes_only_suspend_grader_and_ttl_changes(cluster, conditions) -> None:
    cluster.new_job("steady")
    cluster.kuberay_reports("steady", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_phase("steady", "Running")

    for change, message in [
        ({"training": {"learningRate": 2e-6}}, "training is immutable"),
        ({"image": "ghcr.io/distill-operator/trainer:0.2.0"}, "image is immutable"),
        ({"resources": {"actor": {"replicas": 2}}}, "resources is immutable"),
        ({"teacher": None}, "teacher cannot be added or removed"),
    ]:
        status = rejection(lambda c=change: cluster.patch_spec("steady", c))
        assert message in status["message"], status["message"]
    assert cluster.job("steady")["metadata"]["generation"] == 1

    grader_change = {"replicas": 4, "timeoutSeconds": 30, "cpu": "4"}
    cluster.patch_spec("steady", {"grader": grader_change, "ttlSecondsAfterFinished": 60})
    grader = cluster.kube.wait_for(
        lambda: (d := cluster.child("Deployment", "steady-grader"))["spec"]["replicas"] == 4 and d
    )
    container = grader["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["GRADER_ITEM_TIMEOUT_S"], env["GRADER_WORKERS"]) == ("30.0", "4")
    assert container["resources"]["limits"]["cpu"] == "4"
    cluster.wait_job("steady", lambda s: s.get("observedGeneration") == 2)
    assert cluster.child("RayJob", "steady")["spec"]["ttlSecondsAfterFinished"] == 60
    spec = json.loads(cluster.child("ConfigMap", "steady-spec")["data"]["job.json"])["spec"]
    assert spec["grader"] == {"replicas": 4, "timeoutSeconds": 30.0, "cpu": "4", "memory": "2Gi"}
    assert cluster.job("steady")["status"]["phase"] == "Running"


def test_suspend_and_resume_reach_the_rayjob_and_grader(cluster) -> None:
    cluster.new_job("pause")
    cluster.patch_spec("pause", {"suspend": True})
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "pause")["spec"].get("suspend") is True)
    assert cluster.child("Deployment", "pause-grader")["spec"]["replicas"] == 0
    cluster.kuberay_reports("pause", jobDeploymentStatus="Suspending")
    cluster.kuberay_reports("pause", jobDeploymentStatus="Suspended")
    cluster.wait_phase("pause", "Suspended")
    assert cluster.wait_event("pause", "Suspended")["type"] == "Normal"

    cluster.patch_spec("pause", {"suspend": False})
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "pause")["spec"].get("suspend") is False)
    cluster.kube.wait_for(
        lambda: cluster.child("Deployment", "pause-grader")["spec"]["replicas"] == 2
    )
    cluster.wait_job("pause", lambda s: s.get("observedGeneration") == 3)
    cluster.kuberay_reports("pause", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_phase("pause", "Running")


def test_queued_job_leaves_suspend_to_kueue(cluster, conditions) -> None:
    cluster.new_job("queued", spec__queueName="team-math", spec__suspend=True)
    rayjob = cluster.child("RayJob", "queued")
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-math"
    assert "suspend" not in rayjob["spec"]  # Kueue's webhook sets it
    warning = cluster.wait_event("queued", "SuspendIgnored")
    assert warning["type"] == "Warning" and "team-math" in warning["message"]

    cluster.kueue_sets("queued", suspend=True)
    cluster.kuberay_reports("queued", jobDeploymentStatus="Suspended")
    waiting = cluster.wait_job(
        "queued", lambda s: conditions(s, "Suspended").get("reason") == "WaitingForAdmission"
    )
    assert waiting["phase"] == "Pending"
    assert "LocalQueue team-math" in cluster.wait_event("queued", "WaitingForAdmission")["message"]
    assert cluster.child("Deployment", "queued-grader")["spec"]["replicas"] == 2

    cluster.kueue_sets("queued", suspend=False)  # admitted
    cluster.kuberay_reports("queued", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_phase("queued", "Running")
    # A spec change re-applies the children; the DistillJob still says suspend: true, but
    # Kueue's decision stands.
    cluster.patch_spec("queued", {"grader": {"replicas": 3}})
    cluster.wait_job("queued", lambda s: s.get("observedGeneration") == 2)
    assert cluster.child("RayJob", "queued")["spec"]["suspend"] is False
    assert cluster.child("Deployment", "queued-grader")["spec"]["replicas"] == 3
