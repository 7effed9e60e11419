"""Memory that scales with tokens, in one process (the world of one of roles/trainer.py).

Token-budget micro-batches and activation checkpointing change memory, not gradients; response
logprobs come from hidden states a chunk at a time, so no update saves a [rows, R, V] tensor
for backward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from distill_api.v1alpha1 import LoraConfig
from distill_trainer.algorithm import (
    entropy_from_logits,
    token_logprobs_from_hidden,
    token_logprobs_from_logits,
)
from distill_trainer.batch import RolloutBatch, micro_batch_rows, prompt_lengths
from distill_trainer.config import ActorConfig, OptimConfig, RolloutConfig
from distill_trainer.roles import SamplingParams
from distill_trainer.roles.models import load_tokenizer
from distill_trainer.roles.rollout_hf import HFRolloutEngine
from distill_trainer.roles.trainer import HFActor

PROMPTS = ["What is 1 + 2?", "What is 3 + 3 + 3?", "What is 9 + 0?"]


def _config(model_dir: Path, **extra) -> ActorConfig:
    base = {
        "model": str(model_dir),
        "device": "cpu",
        "seed": 0,
        "temperature": 0.7,
        "micro_batch_size": 64,
        "train": True,
        "optim": OptimConfig(1e-3, 1, 64, 1e9, "token-mean"),  # one mini-batch: all rows
    }
    return ActorConfig(**{**base, **extra})


@pytest.fixture(scope="module")
def batch(student_dir: Path) -> RolloutBatch:
    tokenizer = load_tokenizer(str(student_dir))
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    engine = HFRolloutEngine(RolloutConfig(**_common_rollout(student_dir)))
    out = engine.generate(prompts, 4, SamplingParams(12, temperature=0.7)).to_batch(4)
    out.old_logprobs = out.rollout_logprobs
    out.advantages = torch.linspace(-1, 1, out.size)[:, None] * out.response_mask
    return out


def _common_rollout(model_dir: Path) -> dict:
    return {
        "model": str(model_dir),
        "device": "cpu",
        "seed": 0,
        "temperature": 0.7,
        "micro_batch_size": 16,
    }


def _gradients(model_dir: Path, batch: RolloutBatch, **extra) -> torch.Tensor:
    actor = HFActor(_config(model_dir, **extra))
    actor.update(batch)
    return torch.cat([p.grad.flatten() for p in actor.model.parameters() if p.requires_grad])


def test_token_budget_micro_batches_give_the_fixed_row_gradient(
    batch: RolloutBatch, student_dir: Path
) -> None:
    fixed = _gradients(student_dir, batch, micro_batch_size=4)
    # ~20-token rows: a 60-token budget makes micro-batches of 2–3 rows, grouped by length.
    groups = micro_batch_rows(prompt_lengths(batch), batch.response_lengths, 64, 60)
    assert len(groups) > 3 and max(map(len, groups)) > 1
    budget = _gradients(student_dir, batch, max_tokens_per_micro_batch=60)
    whole = _gradients(student_dir, batch)
    assert fixed.abs().sum() > 0
    torch.testing.assert_close(budget, fixed, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(whole, fixed, atol=1e-6, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradient(
    batch: RolloutBatch, student_dir: Path
) -> None:
    plain = _gradients(student_dir, batch, max_tokens_per_micro_batch=200)
    checkpointed = _gradients(
        student_dir, batch, max_tokens_per_micro_batch=200, gradient_checkpointing=True
    )
    assert plain.abs().sum() > 0
    torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-4)


def test_gradient_checkpointing_replays_the_lora_dropout_masks(
    batch: RolloutBatch, student_dir: Path
) -> None:
    # The re-run forward in backward must drop what the forward dropped. B starts at 0, so the
    # loss is the same under any mask, but B's gradient is taken through dropout(x) @ Aᵀ.
    lora = LoraConfig(rank=4, alpha=8, dropout=0.5)
    plain = _gradients(student_dir, batch, lora=lora)
    checkpointed = _gradients(student_dir, batch, lora=lora, gradient_checkpointing=True)
    without_dropout = _gradients(student_dir, batch, lora=LoraConfig(rank=4, alpha=8))
    assert plain.abs().sum() > 0
    assert (plain - without_dropout).abs().max() > 1e-3  # the masks do shape the gradient
    torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-4)


@contextmanager
def largest_saved_with(size: int, record: list[int]) -> Iterator[None]:
    """Record the element count of every tensor saved for backward that has a dimension of
    `size` (the vocabulary) and is not a parameter."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if size in tensor.shape and not isinstance(tensor, torch.nn.Parameter):
            record.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


def test_no_update_saves_a_rows_by_response_by_vocab_tensor(
    batch: RolloutBatch, student_dir: Path
) -> None:
    chunk = 4
    actor = HFActor(_config(student_dir, logprob_chunk_tokens=chunk, gradient_checkpointing=True))
    vocab, full = actor.model.config.vocab_size, batch.size * batch.response_length
    assert full >= 8 * chunk  # a full [rows, R, V] tensor would stand out
    saved: list[int] = []
    with largest_saved_with(vocab, saved):
        metrics = actor.update(batch)
    assert metrics["actor/grad_norm"] > 0
    assert max(saved, default=0) <= chunk * vocab, max(saved)
    # The same recorder sees the [rows, R, V] logits of a plain forward: the check can fail.
    naive: list[int] = []
    with largest_saved_with(vocab, naive):
        logits = actor.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits[:, -batch.response_length - 1 : -1]
        token_logprobs_from_logits(logits, batch.response_ids).sum().backward()
    assert max(naive) >= full * vocab


def test_logprobs_from_hidden_states_equal_those_from_logits() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=False)
    hidden = torch.randn(3, 5, 6, requires_grad=True)
    ids = torch.randint(0, 11, (3, 5))
    logprobs, entropy = token_logprobs_from_hidden(
        hidden, head, ids, temperature=0.7, chunk_tokens=4, with_entropy=True
    )
    logits = head(hidden)
    torch.testing.assert_close(logprobs, token_logprobs_from_logits(logits, ids, 0.7))
    torch.testing.assert_close(entropy, entropy_from_logits(logits, 0.7))
    # Hand-checked at one position: log softmax(z / 0.7)[id].
    z = logits[1, 2].detach() / 0.7
    assert logprobs[1, 2].item() == pytest.approx((z[ids[1, 2]] - z.logsumexp(0)).item(), 1e-6)
    (grad,) = torch.autograd.grad((logprobs + entropy).sum(), hidden)
    (expected,) = torch.autograd.grad(
        (token_logprobs_from_logits(logits, ids, 0.7) + entropy_from_logits(logits, 0.7)).sum(),
        hidden,
    )
    torch.testing.assert_close(grad, expected)
    only, none = token_logprobs_from_hidden(hidden.detach(), head, ids, chunk_tokens=100)
    assert none is None and only.shape == (3, 5)


def test_in_process_actor_saves_a_loadable_model(
    batch: RolloutBatch, student_dir: Path, tmp_path: Path
) -> None:
    """Saving gathers the full state dict (a plain model here) and names it as HF expects,
    activation-checkpoint wrappers and all."""
    actor = HFActor(_config(student_dir, gradient_checkpointing=True))
    actor.export_model(str(tmp_path / "saved"))
    reloaded = HFActor(dataclasses.replace(_config(student_dir), model=str(tmp_path / "saved")))
    torch.testing.assert_close(
        reloaded.compute_logprobs(batch).logprobs, actor.compute_logprobs(batch).logprobs
    )
