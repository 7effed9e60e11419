"""The manifests one DistillJob turns into: schema-valid, secure, wired together, and unchanged
unless the golden snapshots are regenerated on purpose (`pytest tests/operator --update-golden`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from distill_api import load_job
from distill_operator.builders import build_children
from distill_operator.builders.configmap import JOB_FILE_DIR, JOB_FILE_KEY

GOLDEN = Path(__file__).parent / "golden"
LONG_NAME = "qwen2-5-1-5b-from-qwen2-5-7b-instruct-on-math-with-gae-critic"

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "math-distill": ("math-distill.yaml", {}),
    "math-rl-baseline": ("math-rl-baseline.yaml", {}),
    # gae adds a critic group; a long name, Kueue, a suspended start and a separate grader image.
    "gae-kueue-suspended": (
        "math-distill.yaml",
        {
            "metadata__name": LONG_NAME,
            "metadata__labels": {"team": "math", "kueue.x-k8s.io/queue-name": "not-this-one"},
            "spec__algorithm__advEstimator": "gae",
            "spec__resources__critic": {"replicas": 2, "gpusPerReplica": 2, "memory": "32Gi"},
            "spec__queueName": "team-math",
            "spec__suspend": True,
            "spec__grader__image": "ghcr.io/distill-operator/grader:0.1.0",
            "spec__checkpoint__secretRef": None,
        },
    ),
}


def children(example_body: Callable[..., dict[str, Any]], case: str) -> dict[str, dict[str, Any]]:
    file, overrides = CASES[case]
    built = build_children(load_job(example_body(file, **overrides)))
    return {f"{obj['kind']}/{obj['metadata']['name']}": obj for obj in built}


def by_kind(objs: dict[str, dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    (obj,) = [o for key, o in objs.items() if key.startswith(f"{kind}/") and key.endswith(suffix)]
    return obj


def pod_templates(objs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rayjob = by_kind(objs, "RayJob")["spec"]
    cluster = rayjob["rayClusterSpec"]
    return [
        cluster["headGroupSpec"]["template"],
        *(group["template"] for group in cluster["workerGroupSpecs"]),
        rayjob["submitterPodTemplate"],
        by_kind(objs, "Deployment")["spec"]["template"],
    ]


@pytest.mark.parametrize("case", CASES)
def test_golden_snapshot(case: str, example_body, update_golden: bool) -> None:
    rendered = yaml.safe_dump_all(children(example_body, case).values(), sort_keys=False)
    path = GOLDEN / f"{case}.yaml"
    if update_golden:
        path.write_text(rendered)
    assert path.read_text() == rendered, f"{path} differs: rerun with --update-golden and review"


@pytest.mark.parametrize("case", CASES)
def test_manifests_pass_the_schemas(case, example_body, validate_rayjob, validate_builtin) -> None:
    for obj in children(example_body, case).values():
        if obj["kind"] == "RayJob":
            validate_rayjob(obj)
            assert len(obj["metadata"]["name"]) <= 47
        else:
            validate_builtin(obj)


@pytest.mark.parametrize(
    ("case", "groups"),
    [
        ("math-distill", ["rollout", "actor", "teacher"]),
        ("math-rl-baseline", ["rollout", "actor"]),
        ("gae-kueue-suspended", ["rollout", "actor", "teacher", "critic"]),
    ],
)
def test_one_worker_group_per_role_advertising_its_ray_resource(case, groups, example_body) -> None:
    workers = by_kind(children(example_body, case), "RayJob")["spec"]["rayClusterSpec"][
        "workerGroupSpecs"
    ]
    assert [g["groupName"] for g in workers] == groups
    for group in workers:
        advertised = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert advertised == {group["groupName"]: 1}
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"]


def test_worker_resources_come_from_the_spec(example_body) -> None:
    objs = children(example_body, "gae-kueue-suspended")
    workers = by_kind(objs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    critic = next(g for g in workers if g["groupName"] == "critic")
    assert critic["replicas"] == 2
    limits = critic["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}


@pytest.mark.parametrize("case", CASES)
def test_every_container_runs_restricted(case, example_body) -> None:
    for template in pod_templates(children(example_body, case)):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            writable = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert writable["/tmp"] in tmp_volumes
            requests = container["resources"]["requests"]
            assert requests == container["resources"]["limits"] and "memory" in requests


def test_services_select_the_pods_they_serve(example_body) -> None:
    objs = children(example_body, "math-distill")
    head = by_kind(objs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    trainer_svc = by_kind(objs, "Service", "-trainer")
    assert trainer_svc["spec"]["selector"].items() <= head["metadata"]["labels"].items()
    head_ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert head_ports[trainer_svc["spec"]["ports"][0]["targetPort"]] == 9400
    assert trainer_svc["spec"]["ports"][0]["name"] == "metrics"

    grader = by_kind(objs, "Deployment")
    grader_svc = by_kind(objs, "Service", "-grader")
    assert grader_svc["spec"]["selector"] == grader["spec"]["selector"]["matchLabels"]
    assert (
        grader["spec"]["selector"]["matchLabels"].items()
        <= grader["spec"]["template"]["metadata"]["labels"].items()
    )


def test_head_env_points_at_the_grader_and_checkpoint_secret(example_body) -> None:
    objs = children(example_body, "math-distill")
    head = by_kind(objs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    container = head["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DISTILL_JOB_NAME"] == "math-distill"
    assert env["DISTILL_GRADER_URL"] == "http://math-distill-grader.research.svc:8000"
    assert container["envFrom"] == [{"secretRef": {"name": "distill-s3"}}]
    grader = by_kind(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    grader_env = {e["name"]: e["value"] for e in grader["env"]}
    assert grader_env["GRADER_ITEM_TIMEOUT_S"] == "10.0"
    assert grader["command"] == ["python", "-m", "distill_grader", "--port", "8000"]


def test_long_names_stay_consistent_between_env_and_services(example_body) -> None:
    objs = children(example_body, "gae-kueue-suspended")
    rayjob = by_kind(objs, "RayJob")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in head["env"]}
    grader_svc = by_kind(objs, "Service", "-grader")["metadata"]["name"]
    assert env["DISTILL_GRADER_URL"] == f"http://{grader_svc}.research.svc:8000"
    assert env["DISTILL_JOB_NAME"] == LONG_NAME
    assert "envFrom" not in head  # no secretRef in this case


def test_spec_configmap_round_trips_and_is_mounted(example_body) -> None:
    body = example_body("math-distill.yaml")
    objs = children(example_body, "math-distill")
    configmap = by_kind(objs, "ConfigMap")
    document = json.loads(configmap["data"][JOB_FILE_KEY])
    assert document["metadata"] == {
        "name": "math-distill",
        "namespace": "research",
        "uid": body["metadata"]["uid"],
    }
    assert load_job(document).spec == load_job(body).spec
    rayjob = by_kind(objs, "RayJob")["spec"]
    assert f"{JOB_FILE_DIR}/{JOB_FILE_KEY}" in rayjob["entrypoint"]
    head = rayjob["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": JOB_FILE_DIR, "readOnly": True}


def test_owner_reference_and_only_our_labels(example_body) -> None:
    for obj in children(example_body, "gae-kueue-suspended").values():
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "DistillJob" and owner["name"] == LONG_NAME
        assert owner["controller"] is True and owner["uid"]
        labels = obj["metadata"]["labels"]
        assert "team" not in labels
        queue = labels.get("kueue.x-k8s.io/queue-name")
        assert queue == ("team-math" if obj["kind"] == "RayJob" else None)


def test_suspend_reaches_rayjob_and_grader(example_body) -> None:
    suspended = children(example_body, "gae-kueue-suspended")
    rayjob = by_kind(suspended, "RayJob")["spec"]
    assert rayjob["suspend"] is True and rayjob["shutdownAfterJobFinishes"] is True
    assert by_kind(suspended, "Deployment")["spec"]["replicas"] == 0

    running = children(example_body, "math-distill")
    assert "suspend" not in by_kind(running, "RayJob")["spec"]  # left to Kueue when present
    assert by_kind(running, "Deployment")["spec"]["replicas"] == 2


def test_finished_job_scales_the_grader_to_zero(example_body) -> None:
    body = example_body("math-distill.yaml", status={"phase": "Succeeded"})
    (deployment,) = [o for o in build_children(load_job(body)) if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 0


def test_missing_uid_is_named(example_body) -> None:
    body = example_body("math-distill.yaml")
    del body["metadata"]["uid"]
    with pytest.raises(ValueError, match=r"metadata\.uid"):
        build_children(load_job(body))


def test_schema_check_catches_fields_kuberay_would_drop(example_body, validate_rayjob) -> None:
    rayjob = by_kind(children(example_body, "math-distill"), "RayJob")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["template"]["spec"]["containers"][0]["securityContex"] = {}  # a typo
    with pytest.raises(AssertionError, match=r"containers\[0\]\.securityContex"):
        validate_rayjob(rayjob)
