"""The objective knobs in real training steps: the KL loss, reward-free distillation (advEstimator
none) and the learning-rate schedule the actor's optimizer follows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill_trainer.algorithm import compute_base_advantages, lr_factor
from distill_trainer.config import RunOptions
from distill_trainer.driver import train_step
from distill_trainer.setup import Run, setup_run


def _run(job, tmp_path: Path) -> Run:
    options = RunOptions(backend="inprocess", device="cpu", output_dir=tmp_path, progress=False)
    return setup_run(job, options)


def test_kl_loss_without_kl_in_the_advantage(make_job, teacher_dir: Path, tmp_path: Path) -> None:
    job = make_job(
        teacher={"model": str(teacher_dir)},
        algorithm={"useKlInAdvantage": False, "klLoss": {"coef": 0.5, "estimator": "k2"}},
        training={"ppoMiniBatchSize": 2},  # one mini-batch: the loss is taken before any update
    )
    run = _run(job, tmp_path)
    try:
        assert run.roles.teacher is not None  # the loss needs the teacher's logprobs
        metrics, batch = train_step(run, run.train[:2])
        base, _ = compute_base_advantages(
            "grpo",
            response_mask=batch.response_mask,
            scores=batch.scores,
            group_ids=batch.group_ids,
        )
        assert torch.equal(batch.advantages, base)  # no KL in the advantage
        assert "distill/kl_per_token" not in metrics
        d = torch.where(batch.response_mask.bool(), batch.old_logprobs - batch.teacher_logprobs, 0)
        expected = (0.5 * d.square()).sum() / batch.response_mask.sum()
        assert metrics["actor/kl_loss"] == pytest.approx(expected.item(), rel=1e-4)
    finally:
        run.close()


def test_none_is_reward_free_distillation(make_job, teacher_dir: Path, tmp_path: Path) -> None:
    job = make_job(
        teacher={"model": str(teacher_dir)},
        algorithm={"advEstimator": "none", "klPenaltyCoef": 0.3},
    )
    run = _run(job, tmp_path)
    try:
        metrics, batch = train_step(run, run.train[:2])
        kl = torch.where(batch.response_mask.bool(), batch.old_logprobs - batch.teacher_logprobs, 0)
        assert torch.equal(batch.advantages, -0.3 * kl)
        assert "training_step_reward" in metrics  # measured, not optimised
    finally:
        run.close()


def test_actor_follows_warmup_then_cosine(make_job, tmp_path: Path) -> None:
    training = {
        "totalSteps": 4,
        "learningRate": 1e-3,
        "lrWarmupSteps": 2,
        "lrSchedule": "cosine",
        "minLrRatio": 0.1,
    }
    run = _run(make_job(training=training), tmp_path)
    try:
        rates = [train_step(run, run.train[:2])[0]["actor/lr"] for _ in range(4)]
        # Steps 0, 1 warm up to the peak; 2, 3 decay from it to minLrRatio.
        assert rates == pytest.approx([5e-4, 1e-3, 1e-3, 1e-4])
        expected = [1e-3 * lr_factor(s, 4, 2, "cosine", 0.1) for s in range(4)]
        assert rates == pytest.approx(expected)
        assert run.roles.actor.trainer.scheduler.last_epoch == 4
    finally:
        run.close()
