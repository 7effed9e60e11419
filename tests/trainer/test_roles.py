"""The HF roles: sampling with behaviour logprobs, chunked teacher scoring, critic values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from distill_trainer.batch import RolloutBatch, last_token_rewards, pad_cat
from distill_trainer.config import ActorConfig, CriticConfig, OptimConfig, RoleConfig, RolloutConfig
from distill_trainer.roles import Rollouts, SamplingParams
from distill_trainer.roles.models import load_tokenizer
from distill_trainer.roles.rollout_hf import HFRolloutEngine, first_eos_mask
from distill_trainer.roles.trainer import HFActor, HFCritic, HFTeacher

PROMPTS = ["What is 1 + 2?", "What is 3 + 3?", "What is 9 + 0?"]


def _prompt_ids(model_dir: Path) -> list[list[int]]:
    tokenizer = load_tokenizer(str(model_dir))
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _common(model_dir: Path, **extra) -> dict:
    return {
        "model": str(model_dir),
        "device": "cpu",
        "seed": 0,
        "temperature": 0.7,
        "micro_batch_size": 4,
        **extra,
    }


@pytest.fixture(scope="module")
def sampled(student_dir: Path) -> tuple[HFRolloutEngine, RolloutBatch]:
    engine = HFRolloutEngine(RolloutConfig(**_common(student_dir)))
    rollouts = engine.generate(_prompt_ids(student_dir), 4, SamplingParams(8, temperature=0.7))
    return engine, rollouts.to_batch(4)


def test_generate_layout(sampled, student_dir: Path) -> None:
    engine, batch = sampled
    n_prompt_cols = max(len(ids) for ids in _prompt_ids(student_dir))
    assert batch.input_ids.shape == (12, n_prompt_cols + batch.response_length)
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Prompts are left-padded: every response starts in the same column.
    prompt_mask = batch.attention_mask[:, :n_prompt_cols]
    assert (prompt_mask[:, -1] == 1).all()
    # The mask covers the tokens up to and including the first EOS; padding follows.
    eos = engine.tokenizer.eos_token_id
    ids, mask = batch.response_ids, batch.response_mask.bool()
    for row in range(batch.size):
        length = int(mask[row].sum())
        assert mask[row, :length].all() and not mask[row, length:].any()
        assert (ids[row, : length - 1] != eos).all()
        assert ids[row, length - 1] == eos or length == batch.response_length
        assert (ids[row, length:] == engine.pad_id).all()
        # Cut at the token limit exactly when no EOS was sampled.
        assert bool(batch.truncated[row]) is bool(ids[row, length - 1] != eos)
    assert (batch.rollout_logprobs[~mask] == 0).all() and (batch.rollout_logprobs[mask] < 0).all()


def test_behaviour_logprobs_match_the_actor(sampled, student_dir: Path) -> None:
    """The sampler's logprobs (temperature applied) equal a full forward pass of the same weights,
    so the response slice and the position ids line up."""
    _, batch = sampled
    optim = OptimConfig(1e-3, 1, 4, 1.0, "token-mean")
    actor = HFActor(ActorConfig(**_common(student_dir), train=True, optim=optim))
    out = actor.compute_logprobs(batch, with_entropy=True)
    torch.testing.assert_close(out.logprobs, batch.rollout_logprobs, atol=1e-5, rtol=1e-5)
    mask = batch.response_mask.bool()
    assert (out.entropy[mask] > 0).all() and (out.entropy[~mask] == 0).all()


def test_teacher_micro_batches_do_not_change_logprobs(sampled, student_dir: Path) -> None:
    _, batch = sampled
    one_row = HFTeacher(RoleConfig(**_common(student_dir, micro_batch_size=1)))
    all_rows = HFTeacher(RoleConfig(**_common(student_dir, micro_batch_size=64)))
    torch.testing.assert_close(one_row.compute_logprobs(batch), all_rows.compute_logprobs(batch))


def test_critic_starts_at_zero_and_learns_the_returns(sampled, student_dir: Path) -> None:
    _, batch = sampled
    optim = OptimConfig(1e-2, 4, 4, 1.0, "token-mean")
    critic = HFCritic(CriticConfig(**_common(student_dir), train=True, optim=optim))
    values = critic.compute_values(batch)
    assert values.shape == batch.response_mask.shape and (values == 0).all()
    batch.values = values
    batch.returns = torch.full_like(values, 0.5) * batch.response_mask
    first = critic.update(batch)["critic/vf_loss"]
    for _ in range(3):
        last = critic.update(batch)["critic/vf_loss"]
    assert last < first


def test_greedy_is_deterministic_and_chunking_keeps_rows(student_dir: Path) -> None:
    prompts = _prompt_ids(student_dir)
    greedy = SamplingParams(8, greedy=True, logprobs=False)
    whole = HFRolloutEngine(RolloutConfig(**_common(student_dir)))
    chunked = HFRolloutEngine(RolloutConfig(**_common(student_dir), generate_batch_size=1))
    a, b = whole.generate(prompts, 1, greedy), chunked.generate(prompts, 1, greedy)
    assert a.logprobs is None
    texts = whole.tokenizer.batch_decode(a.response_ids, skip_special_tokens=True)
    assert texts == whole.tokenizer.batch_decode(b.response_ids, skip_special_tokens=True)


def test_first_eos_mask() -> None:
    ids = torch.tensor([[5, 1, 0, 0], [5, 5, 5, 5], [1, 5, 1, 5]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(first_eos_mask(ids, torch.tensor([1])), expected)


def test_last_token_rewards_and_padding_helpers() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards = last_token_rewards(torch.tensor([1.0, 0.5]), mask)
    assert torch.equal(rewards, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]]))
    merged = pad_cat([torch.tensor([[1, 2]]), torch.tensor([[3]])], value=0, left=True)
    assert merged.tolist() == [[1, 2], [0, 3]]


def test_rollouts_concat_repads() -> None:
    def part(p: int, r: int) -> Rollouts:
        return Rollouts(
            torch.ones(1, p, dtype=torch.long),
            torch.ones(1, p),
            torch.ones(1, r, dtype=torch.long),
            torch.ones(1, r),
            torch.zeros(1, r),
            torch.tensor([r == 3]),
        )

    merged = Rollouts.concat([part(2, 3), part(3, 1)], pad_token_id=9)
    assert merged.prompt_ids.tolist() == [[9, 1, 1], [1, 1, 1]]
    assert merged.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert merged.response_ids.tolist() == [[1, 1, 1], [1, 9, 9]]
    assert merged.response_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert merged.truncated.tolist() == [True, False]
    assert merged.to_batch(1).truncated.tolist() == [True, False]


def test_micro_batches_accumulate_to_the_mini_batch_gradient(sampled, student_dir: Path) -> None:
    """Splitting a mini-batch into micro-batches changes memory use, not the gradient."""
    _, batch = sampled
    batch.old_logprobs = batch.rollout_logprobs
    batch.advantages = torch.linspace(-1, 1, batch.size)[:, None] * batch.response_mask
    grads = []
    for micro in (batch.size, 5):
        optim = OptimConfig(1e-3, 1, batch.size, 1e9, "token-mean")
        actor = HFActor(
            ActorConfig(**_common(student_dir, micro_batch_size=micro), train=True, optim=optim)
        )
        actor.update(batch)
        grads.append(torch.cat([p.grad.flatten() for p in actor.model.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_update_metrics_do_not_depend_on_the_micro_batch_split(
    sampled, student_dir: Path, loss_agg: str
) -> None:
    """Token means (clip fractions, ppo_kl) merge by tokens and the loss by its aggregation, so
    the logged values are the mini-batch's own, however it is split."""
    # Responses of 1..R tokens: with rows of equal length, token and row shares coincide.
    lengths = torch.arange(sampled[1].size) % sampled[1].response_length + 1
    mask = (torch.arange(sampled[1].response_length) < lengths[:, None]).float()
    batch = dataclasses.replace(sampled[1], response_mask=sampled[1].response_mask * mask)
    noise = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    batch.old_logprobs = batch.rollout_logprobs + 0.3 * noise * batch.response_mask
    batch.advantages = torch.linspace(-1, 1, batch.size)[:, None] * batch.response_mask
    runs = []
    for micro in (batch.size, 5):
        optim = OptimConfig(1e-3, 1, batch.size, 1e9, loss_agg)
        actor = HFActor(
            ActorConfig(**_common(student_dir, micro_batch_size=micro), train=True, optim=optim)
        )
        runs.append(actor.update(batch))
    whole, split = runs
    assert 0 < whole["actor/pg_clipfrac"] < 1 and whole["actor/ppo_kl"] != 0
    for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key


def test_one_engine_resumes_from_a_rollout_groups_sampling_state(
    sampled, student_dir: Path, caplog
) -> None:
    """A checkpoint of a run with a rollout group holds every replica's state; the backend is not
    a math field, so an in-process resume takes replica 0's (and says the others are dropped)."""
    engine, _ = sampled
    prompts, params = _prompt_ids(student_dir), SamplingParams(8, temperature=0.7)
    state = engine.sampling_state()
    first = engine.generate(prompts, 2, params).response_ids
    engine.load_sampling_state({"replicas": [state, engine.sampling_state()]})
    assert torch.equal(engine.generate(prompts, 2, params).response_ids, first)
    assert "sampling state of 2 rollout replicas, this run has 1" in caplog.text
