"""What may change in a DistillJob, and who stops the rest: the API server's schema and CEL rules
(FakeKube evaluates the generated CRD's, transition rules included), then the operator; and what
the operator does when things change under it: owned objects deleted, a job suspended and its
RayJob gone, a finished job edited, Kueue holding a job back.

Only `suspend`, the grader and `ttlSecondsAfterFinished` may change after creation; a queued
job's `suspend` belongs to Kueue. Uses the session's operator (conftest `cluster`).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from conftest import tool
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
        # A looser pattern let this through, and the RayJob then failed KubeRay's schema (422,
        # retried forever, nothing in the status).
        ({"spec__resources__actor__memory": "1.2.3"}, "spec.resources.actor.memory", "1.2.3"),
        # Kueue's webhook would refuse the RayJob's label (a DNS-1123 subdomain) forever.
        ({"spec__queueName": "Team_Math"}, "spec.queueName", "should match"),
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
        ({"queueName": "team-math"}, "queueName cannot be added or removed"),
    ]:
        status = rejection(lambda c=change: cluster.patch_spec("steady", c))
        assert message in status["message"], status["message"]
    assert cluster.job("steady")["metadata"]["generation"] == 1

    grader_change = {"replicas": 4, "timeoutSeconds": 30, "cpu": "4"}
    cluster.patch_spec("steady", {"grader": grader_change, "ttlSecondsAfterFinished": 120})
    cluster.wait_job("steady", lambda s: s.get("observedGeneration") == 2)
    grader = cluster.child("Deployment", "steady-grader")
    assert grader["spec"]["replicas"] == 4
    container = grader["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["GRADER_ITEM_TIMEOUT_S"], env["GRADER_WORKERS"]) == ("30.0", "4")
    assert container["resources"]["limits"]["cpu"] == "4"
    assert cluster.child("RayJob", "steady")["spec"]["ttlSecondsAfterFinished"] == 120
    spec = json.loads(cluster.child("ConfigMap", "steady-spec")["data"]["job.json"])["spec"]
    assert spec["grader"] == {"replicas": 4, "timeoutSeconds": 30.0, "cpu": "4", "memory": "2Gi"}
    assert cluster.job("steady")["status"]["phase"] == "Running"


def test_grader_placement_taken_out_of_the_spec_leaves_the_pods(cluster) -> None:
    cluster.new_job(
        "placed",
        spec__grader__nodeSelector={"pool": "cpu"},
        spec__grader__tolerations=[{"key": "pool", "operator": "Exists"}],
    )
    pod_spec = cluster.child("Deployment", "placed-grader")["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"pool": "cpu"} and pod_spec["tolerations"]

    cluster.patch_spec("placed", {"grader": {"nodeSelector": None, "tolerations": None}})
    cluster.wait_job("placed", lambda s: s.get("observedGeneration") == 2)
    pod_spec = cluster.child("Deployment", "placed-grader")["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod_spec and "tolerations" not in pod_spec, pod_spec
    assert pod_spec["containers"][0]["name"]  # the rest of the template is still there


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


def kubectl(cluster, *args: str) -> str:
    command = [tool("kubectl"), "--kubeconfig", cluster.kube.kubeconfig, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


def test_queued_job_leaves_suspend_to_kueue(cluster, conditions) -> None:
    cluster.new_job("queued", spec__queueName="team-math", spec__suspend=True)
    rayjob = cluster.child("RayJob", "queued")
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-math"
    assert "suspend" not in rayjob["spec"]  # Kueue's webhook sets it
    warning = cluster.wait_event("queued", "SuspendIgnored")
    assert warning["type"] == "Warning" and "team-math" in warning["message"]
    status = rejection(lambda: cluster.patch_spec("queued", {"queueName": None}))
    assert "queueName cannot be added or removed" in status["message"]

    cluster.kueue_sets("queued", suspend=True)
    cluster.kuberay_reports("queued", jobDeploymentStatus="Suspended")
    waiting = cluster.wait_job(
        "queued", lambda s: conditions(s, "Suspended").get("reason") == "WaitingForAdmission"
    )
    assert waiting["phase"] == "Pending" and waiting["reason"] == "WaitingForAdmission"
    assert "LocalQueue team-math" in cluster.wait_event("queued", "WaitingForAdmission")["message"]
    # Nothing to grade until Kueue admits it.
    cluster.kube.wait_for(
        lambda: cluster.child("Deployment", "queued-grader")["spec"]["replicas"] == 0
    )
    # Kueue's scheduler explains the wait on its Workload: the operator passes it on.
    quota = "couldn't assign flavors to pod set rollout: insufficient quota for nvidia.com/gpu"
    cluster.kueue_workload(
        "queued",
        conditions=[
            {
                "type": "QuotaReserved",
                "status": "False",
                "reason": "Pending",
                "message": quota,
                "lastTransitionTime": "2030-01-01T00:00:00Z",
            }
        ],
    )
    cluster.wait_job("queued", lambda s: s.get("admission") == quota)
    assert cluster.wait_event("queued", "WaitingForQuota")["message"] == quota
    _, row = kubectl(cluster, "get", "dj", "queued").splitlines()
    assert row.split()[:4] == ["queued", "Pending", "team-math", "WaitingForAdmission"]
    described = kubectl(cluster, "describe", "dj", "queued")
    assert quota in described[: described.index("Events:")]  # in the status, not only Events

    cluster.kueue_sets("queued", suspend=False)  # admitted
    cluster.kuberay_reports("queued", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_phase("queued", "Running")
    cluster.kube.wait_for(
        lambda: cluster.child("Deployment", "queued-grader")["spec"]["replicas"] == 2
    )
    # A spec change re-applies the children; the DistillJob still says suspend: true, but
    # Kueue's decision stands.
    cluster.patch_spec("queued", {"grader": {"replicas": 3}})
    cluster.wait_job("queued", lambda s: s.get("observedGeneration") == 2)
    assert cluster.child("RayJob", "queued")["spec"]["suspend"] is False
    assert cluster.child("Deployment", "queued-grader")["spec"]["replicas"] == 3


def test_suspended_job_whose_rayjob_is_deleted_resumes_from_its_checkpoint(
    cluster, trainer_metrics
) -> None:
    """Kueue preempts by suspending; KubeRay then deletes the cluster, and the RayJob may go
    too. Whatever is deleted comes back, and the new RayJob continues from the newest
    checkpoint (the trainer finds it; the command stays the same)."""
    cluster.new_job("preempted")
    first = cluster.child("RayJob", "preempted")
    assert "--resume-from" not in first["spec"]["entrypoint"]
    trainer_metrics.set("preempted", training_step=230, training_last_checkpoint_step=200)
    cluster.kuberay_reports("preempted", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_job("preempted", lambda s: (s.get("lastCheckpoint") or {}).get("step") == 200)

    cluster.patch_spec("preempted", {"suspend": True})
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "preempted")["spec"].get("suspend"))
    cluster.kuberay_reports("preempted", jobDeploymentStatus="Suspended")
    cluster.wait_phase("preempted", "Suspended")
    cluster.delete_child("RayJob", "preempted")  # as KubeRay's deletionStrategy may
    cluster.delete_child("Deployment", "preempted-grader")  # and someone tidying up

    def recreated() -> dict[str, Any] | None:
        rayjob = cluster.child("RayJob", "preempted")
        same = rayjob is None or rayjob["metadata"]["uid"] == first["metadata"]["uid"]
        return None if same else rayjob

    rayjob = cluster.kube.wait_for(recreated)
    assert rayjob["spec"]["entrypoint"] == first["spec"]["entrypoint"]
    checkpoint = "s3://distill-checkpoints/math-distill/global_step_200/"
    assert rayjob["spec"]["suspend"] is True  # still suspended, as the DistillJob says
    grader = cluster.kube.wait_for(lambda: cluster.child("Deployment", "preempted-grader"))
    assert grader["spec"]["replicas"] == 0
    restored = cluster.kube.wait_for(
        lambda: next(
            (
                e
                for e in cluster.events("preempted")
                if e["reason"] == "ChildRestored" and checkpoint in e["message"]
            ),
            None,
        )
    )
    assert restored["type"] == "Warning"
    # Both children went; whichever deletion the operator saw first names the Event and
    # restores both (the two watches race), so either may come first.
    deleted, created = restored["message"].split(" was deleted; created again: ")
    assert deleted in ("RayJob preempted", "Deployment preempted-grader")
    assert "RayJob preempted" in created.split("; ")[0].split(", ")

    cluster.patch_spec("preempted", {"suspend": False})
    cluster.kube.wait_for(
        lambda: cluster.child("RayJob", "preempted")["spec"].get("suspend") is False
    )
    # Unsuspended, KubeRay runs that same command: no checkpoint fixed in it can go stale.
    assert "--resume-from" not in cluster.child("RayJob", "preempted")["spec"]["entrypoint"]


def test_finished_job_never_runs_again(cluster, example_body) -> None:
    body = example_body("math-distill.yaml", "default", metadata__name="done")
    del body["spec"]["checkpoint"]
    cluster.create_job(body)
    cluster.kube.wait_for(lambda: cluster.child("RayJob", "done"))
    assert cluster.wait_event("done", "ResultsNotKept")["type"] == "Warning"
    cluster.kuberay_reports("done", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_phase("done", "Succeeded")
    # The finished cluster's TTL still follows the spec: 0 frees its GPUs now.
    cluster.patch_spec("done", {"ttlSecondsAfterFinished": 0})
    cluster.wait_job("done", lambda s: s.get("observedGeneration") == 2)
    assert cluster.child("RayJob", "done")["spec"]["ttlSecondsAfterFinished"] == 0
    assert cluster.child("RayJob", "done")["spec"].get("suspend") is not True
    cluster.delete_child("RayJob", "done")
    # A spec edit re-applies every child, and a deleted Service is restored: both run the same
    # reconciliation, which must leave the finished job's RayJob deleted.
    cluster.patch_spec("done", {"grader": {"replicas": 3}})
    cluster.wait_job("done", lambda s: s.get("observedGeneration") == 3)
    cluster.delete_child("Service", "done-trainer")
    cluster.kube.wait_for(lambda: cluster.child("Service", "done-trainer"))
    assert cluster.child("RayJob", "done") is None
    assert cluster.child("Deployment", "done-grader")["spec"]["replicas"] == 0
    assert cluster.job("done")["status"]["phase"] == "Succeeded"
