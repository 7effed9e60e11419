"""What issue #18's speed work relies on: the token budget sizes micro-batches by default, and the
old-logprob pass gets the entropy from the same forward (equal to two separate passes)."""

from __future__ import annotations

from pathlib import Path

import torch

from distill_api import DistillJobSpec
from distill_trainer.algorithm import entropy_from_logits, token_logprobs_from_logits
from distill_trainer.batch import micro_batch_rows
from distill_trainer.config import ActorConfig, OptimConfig, RolloutConfig, RunOptions, role_configs
from distill_trainer.roles import SamplingParams
from distill_trainer.roles.rollout_hf import HFRolloutEngine
from distill_trainer.roles.trainer import HFActor


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
