"""Runtime options of one trainer run (not part of the DistillJob spec) and the role configs.

The spec says *what* to train; `RunOptions` says *where and how* this process runs it (backend,
device, output directory, metrics port, micro-batch sizes). `role_configs` derives each role's
picklable config from both, so a role built in-process or inside a Ray actor sees the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from distill_api import DistillJobSpec
from distill_api.v1alpha1 import KlLoss, LoraConfig, LrSchedule
from distill_trainer.algorithm import LossAgg


class RunOptions(BaseModel):
    """How this process runs a job; the CLI flags map onto these fields."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["inprocess", "ray"] = Field(
        "ray", description="Roles as Ray actors (local Ray or a cluster) or plain objects."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if present.")
    output_dir: Path = Field(Path("out/run"), description="metrics.jsonl, checkpoints/, summary.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one."
    )
    micro_batch_size: int = Field(
        1024,
        ge=1,
        description="Most rows per forward/backward pass; training.maxTokensPerMicroBatch caps "
        "their tokens, which is what sizes them (16 rows cost the demo ~0.2 s a step).",
    )
    generate_batch_size: int | None = Field(
        None, ge=1, description="Prompts per generate call (default: all of a step's prompts)."
    )
    grad_clip: float = Field(1.0, gt=0, description="Max global grad norm (actor and critic).")
    value_clip: float = Field(0.5, gt=0, description="Critic value clip range.")
    clip_ratio_c: float = Field(3.0, gt=1, description="Dual-clip constant for A < 0.")
    loss_agg: LossAgg = Field(LossAgg.TOKEN_MEAN, description="Loss aggregation over tokens.")
    val_before_train: bool = Field(True, description="Validate once before the first step.")
    max_val_prompts: int | None = Field(None, ge=1, description="Cap on validation prompts.")
    progress: bool = Field(True, description="Show a progress bar on the console.")
    progress_line: int = Field(
        0, ge=0, description="Console line of the progress bar, for runs side by side."
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default all).")
    colocate: bool = Field(
        True,
        description="On a local Ray on CPU where each role has one rank, run every role in one "
        "Ray worker process: they take turns on the same cores, and a call between processes "
        "cost 20-60 ms a phase (docs/benchmarks.md, change 11). Off: a process per role, as on "
        "a cluster.",
    )
    collective_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of every collective in a training group (seconds)."
    )
    logprob_chunk_tokens: int = Field(
        1024, ge=1, description="Response tokens whose [n, V] logits exist at once."
    )
    old_logprobs_from_rollout: bool | None = Field(
        None,
        description="Use the rollout engine's behaviour logprobs as the PPO old logprobs and "
        "skip the actor's scoring pass (verl's bypass mode). Unset: where that is exact, the HF "
        "engine sampling the whole distribution (top_p 1) on this machine's CPU in float32 with "
        "the actor's own weights; its entropies are then actor/entropy. True: everywhere with "
        "topP 1, refused under top-p (with vLLM an approximation, and no actor/entropy). "
        "False: never.",
    )
    resume_from: str | None = Field(
        None, description="Checkpoint URI to continue from (default: the job's newest)."
    )
    force_resume: bool = Field(False, description="Resume even if math-changing fields differ.")

    def math_options(self) -> dict[str, object]:
        """The options that enter the loss (hashed into checkpoints with the spec's fields)."""
        math: dict[str, object] = {
            "gradClip": self.grad_clip,
            "valueClip": self.value_clip,
            "clipRatioC": self.clip_ratio_c,
            "lossAgg": self.loss_agg.value,
        }
        # Asked for, not unset: where unset turns it on it changes the update only by rounding.
        if self.old_logprobs_from_rollout:
            math["oldLogprobsFromRollout"] = True
        return math


@dataclass(frozen=True)
class RoleConfig:
    """What every model-holding role needs to load and run its model."""

    model: str  # HF name or local path
    device: str  # "cpu" | "cuda" | "auto": resolved where the role runs (a worker, not the driver)
    seed: int
    temperature: float  # logits are divided by it, as the sampler did
    micro_batch_size: int  # most rows per forward/backward pass
    train: bool = False  # trainable roles keep float32 weights (autocast to bf16 on cuda)
    # Micro-batches hold at most this many tokens of padded rectangle (None: rows only).
    max_tokens_per_micro_batch: int | None = None
    gradient_checkpointing: bool = False  # keep only each decoder layer's input for backward
    logprob_chunk_tokens: int = 1024  # response tokens whose [n, V] logits exist at once
    collective_timeout_s: float = 600.0  # deadline of every collective of a sharded group


@dataclass(frozen=True)
class RolloutConfig(RoleConfig):
    generate_batch_size: int | None = None  # HF: prompts per generate call (vLLM batches itself)
    # vLLM only (spec.resources.rollout and spec.rollout):
    max_model_len: int | None = None  # prompt + response limit: the KV cache is sized for it
    tensor_parallel_size: int = 1  # on GPU; CPU engines run on one device
    gpu_memory_utilization: float = 0.6
    enforce_eager: bool | None = None  # None: eager on CPU, CUDA graphs on GPU
    # vLLM's weight-transfer backend the engine is built with ("nccl"), set by build_roles when
    # rollout.weightSync resolves to nccl; None: in-place reload only.
    weight_transfer: str | None = None


@dataclass(frozen=True)
class OptimConfig:
    """PPO-style optimisation shared by actor and critic."""

    learning_rate: float
    ppo_epochs: int
    mini_batch_size: int  # responses per optimizer step
    grad_clip: float
    loss_agg: LossAgg
    weight_decay: float = 0.01  # the seed's (verl's) AdamW default
    # The LR schedule, in training steps (one scheduler step per update call, as verl).
    total_steps: int = 1
    lr_warmup_steps: int = 0
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    min_lr_ratio: float = 0.0


@dataclass(frozen=True)
class ActorConfig(RoleConfig):
    optim: OptimConfig | None = None
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_ratio_c: float = 3.0
    entropy_coeff: float = 0.0
    kl_loss: KlLoss | None = None  # algorithm.klLoss: needs teacher_logprobs in the batch
    lora: LoraConfig | None = None  # student.lora: train adapters only
    rollout_is_cap: float | None = None  # algorithm.rolloutIsCap; None: no IS correction


@dataclass(frozen=True)
class CriticConfig(RoleConfig):
    optim: OptimConfig | None = None
    value_clip: float = 0.5


@dataclass(frozen=True)
class RoleConfigs:
    rollout: RolloutConfig
    actor: ActorConfig
    teacher: RoleConfig | None  # None: useKlInAdvantage is off, no teacher at all
    critic: CriticConfig | None  # None: the estimator needs no critic


def role_configs(
    spec: DistillJobSpec, options: RunOptions, total_steps: int | None = None
) -> RoleConfigs:
    """Every role's config from the spec and the run options; `total_steps` (as counted from
    the data) sets the length of the LR schedule (default: training.totalSteps, else 1)."""
    t = spec.training
    common = {
        "device": options.device,
        "seed": t.seed,
        "temperature": spec.rollout.temperature,
        "micro_batch_size": options.micro_batch_size,
        "max_tokens_per_micro_batch": t.max_tokens_per_micro_batch,
        "logprob_chunk_tokens": options.logprob_chunk_tokens,
        "collective_timeout_s": options.collective_timeout_s,
    }
    trained = {"train": True, "gradient_checkpointing": t.gradient_checkpointing}
    student = spec.student.model

    # ppoMiniBatchSize counts prompts, as in the seed/verl: a mini-batch is all their responses.
    mini_batch = t.ppo_mini_batch_size * spec.algorithm.rollout_n

    def optim(lr: float) -> OptimConfig:
        return OptimConfig(
            lr,
            t.ppo_epochs,
            mini_batch,
            options.grad_clip,
            options.loss_agg,
            total_steps=total_steps or t.total_steps or 1,
            lr_warmup_steps=t.lr_warmup_steps,
            lr_schedule=t.lr_schedule,
            min_lr_ratio=t.min_lr_ratio,
        )

    actor = ActorConfig(
        model=student,
        optim=optim(t.learning_rate),
        clip_low=t.clip_ratio_low,
        clip_high=t.clip_ratio_high,
        clip_ratio_c=options.clip_ratio_c,
        entropy_coeff=t.entropy_coeff,
        **trained,
        kl_loss=spec.algorithm.kl_loss,
        lora=spec.student.lora,
        rollout_is_cap=spec.algorithm.rollout_is_cap,
        **common,
    )
    teacher = None
    if spec.needs_teacher:
        # Unset teacher: a frozen copy of the student's initial weights (the base model under
        # LoRA). Built even when klPenaltyCoef is 0: an ablation that still measures the KL.
        teacher = RoleConfig(model=(spec.teacher or spec.student).model, **common)
    critic = None
    if spec.needs_critic:
        critic = CriticConfig(
            model=student,
            optim=optim(t.critic_learning_rate),
            value_clip=options.value_clip,
            **trained,
            **common,
        )
    group = spec.resources.rollout
    rollout = RolloutConfig(
        model=student,
        generate_batch_size=options.generate_batch_size,
        max_model_len=spec.rollout.max_prompt_length + spec.rollout.max_response_length,
        tensor_parallel_size=group.tensor_parallel_size,
        gpu_memory_utilization=group.gpu_memory_utilization,
        enforce_eager=spec.rollout.enforce_eager,
        **common,
    )
    return RoleConfigs(rollout=rollout, actor=actor, teacher=teacher, critic=critic)
