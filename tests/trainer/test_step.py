"""One full training step on a tiny model, for every estimator with the teacher KL on and off."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from distill_trainer.algorithm import compute_base_advantages, masked_mean
from distill_trainer.config import RunOptions
from distill_trainer.driver import train_step
from distill_trainer.setup import JobInputError, Run, setup_run

ESTIMATORS = ["grpo", "gae", "grpo_per_step"]
BATCH, N, MAX_RESPONSE = 2, 4, 6


def _run(job, tmp_path: Path) -> Run:
    # CPU float32 even where a GPU exists: sampler and actor logprobs then agree to 1e-5.
    options = RunOptions(backend="inprocess", device="cpu", output_dir=tmp_path, progress=False)
    return setup_run(job, options)


def _finite(t: torch.Tensor | None) -> bool:
    return t is not None and bool(torch.isfinite(t).all())


@pytest.mark.parametrize("kl", [True, False], ids=["kl_on", "kl_off"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_step(make_job, tmp_path: Path, estimator: str, kl: bool) -> None:
    job = make_job(algorithm={"advEstimator": estimator, "useKlInAdvantage": kl})
    run = _run(job, tmp_path)
    try:
        metrics, batch = train_step(run, run.train[:BATCH])
        rows, r = BATCH * N, batch.response_length
        assert batch.input_ids.shape[0] == rows and 1 <= r <= MAX_RESPONSE
        for name in ("old_logprobs", "advantages", "step_rewards", "rollout_logprobs"):
            tensor = getattr(batch, name)
            assert tensor.shape == (rows, r), name
            assert _finite(tensor), name
        assert batch.scores.shape == (rows,)
        assert all(isinstance(v, float) and v == v for v in metrics.values())  # no NaN
        assert metrics["training_step_reward"] == pytest.approx(batch.scores.mean().item())
        lengths = batch.response_mask.sum(-1)
        assert metrics["response_length/mean"] == pytest.approx(lengths.mean().item())
        assert metrics["response_length/clip_ratio"] == batch.truncated.float().mean().item()
        # top_p 1 on CPU: the engine's logprobs are the actor's, so they serve as the old ones
        # and its entropies as the student's (test_speed_defaults checks both against a pass).
        assert run.old_logprobs_from_rollout and batch.old_logprobs is batch.rollout_logprobs
        assert metrics["actor/entropy"] > 0 and "timing_s/old_logprob" not in metrics
        assert "rollout/logprob_mismatch" not in metrics  # 0 by construction: not logged

        # The teacher exists exactly when its KL enters the advantage.
        assert ("teacher" in run.roles.names) is kl
        assert (batch.teacher_logprobs is not None) is kl
        assert ("distill/kl_per_token" in metrics) is kl
        assert ("timing_s/teacher_logprob" in metrics) is kl
        # The critic exists exactly for gae.
        assert ("critic" in run.roles.names) is (estimator == "gae")
        assert ("critic/vf_loss" in metrics) is (estimator == "gae")
        if estimator == "gae":
            assert batch.values.shape == batch.returns.shape == (rows, r)
            assert _finite(batch.returns)
        if kl:
            # Teacher unset = the student's initial weights, so at step 0 the KL is 0: up to the
            # rounding between the engine's KV-cache pass (the old logprobs) and a full forward.
            assert abs(metrics["distill/kl_per_token"]) < 1e-6
            assert metrics["distill/kl_coef"] == pytest.approx(0.1)
    finally:
        run.close()


def test_update_moves_the_policy_along_the_advantages(
    make_job, teacher_dir: Path, tmp_path: Path
) -> None:
    # A different teacher makes every token's advantage non-zero, whatever the rewards.
    run = _run(make_job(teacher={"model": str(teacher_dir)}), tmp_path)
    try:
        before = {k: v.clone() for k, v in run.roles.actor.get_weights().items()}
        assert run.roles.actor.get_weights().version == 0
        _, batch = train_step(run, run.train[:BATCH])
        weights = run.roles.actor.get_weights()
        assert weights.version == 1
        after = dict(weights.items())
        assert any(not torch.equal(before[k], after[k]) for k in before)
        # The surrogate improved: tokens with positive advantage became more likely, and those
        # with negative advantage less likely.
        new = run.roles.actor.compute_logprobs(batch).logprobs
        gain = masked_mean(batch.advantages * (new - batch.old_logprobs), batch.response_mask)
        assert gain > 0
        # Weight sync: the rollout engine now samples from the updated student.
        synced = run.roles.rollout.model.state_dict()
        assert all(torch.equal(synced[k], after[k]) for k in after)
        assert run.roles.rollout.weight_version == 1
    finally:
        run.close()


def test_kl_is_subtracted_after_normalisation(make_job, teacher_dir: Path, tmp_path: Path) -> None:
    job = make_job(teacher={"model": str(teacher_dir)}, algorithm={"klPenaltyCoef": 0.5})
    run = _run(job, tmp_path)
    try:
        metrics, batch = train_step(run, run.train[:BATCH])
        base, _ = compute_base_advantages(
            "grpo",
            response_mask=batch.response_mask,
            scores=batch.scores,
            group_ids=batch.group_ids,
        )
        kl = (batch.old_logprobs - batch.teacher_logprobs) * batch.response_mask
        torch.testing.assert_close(batch.advantages, base - 0.5 * kl)
        expected_kl = masked_mean(kl, batch.response_mask).item()
        assert metrics["distill/kl_per_token"] == pytest.approx(expected_kl)
        assert abs(expected_kl) > 1e-3  # a different teacher: the KL is really there
    finally:
        run.close()


def test_kl_off_never_loads_the_teacher(make_job, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-teacher")
    run = _run(
        make_job(teacher={"model": missing}, algorithm={"useKlInAdvantage": False}), tmp_path
    )
    try:
        assert run.roles.teacher is None
        assert run.roles.names == ["rollout", "actor"]
    finally:
        run.close()
    with pytest.raises(JobInputError, match=r"^teacher\.model: cannot load"):
        _run(make_job(teacher={"model": missing}), tmp_path)


def test_teacher_with_another_tokenizer_is_refused(make_job, tmp_path: Path) -> None:
    from distill_trainer import tiny

    tokenizer = tiny.build_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    other = tmp_path / "other-teacher"
    tiny.build_model(
        tokenizer,
        tiny.TinyModelConfig(
            hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32
        ),
    ).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(JobInputError, match=r"^teacher\.model: .*different tokenizer"):
        _run(make_job(teacher={"model": str(other)}), tmp_path)


def test_top_p_warns_once_and_reports_the_logprob_mismatch(make_job, tmp_path, caplog) -> None:
    """Nucleus sampling renormalises over the kept tokens, so each behaviour logprob is higher
    than the actor's full-distribution logprob of the same token."""
    with caplog.at_level(logging.WARNING, logger="distill_trainer.setup"):
        run = _run(make_job(rollout={"topP": 0.5}), tmp_path)
    try:
        assert caplog.text.count("rollout.topP=0.5: the rollout engine's behaviour logprobs") == 1
        metrics, batch = train_step(run, run.train[:BATCH])
        mask = batch.response_mask.bool()
        assert (batch.rollout_logprobs[mask] >= batch.old_logprobs[mask] - 1e-5).all()
        expected = (batch.rollout_logprobs - batch.old_logprobs)[mask].abs().mean().item()
        assert metrics["rollout/logprob_mismatch"] == pytest.approx(expected)
        assert expected > 0.05
    finally:
        run.close()


def test_kl_coef_zero_keeps_the_teacher_but_not_its_advantage(
    make_job, teacher_dir: Path, tmp_path: Path
) -> None:
    job = make_job(teacher={"model": str(teacher_dir)}, algorithm={"klPenaltyCoef": 0.0})
    run = _run(job, tmp_path)
    try:
        metrics, batch = train_step(run, run.train[:BATCH])
        assert run.roles.teacher is not None and metrics["distill/kl_coef"] == 0.0
        assert abs(metrics["distill/kl_per_token"]) > 1e-3  # measured all the same
        base, _ = compute_base_advantages(
            "grpo",
            response_mask=batch.response_mask,
            scores=batch.scores,
            group_ids=batch.group_ids,
        )
        assert torch.equal(batch.advantages, base)
    finally:
        run.close()


def test_prompt_plus_response_must_fit_the_position_embeddings(make_job, tmp_path) -> None:
    # The tiny models have 128 positions.
    with pytest.raises(
        JobInputError,
        match=r"^rollout\.maxPromptLength \+ rollout\.maxResponseLength: 64 \+ 65 = 129 tokens, "
        r"more than the max_position_embeddings=128 of student\.model",
    ):
        _run(make_job(rollout={"maxResponseLength": 65}), tmp_path)
    _run(make_job(rollout={"maxResponseLength": 64}), tmp_path).close()
