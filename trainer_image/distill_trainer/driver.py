"""The training loop: one DistillJob from start to finish, calling roles, never models.

    run_job(job, RunOptions(backend="inprocess")) -> RunSummary

One step (`train_step`): sample responses → grade → student logprobs → teacher logprobs (only
when useKlInAdvantage) → critic values (gae) → base advantage by name → teacher KL subtracted
after normalisation → PPO update → critic update → weights to the rollout engine. Around it
(`run_job`): validation every testFreq steps, a checkpoint every saveFreq steps, metrics every
step. The CLI (`python -m distill_trainer run job.yaml`) is in cli.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill_api import DistillJob
from distill_trainer.algorithm import apply_kl_to_advantages, compute_base_advantages, masked_mean
from distill_trainer.batch import RolloutBatch, last_token_rewards
from distill_trainer.checkpoint import DEFAULT_KEEP
from distill_trainer.config import RunOptions
from distill_trainer.prompts import EncodedPrompt, prompt_batches
from distill_trainer.roles import SamplingParams
from distill_trainer.setup import Run, setup_run

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a finished run reports (also written to `<output_dir>/summary.json`)."""

    job_name: str
    steps: int
    total_steps: int
    seconds: float
    roles: list[str]
    val_rewards: dict[int, float]  # step → validation reward (step 0: before training)
    final_metrics: dict[str, float]
    history: list[dict[str, float]] = field(repr=False)  # every logged metrics dict, in order
    output_dir: Path
    metrics_path: Path
    last_checkpoint: Path | None  # as the actor wrote it (on a cluster: the actor pod's disk)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "history"}
        return json.loads(json.dumps(data, default=str))


class PhaseTimer:
    """`with timer("generate"): …` records `timing_s/generate`."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.metrics[f"timing_s/{phase}"] = time.perf_counter() - start


def train_step(run: Run, prompts: list[EncodedPrompt]) -> tuple[dict[str, float], RolloutBatch]:
    """One step of on-policy distillation on a batch of prompts; returns its metrics and batch."""
    roles, alg, timer = run.roles, run.spec.algorithm, PhaseTimer()
    with timer("generate"):
        rollouts = roles.rollout.generate(
            [p.token_ids for p in prompts], alg.rollout_n, run.sampling
        )
        rollouts.expect_weight_version(run.weight_version)
        batch = rollouts.to_batch(alg.rollout_n)
    with timer("grade"):
        batch.scores = run.grade(batch, [p.ground_truth for p in prompts])
        batch.step_rewards = last_token_rewards(batch.scores, batch.response_mask)
    with timer("old_logprob"):
        student = roles.actor.compute_logprobs(batch, with_entropy=True)
        batch.old_logprobs = student.logprobs
    if roles.teacher is not None:
        with timer("teacher_logprob"):
            batch.teacher_logprobs = roles.teacher.compute_logprobs(batch)
    if roles.critic is not None:
        with timer("values"):
            batch.values = roles.critic.compute_values(batch)
    with timer("advantage"):
        batch.advantages, batch.returns = compute_base_advantages(
            alg.adv_estimator,
            response_mask=batch.response_mask,
            scores=batch.scores,
            step_rewards=batch.step_rewards,
            token_rewards=batch.step_rewards,
            values=batch.values,
            group_ids=batch.group_ids,
            gamma=alg.gamma,
            lam=alg.lam,
            norm_by_std=alg.norm_adv_by_std,
        )
        kl_metrics: dict[str, float] = {}
        if batch.teacher_logprobs is not None:  # after normalisation, by design
            batch.advantages, kl_metrics = apply_kl_to_advantages(
                batch.advantages,
                batch.old_logprobs,
                batch.teacher_logprobs,
                batch.response_mask,
                alg.kl_penalty_coef,
                alg.kl_estimator,
            )
    with timer("update_actor"):
        actor_metrics = roles.actor.update(batch)
    critic_metrics: dict[str, float] = {}
    if roles.critic is not None:
        with timer("update_critic"):
            critic_metrics = roles.critic.update(batch)
    with timer("weight_sync"):
        sync_metrics = roles.rollout.load_weights(roles.actor.get_weights())
        run.weight_version += 1  # the actor's get_weights counts its updates
    rollout = rollout_metrics(batch, student.entropy)
    metrics = {**rollout, **kl_metrics, **actor_metrics, **critic_metrics, **sync_metrics}
    return {**metrics, **timer.metrics}, batch


def rollout_metrics(batch: RolloutBatch, entropy: torch.Tensor | None) -> dict[str, float]:
    """Reward, response length, clip ratio (responses cut without an EOS), student entropy, and
    `rollout/logprob_mismatch`: mean |behaviour − old| logprob over response tokens (≈ 0 unless
    top_p < 1 or bf16 sampling; a JSONL/WandB diagnostic, not a Prometheus gauge)."""
    assert batch.scores is not None and batch.truncated is not None
    mask = batch.response_mask
    metrics = {
        "training_step_reward": batch.scores.float().mean().item(),
        "response_length/mean": batch.response_lengths.float().mean().item(),
        "response_length/clip_ratio": batch.truncated.float().mean().item(),
    }
    if entropy is not None:
        metrics["actor/entropy"] = masked_mean(entropy, mask).item()
    if batch.rollout_logprobs is not None and batch.old_logprobs is not None:
        gap = (batch.rollout_logprobs - batch.old_logprobs).abs()
        metrics["rollout/logprob_mismatch"] = masked_mean(gap, mask).item()
    return metrics


def validate(run: Run) -> dict[str, float]:
    """Mean score of greedy responses on the validation prompts."""
    timer = PhaseTimer()
    with timer("validate"):
        greedy = SamplingParams(
            max_new_tokens=run.sampling.max_new_tokens, greedy=True, logprobs=False
        )
        rollouts = run.roles.rollout.generate([p.token_ids for p in run.val], 1, greedy)
        rollouts.expect_weight_version(run.weight_version)
        scores = run.grade(rollouts.to_batch(1), [p.ground_truth for p in run.val])
    return {"val/reward": scores.float().mean().item(), **timer.metrics}


def checkpoint(run: Run, step: int, epoch: int) -> dict[str, float]:
    """Have the actor save the student and prune old checkpoints; record where it saved.

    The driver touches no file here: on a cluster the actor's pod holds the checkpoint root."""
    timer = PhaseTimer()
    keep = run.spec.checkpoint.keep if run.spec.checkpoint else DEFAULT_KEEP
    state = {"epoch": epoch, "job": run.job_name}
    with timer("checkpoint"):
        run.last_checkpoint = run.roles.actor.save_checkpoint(
            run.checkpoint_root, step, keep, state
        )
    return {"training/last_checkpoint_step": float(step), **timer.metrics}


def run_job(job: DistillJob, options: RunOptions | None = None) -> RunSummary:
    """Train `job` to the end; returns the summary (also written to output_dir/summary.json)."""
    options = options or RunOptions()
    started = time.monotonic()
    run = setup_run(job, options)
    try:
        history = _train(run, options)
    finally:
        run.close()
    summary = RunSummary(
        job_name=run.job_name,
        steps=max((int(m.get("training/step", 0)) for m in history), default=0),
        total_steps=run.total_steps,
        seconds=time.monotonic() - started,
        roles=run.roles.names,
        val_rewards={
            int(m["training/step"]): m["val/reward"] for m in history if "val/reward" in m
        },
        final_metrics=dict(run.sink.last),
        history=history,
        output_dir=options.output_dir,
        metrics_path=run.sink.path,
        last_checkpoint=run.last_checkpoint,
    )
    (options.output_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    return summary


def _train(run: Run, options: RunOptions) -> list[dict[str, float]]:
    training, history = run.spec.training, []

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        history.append(metrics)
        run.sink.log(metrics, step)

    base = {"training/step": 0.0, "training/total_steps": float(run.total_steps)}
    if run.val and options.val_before_train:
        log_metrics({**base, "training/epoch": 0.0, **validate(run)}, 0)
    batches = prompt_batches(run.train, training.batch_size, training.seed)
    for step in range(1, run.total_steps + 1):
        epoch, prompts = next(batches)
        started = time.perf_counter()
        metrics, _ = train_step(run, prompts)
        seconds = time.perf_counter() - started
        tokens = sum(len(p.token_ids) for p in prompts) * run.spec.algorithm.rollout_n
        tokens += metrics["response_length/mean"] * len(prompts) * run.spec.algorithm.rollout_n
        metrics.update(
            {
                **base,
                "training/step": float(step),
                "training/epoch": float(epoch),
                "timing_s/step": seconds,
                "throughput/tokens_per_second": tokens / seconds,
            }
        )
        last = step == run.total_steps
        if run.val and (step % training.test_freq == 0 or last):
            metrics.update(validate(run))
        if step % training.save_freq == 0 or last:
            metrics.update(checkpoint(run, step, epoch))
        log_metrics(metrics, step)
    return history
