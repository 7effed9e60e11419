"""DistillJob, version v1alpha1: the spec users write and the status the operator reports.

Field names are camelCase in YAML (Kubernetes convention) and snake_case in Python. Cross-field
rules live twice on purpose: as pydantic validators (local mode, the trainer, clear errors before a
cluster is involved) and as CEL rules in the generated CRD (the API server); a test evaluates the
CEL rules on the same cases to keep the two in agreement.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

GROUP = "distill.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DistillJob"
PLURAL = "distilljobs"
SINGULAR = "distilljob"
SHORT_NAME = "dj"

# Kubernetes resource quantity ("500m", "16Gi", "2"), the API server's own regular expression.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)]


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry for the generated CRD."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def _immutable(what: str) -> dict[str, Any]:
    """Schema extra for a field that must not change after the job is created."""
    return {"x-kubernetes-validations": [_cel("self == oldSelf", f"{what} is immutable")]}


class FieldError(ValueError):
    """A cross-field rule broken at `field` (a camelCase path relative to the validated model)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


class AdvEstimator(StrEnum):
    GRPO = "grpo"
    GAE = "gae"
    GRPO_PER_STEP = "grpo_per_step"


class KlEstimator(StrEnum):
    K1 = "k1"
    K3 = "k3"
    ABS = "abs"


class RolloutEngineName(StrEnum):
    VLLM = "vllm"
    HF = "hf"


class JobPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ModelRef(ApiModel):
    model: str = Field(
        min_length=1,
        description="Hugging Face model name (e.g. Qwen/Qwen2.5-1.5B) or a local/mounted path.",
    )


class Algorithm(ApiModel):
    """What is optimised: base advantage, then the teacher's per-token reverse KL."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.advEstimator == 'gae' || self.rolloutN >= 2",
                    "rolloutN must be at least 2 for group-relative estimators "
                    "(grpo, grpo_per_step)",
                    ".rolloutN",
                )
            ]
        }
    )

    adv_estimator: AdvEstimator = Field(
        AdvEstimator.GRPO, description="Base advantage estimator: grpo, gae or grpo_per_step."
    )
    use_kl_in_advantage: bool = Field(
        True,
        description="Subtract klPenaltyCoef × per-token reverse KL to the teacher from the "
        "normalised advantage. false: pure RL, and no teacher worker is created.",
    )
    kl_penalty_coef: float = Field(0.1, ge=0, description="α in A − α·(log π_s − log π_t).")
    kl_estimator: KlEstimator = Field(
        KlEstimator.K1, description="Per-token KL estimator: k1 (s − t), k3, or abs."
    )
    rollout_n: int = Field(16, ge=1, description="Responses sampled per prompt (group size).")
    norm_adv_by_std: bool = Field(
        True, description="GRPO: divide the centred score by the group's standard deviation."
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor (gae, grpo_per_step).")
    lam: float = Field(1.0, ge=0, le=1, description="GAE λ.")
    rollout_is_cap: float | None = Field(
        None,
        ge=1,
        description="C of the truncated importance-sampling weight min(π_old / π_rollout, C) "
        "on each token's policy loss, correcting for the rollout engine's numerics; unset: off.",
    )

    @model_validator(mode="after")
    def _group_needs_two(self) -> Algorithm:
        if self.adv_estimator != AdvEstimator.GAE and self.rollout_n < 2:
            raise FieldError(
                "rolloutN",
                f"must be at least 2 for {self.adv_estimator.value} "
                "(a group of one has no baseline)",
            )
        return self


class Training(ApiModel):
    batch_size: int = Field(64, ge=1, description="Prompts per training step.")
    num_epochs: int = Field(10, ge=1, description="Passes over the training set.")
    total_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (default: numEpochs over the data)."
    )
    ppo_mini_batch_size: int = Field(
        16,
        ge=1,
        description="Prompts per PPO mini-batch (as in the seed/verl: each mini-batch holds "
        "ppoMiniBatchSize × rolloutN responses); must divide batchSize.",
    )
    ppo_epochs: int = Field(1, ge=1, description="Passes over each step's rollouts.")
    learning_rate: float = Field(1e-6, gt=0, description="Actor (student) learning rate.")
    critic_learning_rate: float = Field(1e-5, gt=0, description="Critic learning rate (gae only).")
    clip_ratio_low: float = Field(0.2, ge=0, le=1, description="PPO clip ε below 1.")
    clip_ratio_high: float = Field(0.2, ge=0, description="PPO clip ε above 1.")
    entropy_coeff: float = Field(0.0, ge=0, description="Entropy bonus coefficient.")
    save_freq: int = Field(100, ge=1, description="Checkpoint every this many steps.")
    test_freq: int = Field(5, ge=1, description="Validate every this many steps.")
    seed: int = Field(42, ge=0, description="Random seed for data order and sampling.")


class Rollout(ApiModel):
    engine: RolloutEngineName | None = Field(
        None,
        description="Rollout engine: vllm or hf (transformers generate). Unset: vllm where "
        "rollouts run on GPUs (a DistillJob's cluster), hf on CPU (faster for tiny models).",
    )
    enforce_eager: bool | None = Field(
        None,
        description="vLLM: run the model eagerly, without CUDA graphs or torch.compile (faster "
        "start-up, slower decoding). Unset: eager on CPU, compiled on GPU.",
    )
    temperature: float = Field(0.7, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_prompt_length: int = Field(
        4096, ge=1, description="Prompt tokens; longer prompts are skipped and counted."
    )
    max_response_length: int = Field(4098, ge=1, description="Most tokens generated per response.")


class Data(ApiModel):
    train: str = Field(min_length=1, description="Training parquet: s3://bucket/key or a path.")
    val: str | None = Field(None, min_length=1, description="Validation parquet (optional).")


class Grader(ApiModel):
    replicas: int = Field(2, ge=1, description="math-grader Deployment replicas.")
    cpu: Quantity = Field("2", description="CPU request and limit per grader pod (= workers).")
    memory: Quantity = Field("2Gi", description="Memory request and limit per grader pod.")
    timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Per-item grading deadline; slower items score 0."
    )
    image: str | None = Field(
        None, description="Grader image (default: the trainer image, which contains it)."
    )


class PodResources(ApiModel):
    cpu: Quantity = Field("8", description="CPU request and limit per pod.")
    memory: Quantity = Field("64Gi", description="Memory request and limit per pod.")


class HeadResources(PodResources):
    """The Ray head pod: runs the trainer driver, no GPU."""

    cpu: Quantity = Field("2", description="CPU request and limit.")
    memory: Quantity = Field("8Gi", description="Memory request and limit.")


class WorkerGroup(PodResources):
    replicas: int = Field(1, ge=1, description="Ray worker pods in this group.")
    gpus_per_replica: int = Field(1, ge=0, description="nvidia.com/gpu per pod.")


class RolloutGroup(WorkerGroup):
    """vLLM engines: each pod runs gpusPerReplica / tensorParallelSize engines."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.gpusPerReplica % self.tensorParallelSize == 0",
                    "gpusPerReplica must be a multiple of tensorParallelSize",
                    ".gpusPerReplica",
                )
            ]
        }
    )

    gpus_per_replica: int = Field(2, ge=1, description="nvidia.com/gpu per pod.")
    tensor_parallel_size: int = Field(2, ge=1, description="vLLM tensor parallel degree.")
    gpu_memory_utilization: float = Field(
        0.6, gt=0, le=1, description="Fraction of GPU memory vLLM may take."
    )


class Resources(ApiModel):
    head: HeadResources = Field(default_factory=HeadResources)
    rollout: RolloutGroup = Field(default_factory=RolloutGroup)
    actor: WorkerGroup = Field(default_factory=WorkerGroup)
    teacher: WorkerGroup = Field(default_factory=WorkerGroup)
    critic: WorkerGroup | None = Field(None, description="Required when advEstimator is gae.")


class Checkpoint(ApiModel):
    uri: str = Field(min_length=1, description="Checkpoint location: s3://bucket/prefix or a path.")
    secret_ref: str | None = Field(
        None,
        description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_ENDPOINT_URL, AWS_REGION).",
    )
    keep: int = Field(
        3,
        ge=1,
        description="This run's newest checkpoints kept (an earlier run's are never deleted).",
    )


_SPEC_RULES = [
    _cel(
        "self.algorithm.advEstimator != 'gae' || has(self.resources.critic)",
        "advEstimator gae needs a critic worker group (resources.critic)",
        ".resources",
    ),
    _cel(
        "self.training.batchSize % self.training.ppoMiniBatchSize == 0",
        "training.ppoMiniBatchSize must divide training.batchSize (mini-batches of "
        "ppoMiniBatchSize × rolloutN responses)",
        ".training.ppoMiniBatchSize",
    ),
    _cel(
        "has(self.teacher) == has(oldSelf.teacher)",
        "teacher cannot be added or removed after the job is created",
    ),
    _cel(
        "has(self.checkpoint) == has(oldSelf.checkpoint)",
        "checkpoint cannot be added or removed after the job is created",
    ),
]


class DistillJobSpec(ApiModel):
    """Everything that defines one on-policy distillation run."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    student: ModelRef = Field(
        description="The model being trained.", json_schema_extra=_immutable("student")
    )
    teacher: ModelRef | None = Field(
        None,
        description="The model distilled from; unset: a frozen copy of the student's initial "
        "weights.",
        json_schema_extra=_immutable("teacher"),
    )
    algorithm: Algorithm = Field(
        default_factory=Algorithm, json_schema_extra=_immutable("algorithm")
    )
    training: Training = Field(default_factory=Training, json_schema_extra=_immutable("training"))
    rollout: Rollout = Field(default_factory=Rollout, json_schema_extra=_immutable("rollout"))
    data: Data = Field(json_schema_extra=_immutable("data"))
    grader: Grader = Field(default_factory=Grader)
    resources: Resources = Field(
        default_factory=Resources, json_schema_extra=_immutable("resources")
    )
    checkpoint: Checkpoint | None = Field(None, json_schema_extra=_immutable("checkpoint"))
    image: str = Field(
        "ghcr.io/distill-operator/trainer:0.1.0",
        description="Trainer image (Ray head and workers).",
        json_schema_extra=_immutable("image"),
    )
    suspend: bool = Field(
        False,
        description="Pause the job (its Ray cluster is deleted). Ignored while queueName is set: "
        "Kueue owns suspension of queued jobs.",
    )
    queue_name: str | None = Field(
        None,
        description="Kueue LocalQueue that admits the job (Kueue then suspends and resumes it).",
        json_schema_extra=_immutable("queueName"),
    )
    ttl_seconds_after_finished: int = Field(
        3600, ge=0, description="Seconds the finished Ray cluster is kept for inspection."
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> DistillJobSpec:
        rollout = self.resources.rollout
        if rollout.gpus_per_replica % rollout.tensor_parallel_size:
            raise FieldError(
                "resources.rollout.gpusPerReplica",
                f"{rollout.gpus_per_replica} is not a multiple of tensorParallelSize "
                f"{rollout.tensor_parallel_size}",
            )
        if self.algorithm.adv_estimator == AdvEstimator.GAE and self.resources.critic is None:
            raise FieldError("resources.critic", "required when algorithm.advEstimator is gae")
        if self.training.batch_size % self.training.ppo_mini_batch_size:
            raise FieldError(
                "training.ppoMiniBatchSize",
                f"{self.training.ppo_mini_batch_size} does not divide training.batchSize "
                f"{self.training.batch_size} (so it cannot divide batchSize × rolloutN responses "
                "into whole mini-batches)",
            )
        return self

    @property
    def needs_teacher(self) -> bool:
        """A teacher worker exists only when its logprobs enter the advantage."""
        return self.algorithm.use_kl_in_advantage

    @property
    def needs_critic(self) -> bool:
        return self.algorithm.adv_estimator == AdvEstimator.GAE


class Condition(ApiModel):
    """A `metav1.Condition`."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: dt.datetime
    observed_generation: int | None = Field(None, ge=0)


class DistillJobStatus(ApiModel):
    phase: JobPhase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, ge=0)
    step: int | None = Field(None, ge=0, description="Last completed training step.")
    total_steps: int | None = Field(None, ge=0)
    reward: float | None = Field(None, description="Mean reward of the last step.")
    kl_per_token: float | None = Field(None, description="distill/kl_per_token of the last step.")
    val_reward: float | None = Field(None, description="Last validation reward.")
    last_checkpoint: str | None = None
    ray_job_name: str | None = None
    start_time: dt.datetime | None = None
    completion_time: dt.datetime | None = None


class ObjectMeta(BaseModel):
    """The parts of metadata the trainer and the builders read; the rest passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "default"


class DistillJob(ApiModel):
    api_version: Literal["distill.dev/v1alpha1"] = API_VERSION
    kind: Literal["DistillJob"] = KIND
    metadata: ObjectMeta
    spec: DistillJobSpec
    status: DistillJobStatus | None = None


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the field path as written in YAML."""
    lines = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            loc.append(cause.field)
        path = ".".join(loc) or "(document)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "\n".join(lines)


def load_job(document: dict[str, Any]) -> DistillJob:
    """Validate a DistillJob manifest (as parsed from YAML); raises pydantic.ValidationError."""
    return DistillJob.model_validate(document)


def load_job_file(path: str | Path) -> DistillJob:
    """Read and validate a DistillJob YAML file (exactly one document)."""
    with open(path, encoding="utf-8") as f:
        return load_job(yaml.safe_load(f))
