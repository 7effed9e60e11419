"""The training loop: one DistillJob from start to finish, calling roles, never models.

    run_job(job, RunOptions(backend="inprocess")) -> RunSummary

One step (`train_step`): sample responses → grade (in a thread, beside the next three) → student
logprobs → teacher logprobs (when useKlInAdvantage or klLoss) → critic values (gae) → base
advantage by name (none: zero) → teacher KL subtracted after normalisation → PPO update (plus the
KL loss) → critic update → weights to the rollout engine. Around it (`run_job`): validation every
testFreq steps (valN samples per problem, valBatchSize prompts per engine call), a checkpoint every
saveFreq steps, metrics every step, and the trained student exported to `<checkpoint uri>/final/`
after the last step. A run whose job has a committed checkpoint (or is given --resume-from)
continues from it exactly: same weights, optimizer, data position and RNG states, so it computes
what the interrupted run would have. The CLI (`python -m distill_trainer run job.yaml`) is in
cli.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from distill_api import DistillJob
from distill_trainer.algorithm import (
    apply_kl_to_advantages,
    compute_base_advantages,
    masked_mean,
    pass_at_k,
)
from distill_trainer.batch import RolloutBatch, last_token_rewards
from distill_trainer.checkpoint import CheckpointError
from distill_trainer.checkpoint.manifest import step_dir
from distill_trainer.checkpoint.state import (
    DRIVER_STATE,
    capture_rng,
    from_bytes,
    restore_rng,
    to_bytes,
)
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
    last_checkpoint: str | None  # URI of the newest committed checkpoint
    final_model: str | None  # URI of the exported student (Hugging Face format)

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
        key = f"timing_s/{phase}"  # a phase timed in two parts (grade) adds up
        self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - start


# Grading runs beside the scoring passes, which do not need the scores: the grader's round trip
# (pool or HTTP) is hidden behind them. One thread: a step grades one batch at a time.
_GRADING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grade")


def train_step(run: Run, prompts: list[EncodedPrompt]) -> tuple[dict[str, float], RolloutBatch]:
    """One step of on-policy distillation on a batch of prompts; returns its metrics and batch.

    `run.old_logprobs_from_rollout` (RunOptions; by default where the engine's logprobs are
    exact): the engine's behaviour logprobs are the old logprobs, its sampling entropies the
    student's entropy, and the actor's scoring pass is skipped."""
    roles, alg, timer = run.roles, run.spec.algorithm, PhaseTimer()
    with timer("generate"):
        rollouts = roles.rollout.generate(
            [p.token_ids for p in prompts], alg.rollout_n, run.sampling
        )
        rollouts.expect_weight_version(run.weight_version)
        batch = rollouts.to_batch(alg.rollout_n)
    with timer("grade"):  # submitted here, awaited before the advantage: both parts count
        grading = _GRADING.submit(run.grade, batch, prompts)
    entropy = None
    if run.old_logprobs_from_rollout and batch.rollout_logprobs is not None:
        batch.old_logprobs, entropy = batch.rollout_logprobs, batch.rollout_entropy
    else:
        with timer("old_logprob"):
            student = roles.actor.compute_logprobs(batch, with_entropy=True)
            batch.old_logprobs, entropy = student.logprobs, student.entropy
    if roles.teacher is not None:
        with timer("teacher_logprob"):
            batch.teacher_logprobs = roles.teacher.compute_logprobs(batch)
    if roles.critic is not None:
        with timer("values"):
            batch.values = roles.critic.compute_values(batch)
    with timer("grade"):
        batch.scores = grading.result()
        batch.step_rewards = last_token_rewards(batch.scores, batch.response_mask)
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
        if alg.use_kl_in_advantage:  # after normalisation, by design
            assert batch.teacher_logprobs is not None
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
        sync_metrics = roles.sync_weights()
        run.weight_version += 1  # the actor's get_weights counts its updates
    rollout = rollout_metrics(batch, entropy)
    metrics = {**rollout, **kl_metrics, **actor_metrics, **critic_metrics, **sync_metrics}
    return {**metrics, **timer.metrics}, batch


def rollout_metrics(batch: RolloutBatch, entropy: torch.Tensor | None) -> dict[str, float]:
    """Reward, response length, clip ratio (responses cut without an EOS), student entropy, and
    `rollout/logprob_mismatch`: mean |behaviour − old| logprob over response tokens (≈ 0 unless
    top_p < 1 or bf16 sampling; a JSONL/WandB diagnostic, not a Prometheus gauge; absent when the
    behaviour logprobs are the old ones)."""
    assert batch.scores is not None and batch.truncated is not None
    mask = batch.response_mask
    metrics = {
        "training_step_reward": batch.scores.float().mean().item(),
        "response_length/mean": batch.response_lengths.float().mean().item(),
        "response_length/clip_ratio": batch.truncated.float().mean().item(),
    }
    if entropy is not None:
        metrics["actor/entropy"] = masked_mean(entropy, mask).item()
    rescored = batch.old_logprobs is not batch.rollout_logprobs
    if batch.rollout_logprobs is not None and batch.old_logprobs is not None and rescored:
        gap = (batch.rollout_logprobs - batch.old_logprobs).abs()
        metrics["rollout/logprob_mismatch"] = masked_mean(gap, mask).item()
    return metrics


def pass_at_k_values(n: int) -> list[int]:
    """The k of the logged val/pass@k: powers of two below n, and n itself."""
    return sorted({2**i for i in range(n.bit_length()) if 2**i < n} | {n})


# Validation samples from a stream of its own, the same at every validation and in every run
# (common random numbers: curves and runs differ by their weights, not their draws), and leaves
# the training stream alone, so testFreq never changes what training samples.
VALIDATION_SAMPLING_SEED = 0


def validate(run: Run) -> dict[str, float]:
    """`val/reward`: the mean score over valN responses per validation problem (1: greedy, else
    sampled at valTemperature), and `val/pass@k` (unbiased) for k in `pass_at_k_values(valN)`.

    Prompts go to the engine valBatchSize at a time, never the whole set in one call; run.val is
    already the fixed subset of at most valMaxPrompts (setup.validation_subset)."""
    t, timer = run.spec.training, PhaseTimer()
    sampling = SamplingParams(
        max_new_tokens=run.sampling.max_new_tokens,
        temperature=t.val_temperature,
        greedy=t.val_n == 1,
        logprobs=False,
    )
    parts = []
    with timer("validate"):
        for start in range(0, len(run.val), t.val_batch_size):
            prompts = run.val[start : start + t.val_batch_size]
            # Seeds spaced as one call's would be (vLLM: prompt i gets seed + i·n), batch by batch.
            seeded = replace(sampling, seed=VALIDATION_SAMPLING_SEED + start * t.val_n)
            rollouts = run.roles.rollout.generate([p.token_ids for p in prompts], t.val_n, seeded)
            rollouts.expect_weight_version(run.weight_version)
            parts.append(run.grade(rollouts.to_batch(t.val_n), prompts))
    scores = torch.cat(parts).view(len(run.val), t.val_n)  # prompt-major, as the engine returns
    correct = scores >= 1.0  # the grader gives 1.0 to a correct answer only
    metrics = {"val/reward": scores.mean().item()}
    metrics.update({f"val/pass@{k}": pass_at_k(correct, k) for k in pass_at_k_values(t.val_n)})
    return {**metrics, **timer.metrics}


def checkpoint(run: Run, step: int, epoch: int) -> dict[str, float]:
    """`global_step_<step>/`: each trainable role writes its part where it runs, the driver adds
    its own state, then commits with the manifest (last) and prunes older checkpoints."""
    timer, roles = PhaseTimer(), run.roles
    with timer("checkpoint"):
        uri = run.checkpoints.begin(step)
        files = roles.actor.save_checkpoint(uri)
        if roles.critic is not None:
            files.update(roles.critic.save_checkpoint(uri))
        state = {
            "step": step,
            "epoch": epoch,
            "batches": step,  # prompt batches consumed: one per step
            "rng": capture_rng(),
            "rollout": roles.rollout.sampling_state(),
        }
        data = to_bytes(state)
        run.checkpoints.store.write_bytes(f"{step_dir(step)}/{DRIVER_STATE}", data)
        files[DRIVER_STATE] = len(data)
        trained = [name for name in ("actor", "critic") if getattr(roles, name) is not None]
        run.last_checkpoint = run.checkpoints.commit(step, epoch, files, trained).uri
    return {"training/last_checkpoint_step": float(step), **timer.metrics}


def resume(run: Run) -> None:
    """Load `run.resume` into every role and this process, and sync the rollout engine, so the
    next step is the one the interrupted run would have taken."""
    assert run.resume is not None
    manifest, roles = run.resume.manifest, run.roles
    roles.actor.load_checkpoint(manifest.uri)
    if roles.critic is not None:
        if "critic" not in manifest.roles:
            raise CheckpointError(f"checkpoint {manifest.uri} has no critic to resume")
        roles.critic.load_checkpoint(manifest.uri)
    roles.sync_weights()
    run.weight_version = manifest.step  # one actor update per step: the restored weights' version
    state = from_bytes(run.resume.store.read_bytes(f"{run.resume.name}/{DRIVER_STATE}"))
    restore_rng(state["rng"])
    roles.rollout.load_sampling_state(state["rollout"])
    log.info("resumed from %s: continuing at step %d", manifest.uri, manifest.step + 1)


def export_final(run: Run) -> dict[str, float]:
    """The trained student, Hugging Face format with its tokenizer, at `<uri>/final/`."""
    run.roles.actor.export_model(run.checkpoints.final_uri)
    log.info("final model saved to %s", run.checkpoints.final_uri)
    run.final_model = run.checkpoints.final_uri
    return {"training/final_model_saved": 1.0}


def run_job(job: DistillJob, options: RunOptions | None = None) -> RunSummary:
    """Train `job` to the end; returns the summary (also written to output_dir/summary.json)."""
    options = options or RunOptions()
    started = time.monotonic()
    run = setup_run(job, options)
    try:
        if run.resume is not None:
            resume(run)
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
        final_model=run.final_model,
    )
    (options.output_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    return summary


def _train(run: Run, options: RunOptions) -> list[dict[str, float]]:
    training, history = run.spec.training, []

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        history.append(metrics)
        run.sink.log(metrics, step)

    base = {
        "training/step": float(run.start_step),
        "training/total_steps": float(run.total_steps),
        "training/final_model_saved": 0.0,
    }
    # A resumed run's first record says which checkpoint it stands on (scrapers, the operator).
    resumed = {"training/last_checkpoint_step": float(run.start_step)} if run.resume else {}
    if run.val and options.val_before_train and not run.resume:
        log_metrics({**base, "training/epoch": 0.0, **validate(run)}, 0)
    if run.start_step >= run.total_steps:  # finished before: only the export may be missing
        log_metrics({**base, **resumed, **export_final(run)}, run.start_step)
        return history
    batches = prompt_batches(run.train, training.batch_size, training.seed, run.start_step)
    for step in range(run.start_step + 1, run.total_steps + 1):
        epoch, prompts = next(batches)
        started = time.perf_counter()
        metrics, _ = train_step(run, prompts)
        seconds = time.perf_counter() - started
        tokens = sum(len(p.token_ids) for p in prompts) * run.spec.algorithm.rollout_n
        tokens += metrics["response_length/mean"] * len(prompts) * run.spec.algorithm.rollout_n
        metrics.update(
            {
                **base,
                **resumed,
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
        if last:
            metrics.update(export_final(run))
        log_metrics(metrics, step)
        resumed = {}
    return history
