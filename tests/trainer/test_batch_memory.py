"""The memory rules of batch.py: token-budget micro-batches, rank shares, trimming, fillers."""

from __future__ import annotations

import random

import torch

from distill_trainer.batch import (
    RolloutBatch,
    balanced_shares,
    filler_batch,
    micro_batch_rows,
    padded_tokens,
    position_ids_from_mask,
    prompt_lengths,
    trimmed,
)
from distill_trainer.roles.base import LogprobOutput
from distill_trainer.roles.group import gather_rows


def _batch(prompt_lens: list[int], response_lens: list[int], p: int = 8, r: int = 6):
    """Rows of `prompt_lens[i]` real prompt tokens (left-padded to p) and `response_lens[i]`
    response tokens (right-padded to r); token ids 10 + column, 0 on padding."""
    n = len(prompt_lens)
    cols = torch.arange(p + r)[None].expand(n, -1)
    prompt_mask = cols[:, :p] >= p - torch.tensor(prompt_lens)[:, None]
    response_mask = cols[:, :r] < torch.tensor(response_lens)[:, None]
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    return RolloutBatch(
        input_ids=torch.where(mask.bool(), cols + 10, 0),
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        response_mask=response_mask.float(),
        group_ids=torch.arange(n),
        advantages=torch.where(response_mask, 1.5, 0.0),
    )


def test_micro_batches_never_exceed_the_token_budget() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 40)
        prompts = torch.tensor([rng.randint(1, 50) for _ in range(n)])
        responses = torch.tensor([rng.randint(1, 80) for _ in range(n)])
        budget = rng.randint(130, 600)  # at least the longest row
        max_rows = rng.randint(1, 16)
        groups = micro_batch_rows(prompts, responses, max_rows=max_rows, max_tokens=budget)
        assert sorted(i for g in groups for i in g) == list(range(n))  # every row exactly once
        for rows in groups:
            width = int(prompts[rows].max() + responses[rows].max())
            assert len(rows) * width <= budget and len(rows) <= max_rows


def test_token_budget_worked_example() -> None:
    # Longest first: rows 2 (10+10) and 0 (8+6) share a 2 × 20 = 40-token rectangle; adding
    # row 1 would make it 3 × 20 = 60 > 45, so rows 1 and 3 make the next one.
    groups = micro_batch_rows(
        torch.tensor([8, 2, 10, 1]), torch.tensor([6, 3, 10, 1]), max_rows=8, max_tokens=45
    )
    assert groups == [[2, 0], [1, 3]]
    # A row longer than the budget runs alone; without a budget rows go max_rows at a time.
    assert micro_batch_rows(torch.tensor([30, 1]), torch.tensor([30, 1]), 8, 45) == [[0], [1]]
    assert micro_batch_rows(torch.tensor([1] * 5), torch.tensor([1] * 5), 2, None) == [
        [0, 1],
        [2, 3],
        [4],
    ]


def test_balanced_shares_split_tokens_evenly() -> None:
    lengths = torch.tensor([10, 1, 1, 1, 9, 2, 2])
    shares = balanced_shares(lengths, 2)
    assert shares == [[0, 2, 6], [1, 3, 4, 5]]  # longest first, each to the lighter share
    assert [int(lengths[s].sum()) for s in shares] == [13, 13]
    assert balanced_shares(torch.tensor([3]), 3) == [[0], [], []]


def test_trimmed_drops_only_padding_columns() -> None:
    batch = _batch([3, 5], [2, 4])
    small = trimmed(batch)
    assert small.input_ids.shape == (2, 5 + 4) and small.response_length == 4
    assert padded_tokens(small) == 18
    assert torch.equal(small.response_ids, batch.response_ids[:, :4])
    assert torch.equal(small.advantages, batch.advantages[:, :4])
    assert torch.equal(prompt_lengths(small), prompt_lengths(batch))
    assert small.attention_mask.sum() == batch.attention_mask.sum()


def test_filler_batch_has_the_fields_and_one_unmasked_token() -> None:
    filler = filler_batch(_batch([3], [2]))
    assert filler.input_ids.shape == (1, 2) and filler.response_mask.tolist() == [[1.0]]
    assert filler.advantages.tolist() == [[0.0]] and filler.old_logprobs is None


def test_rows_scattered_by_tokens_gather_back_in_order() -> None:
    batch = _batch([3, 8, 1, 5, 2], [6, 1, 2, 4, 3])
    shares = balanced_shares(batch.attention_mask.sum(-1), 2)
    parts = [LogprobOutput(batch.advantages[rows], batch.advantages[rows] * 2) for rows in shares]
    merged = gather_rows(parts, shares, batch.size)
    assert torch.equal(merged.logprobs, batch.advantages)
    assert torch.equal(merged.entropy, batch.advantages * 2)
    values = gather_rows([batch.response_mask[rows] for rows in shares], shares, batch.size)
    assert torch.equal(values, batch.response_mask)
