"""The operator when things go wrong: a bad spec that slipped past the API server, a restart
that finds owned objects deleted, and a name already taken by an object that is not ours.

The bad spec needs an API server that does not validate: this module serves a copy of the
DistillJob CRD whose spec schema accepts anything (as an outdated CRD would).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from fakekube import FakeKube

NS = "default"
DJ = ("distill.dev", "v1alpha1", "distilljobs")
RUNNING = {"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}


def permissive_crd(repo_root: Path) -> dict[str, Any]:
    crd = yaml.safe_load((repo_root / "crds" / "distilljobs.distill.dev.yaml").read_text())
    crd = copy.deepcopy(crd)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return crd


@pytest.fixture(scope="module")
def kube(repo_root: Path, upstream_schemas: Path) -> Iterator[FakeKube]:
    crds = [permissive_crd(repo_root), upstream_schemas / "ray.io_rayjobs.yaml"]
    with FakeKube(crds=crds) as server:
        yield server


@pytest.fixture(scope="module")
def custom(kube: FakeKube) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def create_job(custom, example_body, name: str, **overrides: Any) -> None:
    body = example_body("math-distill.yaml", NS, metadata__name=name, **overrides)
    del body["metadata"]["uid"], body["metadata"]["generation"]
    custom.create_namespaced_custom_object(*DJ[:2], NS, DJ[2], body)


def status_of(kube: FakeKube, name: str) -> dict[str, Any]:
    return (kube.get(*DJ, NS, name) or {}).get("status") or {}


def phase_is(kube: FakeKube, name: str, phase: str) -> dict[str, Any] | None:
    """The status once it reports `phase`, else None."""
    status = status_of(kube, name)
    return status if status.get("phase") == phase else None


def spec_valid(kube: FakeKube, name: str) -> dict[str, Any]:
    conditions = status_of(kube, name).get("conditions", [])
    return next((c for c in conditions if c["type"] == "SpecValid"), {})


def test_invalid_spec_fails_permanently_naming_the_field(
    kube, custom, example_body, operator_factory
) -> None:
    operator = operator_factory(kube.kubeconfig)
    create_job(custom, example_body, "typo", spec__grader={"replica": 3})
    condition = kube.wait_for(
        lambda: spec_valid(kube, "typo").get("status") == "False" and spec_valid(kube, "typo")
    )
    assert condition["reason"] == "InvalidSpec"
    assert condition["message"].startswith("spec.grader.replica: Extra inputs are not permitted")
    assert status_of(kube, "typo")["phase"] == "Failed"
    event = kube.wait_for(
        lambda: next(
            (e for e in kube.list("", "v1", "events", NS) if e["reason"] == "InvalidSpec"), None
        )
    )
    assert event["type"] == "Warning" and "spec.grader.replica" in event["message"]
    assert event["involvedObject"]["name"] == "typo"
    # Permanent: kopf ends the handling cycle (writes the handled spec) instead of retrying.
    kube.wait_for(
        lambda: (
            "distill.dev/last-handled-configuration"
            in kube.get(*DJ, NS, "typo")["metadata"].get("annotations", {})
        )
    )
    assert kube.list("ray.io", "v1", "rayjobs", NS) == []
    assert kube.get("", "v1", "configmaps", NS, "typo-spec") is None
    kube.wait_for(
        lambda: (
            operator.metric(
                "distill_operator_reconcile_total", handler="distilljob_create", outcome="error"
            )
            == 1
        )
    )

    # Fixing the spec creates the job's objects and clears the condition.
    custom.patch_namespaced_custom_object(
        *DJ[:2], NS, DJ[2], "typo", {"spec": {"grader": {"replica": None, "replicas": 3}}}
    )
    kube.wait_for(lambda: kube.get("ray.io", "v1", "rayjobs", NS, "typo"))
    kube.wait_for(lambda: spec_valid(kube, "typo").get("status") == "True")
    kube.wait_for(lambda: status_of(kube, "typo").get("phase") == "Pending")

    # A cross-field rule (the CRD's CEL rule, here skipped) is checked too, naming the field.
    create_job(custom, example_body, "odd-gpus", spec__resources__rollout__gpusPerReplica=3)
    message = kube.wait_for(lambda: spec_valid(kube, "odd-gpus").get("message"))
    assert message == (
        "spec.resources.rollout.gpusPerReplica: 3 is not a multiple of tensorParallelSize 2"
    )


def owned_counts(kube: FakeKube, name: str) -> dict[str, int]:
    selector = f"distill.dev/job={name}"
    kinds = {
        "configmaps": ("", "v1", "configmaps"),
        "deployments": ("apps", "v1", "deployments"),
        "services": ("", "v1", "services"),
        "rayjobs": ("ray.io", "v1", "rayjobs"),
        "networkpolicies": ("networking.k8s.io", "v1", "networkpolicies"),
    }
    return {kind: len(kube.list(*gvr, NS, selector)) for kind, gvr in kinds.items()}


ONE_OF_EACH = {"configmaps": 1, "deployments": 1, "services": 2, "rayjobs": 1, "networkpolicies": 1}


@pytest.mark.slow
def test_killed_operator_restarts_without_duplicates_and_converges(
    kube, custom, example_body, operator_factory
) -> None:
    # Killed while creating the children (right after the first one appeared).
    first = operator_factory(kube.kubeconfig)
    create_job(custom, example_body, "survivor")
    kube.wait_for(lambda: kube.get("", "v1", "configmaps", NS, "survivor-spec"))
    first.kill()
    second = operator_factory(kube.kubeconfig)
    kube.wait_for(lambda: owned_counts(kube, "survivor") == ONE_OF_EACH)
    custom.patch_namespaced_custom_object_status("ray.io", "v1", NS, "rayjobs", "survivor", RUNNING)
    running = kube.wait_for(lambda: phase_is(kube, "survivor", "Running"))

    # Killed while the job runs; meanwhile KubeRay finishes it and two children are deleted.
    second.kill()
    custom.patch_namespaced_custom_object_status(
        "ray.io",
        "v1",
        NS,
        "rayjobs",
        "survivor",
        {
            "status": {
                "jobDeploymentStatus": "Complete",
                "jobStatus": "SUCCEEDED",
                "endTime": "2030-01-01T00:00:00Z",
            }
        },
    )
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.delete_namespaced_service("survivor-grader", NS)
    core.delete_namespaced_config_map("survivor-spec", NS)
    third = operator_factory(kube.kubeconfig)
    done = kube.wait_for(lambda: phase_is(kube, "survivor", "Succeeded"))
    kube.wait_for(lambda: owned_counts(kube, "survivor") == ONE_OF_EACH)
    # Converged to what happened while it was down, with KubeRay's end time.
    assert done["startTime"] == running["startTime"]
    assert done["completionTime"] == "2030-01-01T00:00:00Z"
    grader = ("apps", "v1", "deployments", NS, "survivor-grader")
    kube.wait_for(lambda: kube.get(*grader)["spec"]["replicas"] == 0)
    # kopf's finalizer (added for the progress timer while Running) is gone with the timer.
    kube.wait_for(lambda: not kube.get(*DJ, NS, "survivor")["metadata"].get("finalizers"))

    # Restarted once more after KubeRay's cleanup deleted the finished RayJob: the resume
    # handler restores what is missing, but a finished job is never run again.
    third.stop()
    custom.delete_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", "survivor")
    core.delete_namespaced_service("survivor-trainer", NS)
    fourth = operator_factory(kube.kubeconfig)
    kube.wait_for(lambda: kube.get("", "v1", "services", NS, "survivor-trainer"))
    resumed = "Handler 'distilljob_resume' succeeded."
    kube.wait_for(lambda: any(resumed in line for line in fourth.log_lines()))
    assert owned_counts(kube, "survivor") == {**ONE_OF_EACH, "rayjobs": 0}
    assert phase_is(kube, "survivor", "Succeeded")


@pytest.mark.slow
def test_name_taken_by_a_foreign_object_waits_for_it_to_go(
    kube, custom, example_body, operator_factory
) -> None:
    operator_factory(kube.kubeconfig)
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map(NS, {"metadata": {"name": "taken-spec"}, "data": {"a": "b"}})
    create_job(custom, example_body, "taken")
    kube.wait_for(
        lambda: (
            "is not controlled by this DistillJob"
            in kube.get(*DJ, NS, "taken")["metadata"]
            .get("annotations", {})
            .get("distill.dev/distilljob_create", "")
        )
    )
    assert kube.get("ray.io", "v1", "rayjobs", NS, "taken") is None
    assert kube.get("", "v1", "configmaps", NS, "taken-spec")["data"] == {"a": "b"}
    core.delete_namespaced_config_map("taken-spec", NS)
    kube.wait_for(lambda: kube.get("ray.io", "v1", "rayjobs", NS, "taken"), timeout=30)
    owner = kube.get("", "v1", "configmaps", NS, "taken-spec")["metadata"]["ownerReferences"][0]
    assert owner["name"] == "taken"


def test_namespace_flag_limits_what_is_watched(
    kube, custom, example_body, operator_factory
) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    for namespace in ("team-a", "team-b"):
        core.create_namespace({"metadata": {"name": namespace}})
    operator_factory(kube.kubeconfig, "--namespace", "team-a")
    for namespace in ("team-a", "team-b"):
        body = example_body("math-distill.yaml", namespace, metadata__name="scoped")
        del body["metadata"]["uid"], body["metadata"]["generation"]
        custom.create_namespaced_custom_object(*DJ[:2], namespace, DJ[2], body)
    kube.wait_for(lambda: kube.get("ray.io", "v1", "rayjobs", "team-a", "scoped"))
    watched = {
        r.namespace
        for r in kube.requests
        if r.resource == "distilljobs" and r.verb in ("list", "watch") and r.namespace
    }
    assert "team-a" in watched and "team-b" not in watched


def test_peering_flag_joins_the_peering_object(kube, operator_factory) -> None:
    peerings = ("kopf.dev", "v1", "clusterkopfpeerings")
    kubernetes.client.CustomObjectsApi(kube.api_client()).create_cluster_custom_object(
        *peerings[:2],
        peerings[2],
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": "distill"},
        },
    )
    command = [sys.executable, "-m", "distill_operator", "--peering", "distill", "--standalone"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not allowed with argument" in refused.stderr

    operator_factory(kube.kubeconfig, "--peering", "distill")
    peering = kube.wait_for(lambda: (kube.get(*peerings, None, "distill") or {}).get("status"))
    (identity,) = peering.values()
    assert identity["lifetime"] > 0
