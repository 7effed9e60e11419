"""The manifests one DistillJob turns into: schema-valid, secure, wired together, placed where the
spec says, and unchanged unless the golden snapshots are regenerated on purpose
(`pytest tests/operator --update-golden`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.utils import parse_quantity

from distill_api import DistillJob, load_job
from distill_operator.builders import BuildOptions, build_children
from distill_operator.builders.configmap import JOB_FILE_DIR, JOB_FILE_KEY
from distill_operator.builders.grader import MAX_GRADER_WORKERS, grader_workers
from distill_operator.builders.rayjob import ENTRYPOINT, rayjob_mutable_spec

GOLDEN = Path(__file__).parent / "golden"
LONG_NAME = "qwen2-5-1-5b-from-qwen2-5-7b-instruct-on-math-with-gae-critic"

GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
AFFINITY = {
    "nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 1,
                "preference": {
                    "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]
                },
            }
        ]
    }
}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "math-distill": ("math-distill.yaml", {}),
    "math-rl-baseline": ("math-rl-baseline.yaml", {}),
    # gae adds a critic group; a long name, Kueue (which owns `suspend`, so the asked-for suspend
    # is not written) and a separate grader image.
    "gae-kueue": (
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
    # Every pod setting, group overrides, a PVC for checkpoints, a Kueue priority, and a status
    # with a committed checkpoint: the RayJob is being created again and resumes from it.
    "scheduled": (
        "math-distill.yaml",
        {
            "spec__queueName": "team-math",
            "spec__workloadPriorityClass": "research-high",
            "spec__pods": {
                "nodeSelector": {"pool": "training"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
                "affinity": AFFINITY,
                "priorityClassName": "training",
                "imagePullSecrets": [{"name": "ghcr"}],
                "serviceAccountName": "distill-s3-reader",
                "env": [
                    {"name": "HF_ENDPOINT", "value": "https://hf.internal"},
                    {"name": "HOME", "value": "/ignored"},  # ours wins
                ],
                "envFrom": [{"configMapRef": {"name": "proxy"}}],
                "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "hf"}}],
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
                "labels": {"team": "math", "distill.dev/job": "forged"},
                "annotations": {"cost-center": "42"},
            },
            "spec__resources__rollout__tolerations": GPU_TOLERATIONS,
            "spec__resources__rollout__priorityClassName": "gpu-training",
            "spec__resources__actor__tolerations": GPU_TOLERATIONS,
            "spec__resources__teacher__tolerations": GPU_TOLERATIONS,
            "spec__resources__teacher__nodeSelector": {"gpu": "a100"},
            "spec__grader__nodeSelector": {"pool": "cpu"},
            "spec__grader__affinity": {},
            "spec__checkpoint": {
                "uri": "/checkpoints/math-distill",
                "volume": {"claimName": "distill-checkpoints"},
            },
            "status": {
                "phase": "Pending",
                "lastCheckpoint": {
                    "uri": "/checkpoints/math-distill/global_step_200/",
                    "step": 200,
                },
            },
        },
    ),
    # Created suspended without Kueue; a small head and grader; 4 GPUs = 2 vLLM engines of TP 2.
    "suspended-small": (
        "math-distill.yaml",
        {
            "spec__suspend": True,
            "spec__resources__head": {"cpu": "1", "memory": "4Gi"},
            "spec__resources__rollout__gpusPerReplica": 4,
            "spec__grader": {"replicas": 3, "cpu": "1500m", "memory": "1Gi"},
        },
    ),
}


class _GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's job.json) as literal blocks, readable in a diff."""


_GoldenDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def job_of(example_body: Callable[..., dict[str, Any]], case: str) -> DistillJob:
    file, overrides = CASES[case]
    return load_job(example_body(file, **overrides))


def children(example_body: Callable[..., dict[str, Any]], case: str) -> dict[str, dict[str, Any]]:
    built = build_children(job_of(example_body, case))
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
    objs = children(example_body, case).values()
    rendered = yaml.dump_all(objs, Dumper=_GoldenDumper, sort_keys=False)
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
        ("math-rl-baseline", ["rollout", "actor"]),  # KL off: no teacher
        ("gae-kueue", ["rollout", "actor", "teacher", "critic"]),  # gae: a critic
    ],
)
def test_one_worker_group_per_role_advertising_its_ray_resource(case, groups, example_body) -> None:
    workers = by_kind(children(example_body, case), "RayJob")["spec"]["rayClusterSpec"][
        "workerGroupSpecs"
    ]
    assert [g["groupName"] for g in workers] == groups
    assert len(workers) <= 17  # Kueue's webhook rejects RayJobs with more worker groups
    for group in workers:
        # The group-level map (KubeRay >= 1.4), values quantities as strings; nothing hand-quoted
        # in rayStartParams.
        assert group["resources"] == {group["groupName"]: "1"}
        assert "resources" not in group.get("rayStartParams", {})
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"]
        assert group["template"]["spec"]["containers"]


# -- KubeRay v1.7's handling of a group's Ray resources (ray-operator/controllers/ray/common/
# pod.go), ported: updateRayStartParamsResources writes the group-level map into rayStartParams,
# then addWellKnownAcceleratorResources reads it back through getResourcesMap.


def kuberay_update_ray_start_params_resources(params: dict[str, str], group: dict[str, str]):
    """cpu/memory/GPU keys become num-cpus/memory/num-gpus; the rest `'<json>'` in resources."""
    custom = {}
    for name, quantity in group.items():
        value = float(parse_quantity(quantity))
        lowered = name.lower()
        if lowered == "cpu":
            params["num-cpus"] = str(int(value))
        elif lowered == "memory":
            params["memory"] = str(int(value))
        elif lowered.endswith("gpu"):  # utils.IsGPUResourceKey
            params["num-gpus"] = str(int(value))
        else:
            custom[name] = value
    if custom:
        # Go's json.Marshal of a map: sorted keys, no spaces.
        params["resources"] = "'" + json.dumps(custom, sort_keys=True, separators=(",", ":")) + "'"


def kuberay_get_resources_map(params: dict[str, str]) -> dict[str, float]:
    """strings.Trim(resourcesStr, "'\"` "), then json.Unmarshal into map[string]float64."""
    if "resources" not in params:
        return {}
    return {k: float(v) for k, v in json.loads(params["resources"].strip("'\"` ")).items()}


@pytest.mark.parametrize("case", ["math-distill", "gae-kueue"])
def test_worker_resources_parse_the_way_kuberay_reads_them(case, example_body) -> None:
    workers = by_kind(children(example_body, case), "RayJob")["spec"]["rayClusterSpec"][
        "workerGroupSpecs"
    ]
    for group in workers:
        params = dict(group.get("rayStartParams", {}))
        kuberay_update_ray_start_params_resources(params, group["resources"])
        assert kuberay_get_resources_map(params) == {group["groupName"]: 1.0}
        # num-gpus is left to addWellKnownAcceleratorResources, from the container's GPU limit.
        assert "num-gpus" not in params


def test_the_old_double_quoted_rayStartParams_string_fails_kuberays_parse() -> None:
    """What the builder used to write: KubeRay trims the outer quotes and chokes on the rest
    (logging an error per pod and setting no num-gpus)."""
    params = {"resources": json.dumps(json.dumps({"rollout": 1}))}
    with pytest.raises(json.JSONDecodeError):
        kuberay_get_resources_map(params)


def _limits(template: dict[str, Any]) -> dict[str, str]:
    return template["spec"]["containers"][0]["resources"]["limits"]


def test_pod_resources_come_from_the_spec(example_body) -> None:
    objs = children(example_body, "gae-kueue")
    workers = by_kind(objs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    critic = next(g for g in workers if g["groupName"] == "critic")
    assert critic["replicas"] == 2
    assert _limits(critic["template"]) == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}

    cluster = by_kind(children(example_body, "suspended-small"), "RayJob")["spec"]
    cluster = cluster["rayClusterSpec"]
    assert _limits(cluster["headGroupSpec"]["template"]) == {"cpu": "1", "memory": "4Gi"}
    assert cluster["headGroupSpec"]["rayStartParams"] == {"dashboard-host": "0.0.0.0"}
    # A rollout pod gets all its GPUs (KubeRay sets num-gpus from the limit); the trainer runs
    # gpusPerReplica / tensorParallelSize = 2 engines on it, reading both from the job spec.
    rollout = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "rollout")
    assert _limits(rollout["template"])["nvidia.com/gpu"] == "4"


@pytest.mark.parametrize(
    ("cpu", "workers"), [("500m", 1), ("1", 1), ("1500m", 1), ("2.5", 2), ("16", 16), ("1k", 64)]
)
def test_grader_workers_follow_its_cpu(cpu: str, workers: int) -> None:
    assert grader_workers(cpu) == workers


def test_grader_workers_stay_within_what_the_grader_accepts() -> None:
    from distill_grader.config import GraderSettings

    bounds = {type(m).__name__: m for m in GraderSettings.model_fields["workers"].metadata}
    assert (bounds["Ge"].ge, bounds["Le"].le) == (1, MAX_GRADER_WORKERS)


def test_grader_pod_resources_probes_and_ports(example_body) -> None:
    objs = children(example_body, "suspended-small")
    pod = by_kind(objs, "Deployment")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert _limits(pod) == {"cpu": "1500m", "memory": "1Gi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GRADER_WORKERS"] == "1"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # One port for grading and /metrics, the one the Service exposes.
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert by_kind(objs, "Service", "-grader")["spec"]["ports"][0]["targetPort"] == "http"


def test_rayjob_runs_the_trainer_once_and_cleans_up(example_body) -> None:
    rayjob = by_kind(children(example_body, "math-distill"), "RayJob")["spec"]
    assert rayjob["entrypoint"] == (
        "python -m distill_trainer run /etc/distill/job.json --backend ray "
        "--metrics-port 9400 --output-dir /tmp/distill"
    )
    # A short TTL: Kueue frees the quota at the end while the pods still hold their GPUs; the
    # results are outside the pods (spec.checkpoint) and the driver's log is in the submitter.
    assert (rayjob["shutdownAfterJobFinishes"], rayjob["ttlSecondsAfterFinished"]) == (True, 60)
    assert rayjob["backoffLimit"] == 0
    assert rayjob["submissionMode"] == "K8sJobMode"


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
    objs = children(example_body, "gae-kueue")
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
    for obj in children(example_body, "gae-kueue").values():
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "DistillJob" and owner["name"] == LONG_NAME
        assert owner["controller"] is True and owner["uid"]
        labels = obj["metadata"]["labels"]
        assert "team" not in labels
        queue = labels.get("kueue.x-k8s.io/queue-name")
        assert queue == ("team-math" if obj["kind"] == "RayJob" else None)


def test_suspend_reaches_rayjob_and_grader_unless_kueue_owns_it(example_body) -> None:
    suspended = children(example_body, "suspended-small")
    rayjob = by_kind(suspended, "RayJob")
    # KubeRay accepts suspend only with shutdownAfterJobFinishes.
    assert rayjob["spec"]["suspend"] is True and rayjob["spec"]["shutdownAfterJobFinishes"] is True
    assert by_kind(suspended, "Deployment")["spec"]["replicas"] == 0
    assert rayjob_mutable_spec(job_of(example_body, "suspended-small")) == {
        "ttlSecondsAfterFinished": 60,
        "suspend": True,
    }

    running = children(example_body, "math-distill")
    assert "suspend" not in by_kind(running, "RayJob")["spec"]
    assert by_kind(running, "Deployment")["spec"]["replicas"] == 2

    # Queued: Kueue's webhook suspends the RayJob and Kueue admits it; writing suspend (either
    # way) would fight it, so the RayJob never carries one. The grader waits for admission.
    queued = children(example_body, "gae-kueue")
    assert "suspend" not in by_kind(queued, "RayJob")["spec"]
    assert by_kind(queued, "Deployment")["spec"]["replicas"] == 0
    mutable = rayjob_mutable_spec(job_of(example_body, "gae-kueue"))
    assert mutable == {"ttlSecondsAfterFinished": 60}


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


def test_the_e2e_smoke_job_is_valid_and_builds(repo_root, validate_rayjob) -> None:
    """scripts/e2e.sh runs on a real cluster only by hand: keep its job in step with the API."""
    script = repo_root / "scripts" / "e2e.sh"
    printed = subprocess.run(
        ["bash", "-c", f'source <(sed -n "/^smoke_job()/,/^}}/p" {script}); smoke_job'],
        env={"TRAINER_IMAGE": "rayproject/ray:2.41.0-py311-cpu", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body = yaml.safe_load(printed)
    body["metadata"].update(namespace="distill-e2e", uid="e2e-uid")
    rayjob = next(o for o in build_children(load_job(body)) if o["kind"] == "RayJob")
    validate_rayjob(rayjob)
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert _limits(head) == {"cpu": "1", "memory": "2Gi"}


# -- what a cluster needs of the pods: spec.pods and the groups' overrides, Kueue's labels,
# checkpoints on a PVC, resuming, platform UIDs, the cluster's token, the NetworkPolicy.


def templates_by_role(objs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rayjob = by_kind(objs, "RayJob")["spec"]
    cluster = rayjob["rayClusterSpec"]
    return {
        "head": cluster["headGroupSpec"]["template"],
        **{g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]},
        "submitter": rayjob["submitterPodTemplate"],
        "grader": by_kind(objs, "Deployment")["spec"]["template"],
    }


def test_pod_settings_reach_every_pod_template(example_body) -> None:
    templates = templates_by_role(children(example_body, "scheduled"))
    assert set(templates) == {"head", "rollout", "actor", "teacher", "submitter", "grader"}
    for role, template in templates.items():
        spec, meta = template["spec"], template["metadata"]
        assert spec["imagePullSecrets"] == [{"name": "ghcr"}], role
        assert spec["serviceAccountName"] == "distill-s3-reader", role
        assert {"name": "models", "persistentVolumeClaim": {"claimName": "hf"}} in spec["volumes"]
        # The operator's labels win: a forged job label would break the Services' selectors.
        assert meta["labels"]["team"] == "math" and meta["labels"]["distill.dev/job"] != "forged"
        assert meta["annotations"] == {"cost-center": "42"}
        for container in spec["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["HF_ENDPOINT"] == "https://hf.internal", role
            assert env["HOME"] == "/tmp/home"  # ours, not the user's /ignored
            assert [e["name"] for e in container["env"]].count("HOME") == 1
            assert {"configMapRef": {"name": "proxy"}} in container["envFrom"]
            mount = {"name": "models", "mountPath": "/models", "readOnly": True}
            assert mount in container["volumeMounts"], role


def test_group_placement_replaces_the_job_wide_one(example_body) -> None:
    templates = templates_by_role(children(example_body, "scheduled"))
    placement = {
        role: {k: t["spec"].get(k) for k in ("nodeSelector", "tolerations", "priorityClassName")}
        for role, t in templates.items()
    }
    job_wide = [{"key": "dedicated", "operator": "Equal", "value": "ml"}]
    assert placement["head"] == {
        "nodeSelector": {"pool": "training"},
        "tolerations": job_wide,
        "priorityClassName": "training",
    }
    assert placement["submitter"] == placement["head"]  # no GPU either: it goes with the head
    assert placement["rollout"] == {
        "nodeSelector": {"pool": "training"},
        "tolerations": GPU_TOLERATIONS,
        "priorityClassName": "gpu-training",
    }
    assert placement["actor"]["tolerations"] == GPU_TOLERATIONS
    assert placement["teacher"]["nodeSelector"] == {"gpu": "a100"}
    assert placement["grader"]["nodeSelector"] == {"pool": "cpu"}
    assert placement["grader"]["tolerations"] == job_wide
    assert templates["head"]["spec"]["affinity"] == AFFINITY
    assert templates["grader"]["spec"]["affinity"] == {}  # set (empty) on the grader: replaces


def test_without_pod_settings_nothing_is_added(example_body) -> None:
    for template in pod_templates(children(example_body, "math-distill")):
        spec = template["spec"]
        absent = {"nodeSelector", "tolerations", "affinity", "priorityClassName"}
        assert not absent & spec.keys()
        assert not {"imagePullSecrets", "serviceAccountName"} & spec.keys()


def test_kueue_labels_only_on_the_rayjob(example_body) -> None:
    objs = children(example_body, "scheduled")
    labels = by_kind(objs, "RayJob")["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-math"
    assert labels["kueue.x-k8s.io/priority-class"] == "research-high"
    for key, obj in objs.items():
        if not key.startswith("RayJob/"):
            assert not any(k.startswith("kueue.x-k8s.io/") for k in obj["metadata"]["labels"])


def test_checkpoint_volume_is_mounted_where_checkpoints_are_written(example_body) -> None:
    templates = templates_by_role(children(example_body, "scheduled"))
    claim = {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "distill-checkpoints"}}
    for role, template in templates.items():
        mounts = template["spec"]["containers"][0]["volumeMounts"]
        mounted = {"name": "checkpoints", "mountPath": "/checkpoints"} in mounts
        writes = role in {"head", "actor"}  # the driver and the actor; no critic in this case
        assert mounted == writes, role
        assert (claim in template["spec"]["volumes"]) == writes, role


def test_a_recreated_rayjob_names_no_checkpoint(example_body) -> None:
    # KubeRay runs the entrypoint again after every suspension: a --resume-from of the checkpoint
    # recorded at creation would go stale. The trainer resumes from the newest one by itself.
    resumed = by_kind(children(example_body, "scheduled"), "RayJob")["spec"]["entrypoint"]
    assert resumed == ENTRYPOINT and "--resume-from" not in resumed
    assert by_kind(children(example_body, "math-distill"), "RayJob")["spec"]["entrypoint"] == (
        ENTRYPOINT
    )
    body = example_body(
        "math-distill.yaml",
        status={"phase": "Running", "lastCheckpoint": {"uri": "/tmp/x/global_step_1/", "step": 1}},
    )
    del body["spec"]["checkpoint"]
    (rayjob,) = [o for o in build_children(load_job(body)) if o["kind"] == "RayJob"]
    assert rayjob["spec"]["entrypoint"] == ENTRYPOINT


def test_grader_waits_for_kueue_admission(example_body) -> None:
    def replicas(**status: Any) -> int:
        body = example_body("math-distill.yaml", spec__queueName="q", status=status)
        deployment = next(o for o in build_children(load_job(body)) if o["kind"] == "Deployment")
        return deployment["spec"]["replicas"]

    assert replicas() == 0  # new: Kueue's webhook suspends it on creation
    assert replicas(phase="Pending", reason="WaitingForAdmission") == 0
    assert replicas(phase="Pending", reason="RayJobInitializing") == 2  # admitted
    assert replicas(phase="Running") == 2
    assert replicas(phase="Succeeded", reason="TrainingSucceeded") == 0


@pytest.mark.parametrize("uid", [1000, 4242, None])
def test_pod_uids_come_from_the_operator_and_can_be_left_out(uid, example_body) -> None:
    job = job_of(example_body, "math-distill")
    built = build_children(job, BuildOptions(uid))
    objs = {f"{o['kind']}/{o['metadata']['name']}": o for o in built}
    for template in pod_templates(objs):
        context = template["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True
        ids = {k: context.get(k) for k in ("runAsUser", "runAsGroup", "fsGroup")}
        assert ids == dict.fromkeys(ids, uid)
        if uid is None:  # OpenShift's restricted SCC assigns them
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & context.keys()


def test_ray_cluster_requires_a_token(example_body) -> None:
    cluster = by_kind(children(example_body, "math-distill"), "RayJob")["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    # KubeRay's validation refuses token mode below Ray 2.52.0 (utils/validation.go).
    major, minor, _ = (int(part) for part in cluster["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)


def test_network_policy_admits_only_the_job_kuberay_and_scrapers(example_body) -> None:
    objs = children(example_body, "math-distill")
    policy = by_kind(objs, "NetworkPolicy")
    head = by_kind(objs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    spec = policy["spec"]
    selector = spec["podSelector"]
    assert selector["matchLabels"].items() <= head["metadata"]["labels"].items()
    assert selector["matchExpressions"] == [
        {"key": "distill.dev/component", "operator": "In", "values": ["trainer", "ray-worker"]}
    ]
    assert spec["policyTypes"] == ["Ingress"]
    own, dashboard, metrics = spec["ingress"]
    submitter = by_kind(objs, "RayJob")["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert own == {"from": [{"podSelector": {"matchLabels": {"distill.dev/job": "math-distill"}}}]}
    assert own["from"][0]["podSelector"]["matchLabels"].items() <= submitter.items()
    assert dashboard["ports"] == [{"port": 8265, "protocol": "TCP"}]
    kuberay = {"app.kubernetes.io/name": "kuberay-operator"}
    assert dashboard["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": kuberay}}]
    assert [p["port"] for p in metrics["ports"]] == [9400, 8080]

    job = job_of(example_body, "math-distill")
    kinds = [o["kind"] for o in build_children(job, BuildOptions(network_policy=False))]
    assert "NetworkPolicy" not in kinds
