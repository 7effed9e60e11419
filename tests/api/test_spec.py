"""The DistillJob model: examples parse, defaults match the seed, bad specs name the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from distill_api import (
    AdvEstimator,
    DistillJob,
    KlEstimator,
    format_validation_error,
    load_job,
    load_job_file,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
MINIMAL = {
    "apiVersion": "distill.dev/v1alpha1",
    "kind": "DistillJob",
    "metadata": {"name": "tiny"},
    "spec": {"student": {"model": "Qwen/Qwen2.5-1.5B"}, "data": {"train": "/data/train.parquet"}},
}

# The seed run's values: every default must equal them.
SEED_DEFAULTS = {
    "algorithm": {
        "advEstimator": "grpo",
        "useKlInAdvantage": True,
        "klPenaltyCoef": 0.1,
        "klEstimator": "k1",
        "rolloutN": 16,
        "normAdvByStd": True,
        "gamma": 1.0,
        "lam": 1.0,
    },
    "training": {
        "batchSize": 64,
        "numEpochs": 10,
        "ppoMiniBatchSize": 16,
        "ppoEpochs": 1,
        "learningRate": 1e-6,
        "criticLearningRate": 1e-5,
        "clipRatioLow": 0.2,
        "clipRatioHigh": 0.2,
        "entropyCoeff": 0.0,
        "saveFreq": 100,
        "testFreq": 5,
    },
    "rollout": {
        "temperature": 0.7,
        "topP": 1.0,
        "maxPromptLength": 4096,
        "maxResponseLength": 4098,
    },
    "resources": {"rollout": {"tensorParallelSize": 2, "gpuMemoryUtilization": 0.6}},
}


def with_spec(**overrides: object) -> dict:
    """MINIMAL with spec sections deep-merged from `overrides` (section -> dict or value)."""
    doc = copy.deepcopy(MINIMAL)
    for key, value in overrides.items():
        if isinstance(value, dict):
            doc["spec"].setdefault(key, {}).update(value)
        else:
            doc["spec"][key] = value
    return doc


def errors_of(document: dict) -> str:
    with pytest.raises(ValidationError) as excinfo:
        load_job(document)
    return format_validation_error(excinfo.value)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    job = load_job_file(path)
    assert job.metadata.name == yaml.safe_load(path.read_text())["metadata"]["name"]


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"math-distill.yaml", "math-rl-baseline.yaml"} <= names


def test_math_distill_example_is_the_seed_run() -> None:
    spec = load_job_file(Path(EXAMPLES[0]).parent / "math-distill.yaml").spec
    assert spec.student.model == "Qwen/Qwen2.5-1.5B"
    assert spec.teacher is not None and spec.teacher.model == "Qwen/Qwen2.5-7B-Instruct"
    assert spec.needs_teacher and not spec.needs_critic


def test_rl_baseline_example_has_no_teacher() -> None:
    spec = load_job_file(Path(EXAMPLES[0]).parent / "math-rl-baseline.yaml").spec
    assert spec.teacher is None
    assert not spec.algorithm.use_kl_in_advantage
    assert not spec.needs_teacher


def test_defaults_equal_the_seed() -> None:
    spec = load_job(MINIMAL).spec.model_dump(mode="json", by_alias=True)

    def compare(expected: dict, actual: dict, path: str) -> None:
        for key, value in expected.items():
            if isinstance(value, dict):
                compare(value, actual[key], f"{path}.{key}")
            else:
                assert actual[key] == value, f"{path}.{key}"

    compare(SEED_DEFAULTS, spec, "spec")
    assert spec["teacher"] is None  # unset -> the student's initial weights
    assert spec["suspend"] is False


def test_enums_are_the_documented_names() -> None:
    assert [e.value for e in AdvEstimator] == ["grpo", "gae", "grpo_per_step", "none"]
    assert [e.value for e in KlEstimator] == ["k1", "k3", "abs"]


def test_snake_and_camel_case_both_accepted_in_python() -> None:
    job = DistillJob.model_validate(with_spec(algorithm={"kl_penalty_coef": 0.5}))
    assert job.spec.algorithm.kl_penalty_coef == 0.5
    dumped = job.model_dump(by_alias=True)
    assert dumped["spec"]["algorithm"]["klPenaltyCoef"] == 0.5


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"algorithm": {"klPenaltyCoef": -0.1}}, "spec.algorithm.klPenaltyCoef", "greater than"),
        ({"algorithm": {"advEstimator": "ppo"}}, "spec.algorithm.advEstimator", "'grpo'"),
        ({"algorithm": {"klEstimator": "k2"}}, "spec.algorithm.klEstimator", "'k1'"),
        ({"algorithm": {"rolloutN": 1}}, "spec.algorithm.rolloutN", "at least 2"),
        (
            {"algorithm": {"rolloutN": 1, "advEstimator": "grpo_per_step"}},
            "spec.algorithm.rolloutN",
            "at least 2",
        ),
        ({"algorithm": {"advEstimator": "gae"}}, "spec.resources.critic", "required"),
        ({"training": {"ppoMiniBatchSize": 7}}, "spec.training.ppoMiniBatchSize", "divide"),
        ({"training": {"batchSize": 0}}, "spec.training.batchSize", "greater than"),
        (
            {"resources": {"rollout": {"gpusPerReplica": 3}}},
            "spec.resources.rollout.gpusPerReplica",
            "multiple of tensorParallelSize",
        ),
        ({"rollout": {"topP": 1.5}}, "spec.rollout.topP", "less than"),
        ({"rollout": {"weightSync": "ipc"}}, "spec.rollout.weightSync", "'nccl'"),
        (
            {"rollout": {"weightSync": "nccl"}},
            "spec.rollout.weightSync",
            "nccl needs engine vllm",
        ),
        (
            {"rollout": {"weightSync": "nccl", "engine": "hf"}},
            "spec.rollout.weightSync",
            "engine is hf",
        ),
        (
            {
                "rollout": {"weightSync": "nccl", "engine": "vllm"},
                "resources": {"actor": {"gpusPerReplica": 0}},
            },
            "spec.rollout.weightSync",
            "nccl needs the actor on GPUs",
        ),
        ({"resources": {"actor": {"memory": "lots"}}}, "spec.resources.actor.memory", "pattern"),
        ({"grader": {"replicas": 0}}, "spec.grader.replicas", "greater than"),
        ({"student": None}, "spec.student", "valid dictionary"),
        ({"learningRate": 1e-5}, "spec.learningRate", "Extra inputs"),
        ({"queueName": "Team_Math"}, "spec.queueName", "pattern"),
        ({"workloadPriorityClass": "x" * 64}, "spec.workloadPriorityClass", "at most 63"),
        (
            {"pods": {"volumes": [{"name": "tmp", "emptyDir": {}}]}},
            "spec.pods.volumes[0].name",
            "operator's own volumes",
        ),
        (
            {"checkpoint": {"uri": "s3://b/p", "volume": {"claimName": "ckpt"}}},
            "spec.checkpoint.uri",
            "not under volume.mountPath '/checkpoints'",
        ),
        # A sibling directory shares the prefix but is not on the volume.
        (
            {"checkpoint": {"uri": "/checkpoints-old/run", "volume": {"claimName": "ckpt"}}},
            "spec.checkpoint.uri",
            "not under volume.mountPath '/checkpoints'",
        ),
        # Two mounts at one path: the API server would refuse every Ray pod of the RayJob.
        (
            {"checkpoint": {"uri": "/tmp/c", "volume": {"claimName": "c", "mountPath": "/tmp"}}},
            "spec.checkpoint.volume.mountPath",
            "operator mounts its own volumes",
        ),
        (
            {"pods": {"volumeMounts": [{"name": "data", "mountPath": "/etc/distill/"}]}},
            "spec.pods.volumeMounts[0].mountPath",
            "operator mounts its own volumes",
        ),
    ],
)
def test_invalid_spec_names_the_field(overrides: dict, field: str, fragment: str) -> None:
    message = errors_of(with_spec(**overrides))
    line = next((ln for ln in message.splitlines() if ln.startswith(f"{field}:")), None)
    assert line is not None, message
    assert fragment in line


def test_weight_sync_defaults_to_auto_and_takes_nccl_with_vllm() -> None:
    assert load_job(MINIMAL).spec.rollout.weight_sync == "auto"
    job = load_job(with_spec(rollout={"engine": "vllm", "weightSync": "nccl"}))
    assert job.spec.rollout.weight_sync == "nccl"
    assert load_job(with_spec(rollout={"engine": "hf", "weightSync": "reload"}))


def test_missing_student_names_the_field() -> None:
    doc = copy.deepcopy(MINIMAL)
    del doc["spec"]["student"]
    assert errors_of(doc) == "spec.student: Field required"


def test_gae_with_a_critic_group_is_valid() -> None:
    job = load_job(
        with_spec(
            algorithm={"advEstimator": "gae", "rolloutN": 1}, resources={"critic": {"replicas": 1}}
        )
    )
    assert job.spec.needs_critic
    assert job.spec.resources.critic is not None


def test_bad_metadata_name_is_rejected() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["metadata"]["name"] = "Not_A_DNS_Label"
    assert errors_of(doc).startswith("metadata.name:")
