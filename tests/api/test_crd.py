"""The generated CRD: in sync with the model, structurally valid, enforcing the model's rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from distill_api import load_job_file
from distill_api.crd import CRD_NAME, build_crd, render_crd
from distill_api.v1alpha1 import Checkpoint

REPO = Path(__file__).resolve().parents[2]
CRD_COPIES = [
    REPO / "crds" / f"{CRD_NAME}.yaml",
    REPO / "charts/distill-operator/crds" / f"{CRD_NAME}.yaml",
]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def crd_schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: Any, path: str = ""):
    """Yield (path, schema node) for every node of a schema."""
    if isinstance(node, dict):
        yield path, node
        for key, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{key}")
        if "items" in node:
            yield from walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("path", CRD_COPIES, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_crd_matches_the_model(path: Path) -> None:
    if not path.exists() and "charts" in path.parts:
        pytest.skip("chart not generated yet")
    assert path.read_text() == render_crd(), f"{path} drifted from distill_api: run `make crds`"


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(build_crd(), "1.30", strict=True)


def test_schema_is_structural() -> None:
    for path, node in walk(crd_schema()):
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path or '.'} has no type"
        assert not {"$ref", "oneOf", "allOf"} & node.keys(), path
        # Allowed in a structural schema: a typed map, and int-or-string without a type (both
        # only in the Kubernetes-typed fields, whose schemas come from KubeRay's CRD).
        assert "anyOf" not in node, path
        assert isinstance(node.get("additionalProperties", {}), dict), path
        if node["type"] == "object" and path not in ("", ".metadata"):
            typed = node.get("properties") or node.get("additionalProperties")
            assert typed or node.get("x-kubernetes-preserve-unknown-fields"), (
                f"{path} is an object without properties"
            )


def test_printer_columns_and_status_subresource() -> None:
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Step"] == ".status.step"
    assert columns["Reward"] == ".status.reward"
    assert columns["KL"] == ".status.klPerToken"
    assert columns["Age"] == ".metadata.creationTimestamp"
    names = build_crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "DistillJob",
        "distilljobs",
        ["dj"],
    )


def test_defaults_and_bounds_are_in_the_schema() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    algorithm = spec["algorithm"]["properties"]
    coef = algorithm["klPenaltyCoef"]
    assert (coef["default"], coef["minimum"]) == (0.1, 0)
    assert algorithm["advEstimator"]["enum"] == ["grpo", "gae", "grpo_per_step", "none"]
    assert spec["rollout"]["properties"]["temperature"]["exclusiveMinimum"] is True
    assert spec["algorithm"]["default"] == {}
    assert crd_schema()["properties"]["spec"]["required"] == ["student", "data"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_generated_schema(path: Path) -> None:
    jsonschema.Draft4Validator(crd_schema()).validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("algorithm", "klPenaltyCoef", -1),
        ("algorithm", "advEstimator", "reinforce"),
        ("rollout", "temperature", 0),
        ("training", "batchSize", "64"),
    ],
)
def test_schema_rejects_bad_values(section: str, field: str, value: Any) -> None:
    doc = yaml.safe_load((REPO / "examples/math-distill.yaml").read_text())
    doc["spec"][section][field] = value
    with pytest.raises(jsonschema.ValidationError) as excinfo:
        jsonschema.Draft4Validator(crd_schema()).validate(doc)
    assert list(excinfo.value.absolute_path)[-1] == field


# --- CEL rules, evaluated with cel-python on defaulted objects, as the API server would ----------


def cel_rules(node: dict[str, Any]) -> list[dict[str, str]]:
    return node.get("x-kubernetes-validations", [])


def evaluate(rule: str, self_value: Any, old_value: Any = None) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return bool(program.evaluate(activation))


def failing_messages(
    value: Any, old: Any = None, schema: dict[str, Any] | None = None
) -> list[str]:
    """Messages of every CEL rule, at any depth of the spec schema, that rejects `value`."""
    schema = schema if schema is not None else crd_schema()["properties"]["spec"]
    failed = []
    for rule in cel_rules(schema):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue  # transition rules only run on updates where the old value exists
        if not evaluate(rule["rule"], value, old if transition else None):
            failed.append(rule["message"])
    for key, child in schema.get("properties", {}).items():
        if isinstance(value, dict) and key in value:
            old_child = old.get(key) if isinstance(old, dict) else None
            failed += failing_messages(value[key], old_child, child)
    return failed


def defaulted_spec(path: str = "math-distill.yaml") -> dict[str, Any]:
    job = load_job_file(REPO / "examples" / path)
    return job.spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_cel_accepts_the_examples() -> None:
    for example in EXAMPLES:
        assert failing_messages(defaulted_spec(example.name)) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["algorithm"].update(rolloutN=1), "rolloutN must be at least 2"),
        (lambda s: s["algorithm"].update(advEstimator="gae"), "needs a critic worker group"),
        (lambda s: s["training"].update(ppoMiniBatchSize=7), "ppoMiniBatchSize must divide"),
        (
            lambda s: s["resources"]["rollout"].update(gpusPerReplica=3),
            "gpusPerReplica must be a multiple of tensorParallelSize",
        ),
        (
            lambda s: s["checkpoint"].update(volume={"claimName": "c", "mountPath": "/ckpt"}),
            "uri must be a path under volume.mountPath",
        ),
        (
            lambda s: s["checkpoint"].update(
                uri="/ckpt-old/run", volume={"claimName": "c", "mountPath": "/ckpt"}
            ),
            "uri must be a path under volume.mountPath",
        ),
        (
            lambda s: s["checkpoint"].update(
                uri="/dev/shm/run", volume={"claimName": "c", "mountPath": "/dev/shm"}
            ),
            "mountPath is where the operator mounts its own volumes",
        ),
        (
            lambda s: s["checkpoint"].update(
                uri="/tmp/run", volume={"claimName": "c", "mountPath": "/tmp/"}
            ),
            "mountPath is where the operator mounts its own volumes",
        ),
        (lambda s: s["rollout"].update(weightSync="nccl"), "weightSync nccl needs engine vllm"),
        (
            lambda s: s["rollout"].update(weightSync="nccl", engine="hf"),
            "weightSync nccl needs engine vllm",
        ),
        (
            lambda s: (
                s["rollout"].update(weightSync="nccl", engine="vllm"),
                s["resources"]["actor"].update(gpusPerReplica=0),
            ),
            "nccl needs the actor on GPUs",
        ),
    ],
)
def test_cel_rejects_what_pydantic_rejects(mutate, message: str) -> None:
    spec = defaulted_spec()
    mutate(spec)
    assert any(message in m for m in failing_messages(spec)), failing_messages(spec)


def test_cel_allows_nccl_with_vllm_and_actor_gpus() -> None:
    spec = defaulted_spec()
    spec["rollout"].update(weightSync="nccl", engine="vllm")
    assert failing_messages(spec) == []


def test_cel_allows_gae_with_critic_and_one_rollout() -> None:
    spec = defaulted_spec()
    spec["algorithm"].update(advEstimator="gae", rolloutN=1)
    spec["resources"]["critic"] = {"replicas": 1, "gpusPerReplica": 1, "cpu": "8", "memory": "1Gi"}
    assert failing_messages(spec) == []


@pytest.mark.parametrize(
    ("uri", "mount_path"),
    [("/ckpt/run", "/ckpt"), ("/ckpt/run", "/ckpt/"), ("/ckpt", "/ckpt")],
)
def test_checkpoint_uri_on_the_volume_passes_cel_and_pydantic(uri: str, mount_path: str) -> None:
    spec = defaulted_spec()
    spec["checkpoint"].update(uri=uri, volume={"claimName": "c", "mountPath": mount_path})
    assert failing_messages(spec) == []
    assert Checkpoint.model_validate(spec["checkpoint"]).uri == uri


def test_transition_rules_allow_suspend_and_grader_replicas_only() -> None:
    old = defaulted_spec()
    allowed = copy.deepcopy(old)
    allowed["suspend"] = True
    allowed["grader"]["replicas"] = 5
    assert failing_messages(allowed, old) == []

    for key, change in [
        ("training", {"learningRate": 1e-5}),
        ("algorithm", {"klPenaltyCoef": 0.5}),
        ("student", {"model": "other"}),
        ("resources", {"actor": {"replicas": 4}}),
    ]:
        changed = copy.deepcopy(old)
        changed[key].update(change)
        assert f"{key} is immutable" in failing_messages(changed, old)

    without_teacher = copy.deepcopy(old)
    del without_teacher["teacher"]
    assert "teacher cannot be added or removed after the job is created" in failing_messages(
        without_teacher, old
    )
    # queueName in both directions: `self == oldSelf` on the field alone misses both.
    queued = {**old, "queueName": "team-math"}
    added, removed = failing_messages(queued, old), failing_messages(old, queued)
    assert "queueName cannot be added or removed after the job is created" in added
    assert "queueName cannot be added or removed after the job is created" in removed
