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

# Kubernetes resource quantity ("500m", "16Gi", "2", "1e3"): apimachinery's OpenAPI pattern for
# resource.Quantity, as the vendored KubeRay CRD has it, so a value this accepts the RayJob's
# schema accepts too ("1.2.3" or "2e" would pass a looser check here and 422 on the RayJob).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)]
# A DNS-1123 subdomain that also fits a label value (≤ 63): what Kueue's webhook requires of the
# `kueue.x-k8s.io/queue-name` and `kueue.x-k8s.io/priority-class` labels (ValidateLabelAsCRDName).
KUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KueueName = Annotated[str, Field(pattern=KUEUE_NAME_PATTERN, min_length=1, max_length=63)]
# Names the operator gives its own volumes in the Ray and grader pods, and where it mounts them
# (the API server refuses a pod with two mounts at one path, after the RayJob was accepted).
RESERVED_VOLUMES = frozenset({"job-spec", "tmp", "dshm", "checkpoints"})
RESERVED_MOUNT_PATHS = ("/tmp", "/dev/shm", "/etc/distill")


def _reserved_mount(path: str) -> str | None:
    """A message when `path` is one of the operator's own mount paths, else None."""
    if path.rstrip("/") in RESERVED_MOUNT_PATHS:
        own = ", ".join(RESERVED_MOUNT_PATHS)
        return f"{path!r} is where the operator mounts its own volumes ({own})"
    return None


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry for the generated CRD."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def _immutable(what: str) -> dict[str, Any]:
    """Schema extra for a field that must not change after the job is created."""
    return {"x-kubernetes-validations": [_cel("self == oldSelf", f"{what} is immutable")]}


def _k8s(path: str, description: str) -> Any:
    """A Kubernetes-typed field passed through to pods as is.

    The generated CRD takes its schema from KubeRay's RayJob CRD (the same PodSpec/Container
    schema the RayJob is checked against, see distill_api.crd), so the API server validates and
    prunes it exactly as it would in a pod template.
    """
    return Field(None, description=description, json_schema_extra={"x-distill-k8s-schema": path})


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
    NONE = "none"  # reward-free: the advantage is the teacher's per-token KL term alone


# Estimators that need a group of responses per prompt for their baseline.
GROUP_ESTIMATORS = (AdvEstimator.GRPO, AdvEstimator.GRPO_PER_STEP)


class KlEstimator(StrEnum):
    """Per-token KL in the advantage. Only k1 is accepted: k3 and abs stay named so that asking for
    them gets the reason (their policy gradient is not the KL's) instead of an unknown value."""

    K1 = "k1"
    K3 = "k3"
    ABS = "abs"


KL_ESTIMATOR_REFUSAL = (
    "only k1 is accepted in the advantage: a per-token term k in the advantage moves the policy "
    "by E[∇log π · k], which is the gradient of KL(π_s ‖ π_t) for k1 only (for k3 it is not, and "
    "can point the other way); for a low-variance KL term use algorithm.klLoss "
    "(estimator low_var_kl), which is differentiated as a loss"
)


class KlLossEstimator(StrEnum):
    """The KL loss's estimator, as verl's kl_loss_type names them."""

    LOW_VAR_KL = "low_var_kl"  # k3 = exp(t − s) − (t − s) − 1: gradient of KL(π_t ‖ π_s)
    K1 = "k1"  # s − t: zero gradient in expectation on-policy
    K2 = "k2"  # ½(s − t)²: gradient of KL(π_s ‖ π_t)


class LrSchedule(StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"


class RolloutEngineName(StrEnum):
    VLLM = "vllm"
    HF = "hf"


class WeightSync(StrEnum):
    """How the actor's weights reach the rollout engines after each update."""

    AUTO = "auto"  # nccl where the actor and vLLM engines hold GPUs of separate workers
    RELOAD = "reload"  # through Ray's object store into vLLM's in-place reload (or HF's load)
    NCCL = "nccl"  # vLLM's NCCL weight-transfer engine: a broadcast from actor rank 0's GPU


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


class LoraConfig(ApiModel):
    """LoRA adapters on the student (peft): only they train; the engine gets merged weights."""

    rank: int = Field(16, ge=1, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha/rank.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt (e.g. [q_proj, v_proj]), or [all-linear]: every "
        "linear layer but the output head.",
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the adapters' input, during updates only."
    )


class StudentRef(ModelRef):
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters instead of all weights (unset: full fine-tuning)."
    )


class KlLoss(ApiModel):
    """A KL(student ‖ teacher) term in the policy loss, differentiated through the student."""

    coef: float = Field(0.001, gt=0, description="Weight of the KL loss beside the PPO loss.")
    estimator: KlLossEstimator = Field(
        KlLossEstimator.LOW_VAR_KL, description="Per-token estimator: low_var_kl, k1 or k2."
    )


class Algorithm(ApiModel):
    """What is optimised: base advantage, then the teacher's per-token reverse KL."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.advEstimator in ['gae', 'none'] || self.rolloutN >= 2",
                    "rolloutN must be at least 2 for group-relative estimators "
                    "(grpo, grpo_per_step)",
                    ".rolloutN",
                ),
                _cel(
                    "self.klEstimator == 'k1'",
                    f"klEstimator: {KL_ESTIMATOR_REFUSAL}",
                    ".klEstimator",
                ),
                _cel(
                    "self.advEstimator != 'none' || "
                    "(self.useKlInAdvantage && self.klPenaltyCoef > 0.0)",
                    "advEstimator none needs useKlInAdvantage: true and klPenaltyCoef > 0 "
                    "(the teacher's KL is its whole advantage)",
                    ".advEstimator",
                ),
            ]
        }
    )

    adv_estimator: AdvEstimator = Field(
        AdvEstimator.GRPO,
        description="Base advantage estimator: grpo, gae, grpo_per_step, or none (reward-free "
        "distillation: the advantage is −klPenaltyCoef·(log π_s − log π_t) alone; the grader "
        "only measures).",
    )
    use_kl_in_advantage: bool = Field(
        True,
        description="Subtract klPenaltyCoef × per-token reverse KL to the teacher from the "
        "normalised advantage. false: pure RL, and no teacher worker is created.",
    )
    kl_penalty_coef: float = Field(0.1, ge=0, description="α in A − α·(log π_s − log π_t).")
    kl_estimator: KlEstimator = Field(
        KlEstimator.K1,
        description="Per-token KL estimator in the advantage: k1 (s − t) only; for k3 "
        "(low_var_kl) use klLoss.",
    )
    rollout_n: int = Field(16, ge=1, description="Responses sampled per prompt (group size).")
    norm_adv_by_std: bool = Field(
        True, description="GRPO: divide the centred score by the group's standard deviation."
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor (gae, grpo_per_step).")
    lam: float = Field(1.0, ge=0, le=1, description="GAE λ.")
    kl_loss: KlLoss | None = Field(
        None, description="Add a KL(student ‖ teacher) loss to the policy loss (unset: off)."
    )
    rollout_is_cap: float | None = Field(
        None,
        ge=1,
        description="C of the truncated importance-sampling weight min(π_old / π_rollout, C) "
        "on each token's policy loss, correcting for the rollout engine's numerics; unset: off.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Algorithm:
        if self.kl_estimator != KlEstimator.K1:
            raise FieldError("klEstimator", f"{self.kl_estimator.value}: {KL_ESTIMATOR_REFUSAL}")
        if self.adv_estimator == AdvEstimator.NONE and not (
            self.use_kl_in_advantage and self.kl_penalty_coef > 0
        ):
            raise FieldError(
                "advEstimator",
                "none needs useKlInAdvantage: true and klPenaltyCoef > 0 (the teacher's KL is "
                "its whole advantage)",
            )
        if self.adv_estimator in GROUP_ESTIMATORS and self.rollout_n < 2:
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
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute each decoder layer's activations in backward (actor and critic): "
        "memory per token drops from all activations to one hidden state per layer.",
    )
    max_tokens_per_micro_batch: int = Field(
        16384,
        ge=1,
        description="Token budget per GPU of one forward/backward pass (rows × padded length, "
        "as verl's ppo_max_token_len_per_gpu); a longer single sequence runs alone.",
    )
    learning_rate: float = Field(1e-6, gt=0, description="Actor (student) learning rate.")
    critic_learning_rate: float = Field(1e-5, gt=0, description="Critic learning rate (gae only).")
    clip_ratio_low: float = Field(0.2, ge=0, le=1, description="PPO clip ε below 1.")
    clip_ratio_high: float = Field(0.2, ge=0, description="PPO clip ε above 1.")
    entropy_coeff: float = Field(0.0, ge=0, description="Entropy bonus coefficient.")
    save_freq: int = Field(100, ge=1, description="Checkpoint every this many steps.")
    test_freq: int = Field(5, ge=1, description="Validate every this many steps.")
    seed: int = Field(42, ge=0, description="Random seed for data order and sampling.")
    lr_warmup_steps: int = Field(
        0, ge=0, description="Training steps of linear learning-rate warm-up (actor and critic)."
    )
    lr_schedule: LrSchedule = Field(
        LrSchedule.CONSTANT,
        description="After warm-up: constant, or cosine decay to minLrRatio × the rate at the "
        "last step.",
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="cosine: the final rate as a fraction of the peak."
    )
    val_n: int = Field(
        1,
        ge=1,
        description="Validation samples per problem: 1 is greedy; more are sampled at "
        "valTemperature and give val/pass@k.",
    )
    val_temperature: float = Field(
        1.0, gt=0, description="Sampling temperature of validation when valN > 1."
    )
    val_max_prompts: int = Field(
        500,
        ge=1,
        description="Validation prompts used: a fixed subset (the same for every run and seed) "
        "when data.val holds more.",
    )
    val_batch_size: int = Field(
        64, ge=1, description="Validation prompts per rollout-engine call (each with valN samples)."
    )


class Rollout(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.weightSync != 'nccl' || (has(self.engine) && self.engine == 'vllm')",
                    "weightSync nccl needs engine vllm",
                    ".weightSync",
                )
            ]
        }
    )

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
    weight_sync: WeightSync = Field(
        WeightSync.AUTO,
        description="How the actor's weights reach the engines after each update: reload (Ray's "
        "object store, then vLLM's in-place reload), nccl (vLLM's NCCL weight-transfer engine, "
        "broadcast from the actor's GPU; needs engine vllm and actor GPUs), or auto: nccl where "
        "vLLM engines and the actor hold GPUs of separate workers (a DistillJob's cluster), "
        "reload elsewhere.",
    )

    @model_validator(mode="after")
    def _nccl_needs_vllm(self) -> Rollout:
        if self.weight_sync == WeightSync.NCCL and self.engine != RolloutEngineName.VLLM:
            raise FieldError(
                "weightSync",
                "nccl needs engine vllm (vLLM's weight-transfer engine receives the broadcast; "
                f"engine is {self.engine.value if self.engine else 'unset'})",
            )
        return self


class Data(ApiModel):
    train: str = Field(min_length=1, description="Training parquet: s3://bucket/key or a path.")
    val: str | None = Field(None, min_length=1, description="Validation parquet (optional).")


class PodPlacement(ApiModel):
    """Where a group's pods may run. Set on a group, a field replaces the job-wide `spec.pods`
    value of the same name (GPU groups want the GPU nodes' taints, the grader does not)."""

    node_selector: dict[str, str] | None = _k8s("pod.nodeSelector", "Node labels the pods need.")
    tolerations: list[dict[str, Any]] | None = _k8s(
        "pod.tolerations", "Taints the pods tolerate (e.g. nvidia.com/gpu:NoSchedule)."
    )
    affinity: dict[str, Any] | None = _k8s("pod.affinity", "Node and pod (anti-)affinity.")
    priority_class_name: str | None = Field(
        None, min_length=1, description="PriorityClass of the pods (preemption order)."
    )


class PodSettings(PodPlacement):
    """Applied to every pod of the job: Ray head, workers, the submitter and the grader."""

    image_pull_secrets: list[dict[str, Any]] | None = _k8s(
        "pod.imagePullSecrets", "Secrets for pulling the trainer and grader images."
    )
    service_account_name: str | None = Field(
        None,
        min_length=1,
        description="ServiceAccount of the pods (IRSA / Workload Identity for S3).",
    )
    env: list[dict[str, Any]] | None = _k8s(
        "container.env", "Extra environment variables (the operator's own names win)."
    )
    env_from: list[dict[str, Any]] | None = _k8s(
        "container.envFrom", "Extra environment from ConfigMaps or Secrets."
    )
    volumes: list[dict[str, Any]] | None = _k8s(
        "pod.volumes", "Extra volumes (names job-spec, tmp, dshm, checkpoints are taken)."
    )
    volume_mounts: list[dict[str, Any]] | None = _k8s(
        "container.volumeMounts", "Where the extra volumes are mounted in every container."
    )
    labels: dict[str, str] | None = Field(
        None, description="Extra pod labels (the operator's own keys win)."
    )
    annotations: dict[str, str] | None = Field(None, description="Extra pod annotations.")

    @model_validator(mode="after")
    def _own_volume_names(self) -> PodSettings:
        for index, volume in enumerate(self.volumes or []):
            if volume.get("name") in RESERVED_VOLUMES:
                raise FieldError(
                    f"volumes[{index}].name",
                    f"{volume['name']!r} is the name of one of the operator's own volumes "
                    f"({', '.join(sorted(RESERVED_VOLUMES))})",
                )
        for index, mount in enumerate(self.volume_mounts or []):
            if message := _reserved_mount(str(mount.get("mountPath", ""))):
                raise FieldError(f"volumeMounts[{index}].mountPath", message)
        return self


class Grader(PodPlacement):
    replicas: int = Field(2, ge=1, description="math-grader Deployment replicas.")
    cpu: Quantity = Field("2", description="CPU request and limit per grader pod (= workers).")
    memory: Quantity = Field("2Gi", description="Memory request and limit per grader pod.")
    timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Per-item grading deadline; slower items score 0."
    )
    image: str | None = Field(
        None, description="Grader image (default: the trainer image, which contains it)."
    )


class PodResources(PodPlacement):
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


class CheckpointVolume(ApiModel):
    """A PersistentVolumeClaim holding the checkpoints, mounted into the head and the actor and
    critic pods (ReadWriteMany when they can land on different nodes)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    # "/tmp/" is the same mount ("/tmp//" only pydantic refuses). A list, not a
                    # regex: CEL's cost estimate of matches() on a string with no maxLength can
                    # exceed the API server's budget.
                    "!(self.mountPath in "
                    + str([p + end for p in RESERVED_MOUNT_PATHS for end in ("", "/")])
                    + ")",
                    "mountPath is where the operator mounts its own volumes ("
                    + ", ".join(RESERVED_MOUNT_PATHS)
                    + ")",
                    ".mountPath",
                )
            ]
        }
    )

    claim_name: str = Field(min_length=1, description="PersistentVolumeClaim name.")
    mount_path: str = Field(
        "/checkpoints",
        pattern=r"^/.+",
        description="Where the claim is mounted in the pods.",
    )
    sub_path: str | None = Field(None, min_length=1, description="Directory inside the volume.")

    @model_validator(mode="after")
    def _not_an_operator_mount(self) -> CheckpointVolume:
        if message := _reserved_mount(self.mount_path):
            raise FieldError("mountPath", message)
        return self


class Checkpoint(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.volume) || self.uri == self.volume.mountPath"
                    " || self.uri.startsWith(self.volume.mountPath.endsWith('/')"
                    " ? self.volume.mountPath : self.volume.mountPath + '/')",
                    "with checkpoint.volume, uri must be a path under volume.mountPath",
                    ".uri",
                )
            ]
        }
    )

    uri: str = Field(
        min_length=1,
        description="Checkpoint location: s3://bucket/prefix, or a path (under volume.mountPath "
        "when a volume is given). Checkpoints go to <uri>/global_step_<N>/, the final model to "
        "<uri>/final/.",
    )
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
    volume: CheckpointVolume | None = Field(
        None, description="Store checkpoints on this PVC instead of S3."
    )

    @model_validator(mode="after")
    def _uri_on_the_volume(self) -> Checkpoint:
        mount = self.volume.mount_path.rstrip("/") if self.volume is not None else None
        if mount is not None and not (self.uri == mount or self.uri.startswith(mount + "/")):
            raise FieldError(
                "uri",
                f"{self.uri!r} is not under volume.mountPath {self.volume.mount_path!r} "
                "(the volume is where the checkpoints go)",
            )
        return self


_SPEC_RULES = [
    _cel(
        "self.rollout.weightSync != 'nccl' || self.resources.actor.gpusPerReplica > 0",
        "rollout.weightSync nccl needs the actor on GPUs (resources.actor.gpusPerReplica > 0)",
        ".rollout.weightSync",
    ),
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
    # `self == oldSelf` on the field holds only when it exists on both sides.
    _cel(
        "has(self.queueName) == has(oldSelf.queueName)",
        "queueName cannot be added or removed after the job is created",
    ),
    _cel(
        "has(self.workloadPriorityClass) == has(oldSelf.workloadPriorityClass)",
        "workloadPriorityClass cannot be added or removed after the job is created",
    ),
    _cel(
        "has(self.pods) == has(oldSelf.pods)",
        "pods cannot be added or removed after the job is created",
    ),
]


class DistillJobSpec(ApiModel):
    """Everything that defines one on-policy distillation run."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    student: StudentRef = Field(
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
    queue_name: KueueName | None = Field(
        None,
        description="Kueue LocalQueue that admits the job (Kueue then suspends and resumes it).",
        json_schema_extra=_immutable("queueName"),
    )
    workload_priority_class: KueueName | None = Field(
        None,
        description="Kueue WorkloadPriorityClass (the kueue.x-k8s.io/priority-class label): the "
        "job's priority in its ClusterQueue, for admission order and preemption.",
        json_schema_extra=_immutable("workloadPriorityClass"),
    )
    pods: PodSettings | None = Field(
        None,
        description="Scheduling, identity, environment and volumes of every pod of the job; "
        "resources.<group> and grader may override the placement fields.",
        json_schema_extra=_immutable("pods"),
    )
    ttl_seconds_after_finished: int = Field(
        60,
        ge=0,
        description="Seconds the finished Ray cluster (and its GPUs) is kept for inspection. Kueue "
        "releases the quota when the job finishes, while the pods hold their GPUs until then.",
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
        nccl = self.rollout.weight_sync == WeightSync.NCCL
        if nccl and not self.resources.actor.gpus_per_replica:
            raise FieldError(
                "rollout.weightSync",
                "nccl needs the actor on GPUs (resources.actor.gpusPerReplica is 0): actor rank 0 "
                "broadcasts the weights from its GPU",
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
        """A teacher worker exists only when its logprobs enter the advantage or the loss."""
        return self.algorithm.use_kl_in_advantage or self.algorithm.kl_loss is not None

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


class CheckpointStatus(ApiModel):
    uri: str = Field(description="The checkpoint's directory, <checkpoint.uri>/global_step_<N>/.")
    step: int = Field(ge=0, description="Training steps it contains.")


class DistillJobStatus(ApiModel):
    phase: JobPhase | None = None
    reason: str | None = Field(None, description="Why the job is in its phase (unset: Running).")
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
    last_checkpoint: CheckpointStatus | None = Field(
        None, description="Newest committed checkpoint; a re-created RayJob resumes from it."
    )
    final_model: str | None = Field(
        None, description="The exported student (Hugging Face format), <checkpoint.uri>/final/."
    )
    admission: str | None = Field(
        None, description="Kueue's latest word on the job's Workload (why it waits, or admitted)."
    )
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
