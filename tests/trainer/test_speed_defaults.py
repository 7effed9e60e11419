"""What issue #18's speed work relies on: the token budget sizes micro-batches by default, the
old-logprob pass gets the entropy from the same forward (equal to two separate passes), and where
the engine's logprobs are exact they replace that pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill_api import DistillJobSpec
from distill_api.v1alpha1 import RolloutEngineName
from distill_trainer.algorithm import entropy_from_logits, token_logprobs_from_logits
from distill_trainer.batch import micro_batch_rows
from distill_trainer.config import ActorConfig, OptimConfig, RolloutConfig, RunOptions, role_configs
from distill_trainer.driver import train_step
from distill_trainer.roles import SamplingParams, exact_behaviour_logprobs
from distill_trainer.roles.rollout_hf import HFRolloutEngine
from distill_trainer.roles.trainer import HFActor
from distill_trainer.setup import JobInputError, setup_run


def test_the_default_micro_batch_is_the_token_budget_not_16_rows() -> None:
    spec = DistillJobSpec.model_validate(
        {"student": {"model": "m"}, "data": {"train": "t.parquet"}}
    )
    actor = role_configs(spec, RunOptions()).actor
    assert actor.max_tokens_per_micro_batch == 16384 and actor.micro_batch_size == 1024
    # The demo's step: 256 responses of ≤ 14 tokens after ≤ 40-token prompts → one forward.
    prompts, responses = torch.full((256,), 40), torch.full((256,), 14)
    rows = micro_batch_rows(prompts, responses, actor.micro_batch_size, 16384)
    assert [len(r) for r in rows] == [256]
    # Long rows still split on tokens: 64 rows of 4,096 tokens make 16 micro-batches of 4.
    long = micro_batch_rows(torch.full((64,), 96), torch.full((64,), 4000), 1024, 16384)
    assert [len(r) for r in long] == [4] * 16


def test_old_logprobs_with_entropy_equal_two_separate_passes(student_dir: Path) -> None:
    common = {"model": str(student_dir), "device": "cpu", "seed": 0, "temperature": 0.7}
    engine = HFRolloutEngine(RolloutConfig(**common, micro_batch_size=64))
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    batch = engine.generate(prompts, 3, SamplingParams(6, temperature=0.7)).to_batch(3)
    optim = OptimConfig(1e-3, 1, 9, 1.0, "token-mean")
    actor = HFActor(ActorConfig(**common, micro_batch_size=64, train=True, optim=optim))
    fused = actor.compute_logprobs(batch, with_entropy=True)
    assert fused.entropy is not None
    # Two passes over the full logits of one plain forward.
    with torch.no_grad():
        logits = actor.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        ).logits[:, -batch.response_length - 1 : -1]
    mask = batch.response_mask.bool()
    logprobs = token_logprobs_from_logits(logits, batch.response_ids, 0.7)
    entropy = entropy_from_logits(logits, 0.7)
    torch.testing.assert_close(fused.logprobs[mask], logprobs[mask], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fused.entropy[mask], entropy[mask], atol=1e-6, rtol=1e-6)
    alone = actor.compute_logprobs(batch, with_entropy=False)
    assert alone.entropy is None
    torch.testing.assert_close(alone.logprobs, fused.logprobs, atol=0, rtol=0)
    assert (fused.entropy[~mask] == 0).all() and (fused.entropy[mask] > 0).all()


def test_exact_engine_logprobs_replace_the_old_logprob_pass(
    make_job, teacher_dir: Path, tmp_path: Path
) -> None:
    """The HF engine on CPU samples with the actor's float32 weights: by default its behaviour
    logprobs are the old logprobs and its entropies the student's, and skipping the actor's pass
    changes the update only by rounding."""
    job = make_job(teacher={"model": str(teacher_dir)})
    steps, resolved = {}, {}
    for asked in (False, None):
        options = RunOptions(
            backend="inprocess", device="cpu", output_dir=tmp_path / str(asked), progress=False,
            old_logprobs_from_rollout=asked,
        )  # fmt: skip
        run = setup_run(job, options)
        try:
            resolved[asked] = run.old_logprobs_from_rollout
            steps[asked] = train_step(run, run.train[:2])
        finally:
            run.close()
    assert resolved == {False: False, None: True}
    (plain, plain_batch), (bypassed, batch) = steps[False], steps[None]
    assert torch.equal(batch.input_ids, plain_batch.input_ids)  # the same samples
    assert batch.old_logprobs is batch.rollout_logprobs
    torch.testing.assert_close(batch.old_logprobs, plain_batch.old_logprobs, atol=1e-5, rtol=0)
    assert "timing_s/old_logprob" not in bypassed and "timing_s/old_logprob" in plain
    assert plain["rollout/logprob_mismatch"] < 1e-5
    mask = batch.response_mask.bool()
    assert (batch.rollout_entropy[~mask] == 0).all() and (batch.rollout_entropy[mask] > 0).all()
    for key in ("actor/entropy", "actor/pg_loss", "actor/grad_norm", "distill/kl_per_token"):
        assert bypassed[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-5), key
    # Unset is not hashed into checkpoints (exact where it turns on); asked for, it is.
    assert RunOptions(old_logprobs_from_rollout=True).math_options()["oldLogprobsFromRollout"]
    assert "oldLogprobsFromRollout" not in RunOptions().math_options()


def test_engine_logprobs_are_exact_only_for_the_hf_engine_on_cpu_at_top_p_1(make_job) -> None:
    spec = make_job().spec
    hf, vllm = RolloutEngineName.HF, RolloutEngineName.VLLM
    assert exact_behaviour_logprobs(spec, hf, "cpu")
    assert not exact_behaviour_logprobs(spec, vllm, "cpu")
    nucleus = make_job(rollout={"topP": 0.9}).spec
    assert not exact_behaviour_logprobs(nucleus, hf, "cpu")
    if torch.cuda.is_available():
        assert not exact_behaviour_logprobs(spec, hf, "cuda")
    from distill_trainer.roles.group import Placement

    assert exact_behaviour_logprobs(spec, hf, "cpu", Placement(1, 0.0, {}))  # a local Ray
    # A DistillJob's cluster: the engines go to pods advertising the role's resource.
    assert not exact_behaviour_logprobs(spec, hf, "cpu", Placement(1, 0.0, {"rollout": 1.0}))


def test_engine_logprobs_as_old_logprobs_are_refused_under_top_p(make_job, tmp_path) -> None:
    """Both engines renormalise their logprobs over the nucleus: as old logprobs every ratio
    would start below 1 − ε. Asking for them anyway fails before any model loads."""
    job = make_job(rollout={"topP": 0.7})
    options = RunOptions(
        backend="inprocess", device="cpu", output_dir=tmp_path, progress=False,
        old_logprobs_from_rollout=True,
    )  # fmt: skip
    with pytest.raises(JobInputError, match=r"rollout.topP=0.7: old_logprobs_from_rollout"):
        setup_run(job, options)
