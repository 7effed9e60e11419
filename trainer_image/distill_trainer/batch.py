"""The rollout batch: every per-response tensor one training step passes between roles.

Layout (N responses, P prompt columns, R response columns):

    input_ids       [N, P + R]  prompt left-padded to P | response right-padded to R
    attention_mask  [N, P + R]  1 on real prompt and response tokens
    position_ids    [N, P + R]  cumsum(attention_mask) − 1, so left padding does not shift positions
    response_mask   [N, R]      1.0 on response tokens (the EOS included), 0.0 on padding

Every response starts at column P, so per-token quantities for the response are the model's
outputs at columns P−1 … P+R−2 (next-token prediction): the same slice for every row.
Row i·n + j holds the j-th response to the i-th prompt; `group_ids` says which prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class RolloutBatch:
    """Tensors of one step's responses; fields other than the first five are filled in by roles."""

    input_ids: Tensor  # [N, P+R] long
    attention_mask: Tensor  # [N, P+R] long
    position_ids: Tensor  # [N, P+R] long
    response_mask: Tensor  # [N, R] float
    group_ids: Tensor  # [N] long: index of the prompt within the step
    rollout_logprobs: Tensor | None = None  # [N, R] behaviour logprobs from the rollout engine
    rollout_entropy: Tensor | None = None  # [N, R] entropy of the engine's sampling distribution
    truncated: Tensor | None = None  # [N] bool: cut at maxResponseLength without an EOS
    scores: Tensor | None = None  # [N] grader score
    step_rewards: Tensor | None = None  # [N, R] score at each response's last token
    old_logprobs: Tensor | None = None  # [N, R] student logprobs before the update
    teacher_logprobs: Tensor | None = None  # [N, R]
    values: Tensor | None = None  # [N, R] critic values at rollout time (gae)
    advantages: Tensor | None = None  # [N, R] final advantages (KL included)
    returns: Tensor | None = None  # [N, R] critic targets (gae)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_length(self) -> int:
        return int(self.response_mask.shape[1])

    @property
    def response_ids(self) -> Tensor:
        """[N, R] the sampled tokens (padding included)."""
        return self.input_ids[:, -self.response_length :]

    @property
    def response_lengths(self) -> Tensor:
        """[N] response tokens per row."""
        return self.response_mask.sum(-1).long()

    def select(self, index: Tensor | slice) -> RolloutBatch:
        """The rows picked by `index` (every tensor field indexed the same way)."""
        picked = {f.name: _rows(getattr(self, f.name), index) for f in fields(self)}
        return RolloutBatch(**picked)

    def chunks(self, rows: int) -> Iterator[RolloutBatch]:
        """Consecutive slices of at most `rows` rows."""
        for start in range(0, self.size, rows):
            yield self.select(slice(start, start + rows))

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {f.name: _to(getattr(self, f.name), device) for f in fields(self)}
        return replace(self, **moved)


def _rows(tensor: Tensor | None, index: Tensor | slice) -> Tensor | None:
    return None if tensor is None else tensor[index]


def _to(tensor: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if tensor is None else tensor.to(device)


def last_token_rewards(scores: Tensor, response_mask: Tensor) -> Tensor:
    """[N] scores → [N, R] with each score at its response's last token (0 elsewhere)."""
    rewards = torch.zeros_like(response_mask, dtype=torch.float32)
    last = (response_mask.sum(-1).long() - 1).clamp(min=0)
    return rewards.scatter_(1, last[:, None], scores.float()[:, None])


def pad_cat(tensors: list[Tensor], value: float, left: bool) -> Tensor:
    """Concatenate [n_i, T_i] tensors along rows, padding each to the widest T on one side."""
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
        padded.append(torch.nn.functional.pad(t, pad, value=value))
    return torch.cat(padded)


# --- memory rules: how rows become rank shares and micro-batches ---------------------------------
#
# The cost of a forward/backward pass is rows × width of the padded rectangle it computes, so a
# micro-batch is built to a token budget on that rectangle (verl's ppo_max_token_len_per_gpu),
# rows sorted by length so that similar lengths share a micro-batch, and each micro-batch is
# cut to its own longest prompt and response (`trimmed`) before it reaches the model.

SEQUENCE_FIELDS = ("input_ids", "attention_mask", "position_ids")  # [N, P+R]; other 2-D are [N, R]


def prompt_lengths(batch: RolloutBatch) -> Tensor:
    """[N] real prompt tokens per row."""
    return batch.attention_mask[:, : -batch.response_length].sum(-1).long()


def sequence_lengths(batch: RolloutBatch) -> Tensor:
    """[N] real tokens (prompt and response) per row."""
    return batch.attention_mask.sum(-1).long()


def balanced_shares(lengths: Tensor, parts: int) -> list[list[int]]:
    """Split rows into `parts` shares of nearly equal token totals (greedy longest-first, each
    row to the lightest share); each share's row indices ascending, some empty if rows < parts."""
    shares: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for row in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        lightest = min(range(parts), key=lambda p: (loads[p], len(shares[p]), p))
        shares[lightest].append(row)
        loads[lightest] += int(lengths[row])
    return [sorted(share) for share in shares]


def micro_batch_rows(
    prompt_lens: Tensor, response_lens: Tensor, max_rows: int, max_tokens: int | None
) -> list[list[int]]:
    """Row indices of each micro-batch: at most `max_rows` rows and, when `max_tokens` is set,
    rows × (longest prompt + longest response) ≤ max_tokens, rows taken longest first.

    A row longer than the budget on its own makes a micro-batch of one (a row cannot be split).
    Without a budget: consecutive rows, `max_rows` at a time (the fixed-row rule).
    """
    n = len(prompt_lens)
    if max_tokens is None:
        return [list(range(start, min(start + max_rows, n))) for start in range(0, n, max_rows)]
    order = sorted(range(n), key=lambda i: (-int(prompt_lens[i] + response_lens[i]), i))
    groups: list[list[int]] = []
    rows: list[int] = []
    width_p = width_r = 0
    for i in order:
        p, r = max(width_p, int(prompt_lens[i])), max(width_r, int(response_lens[i]))
        if rows and (len(rows) == max_rows or (len(rows) + 1) * (p + r) > max_tokens):
            groups.append(rows)
            rows, p, r = [], int(prompt_lens[i]), int(response_lens[i])
        rows.append(i)
        width_p, width_r = p, r
    if rows:
        groups.append(rows)
    return groups


def padded_tokens(batch: RolloutBatch) -> int:
    """rows × width of the rectangle the model computes for this (trimmed) batch."""
    return batch.size * int(batch.input_ids.shape[1])


def trimmed(batch: RolloutBatch) -> RolloutBatch:
    """The batch without columns that are padding in every row: leading prompt columns and
    trailing response columns (at least one of each is kept, so the layout stays P | R)."""
    prompt_cols = batch.input_ids.shape[1] - batch.response_length
    first = prompt_cols - max(int(prompt_lengths(batch).max()), 1)
    keep_r = max(int(batch.response_lengths.max()), 1)
    picked = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if f.name in SEQUENCE_FIELDS:
            value = value[:, first : prompt_cols + keep_r]
        elif value is not None and value.dim() == 2:
            value = value[:, :keep_r]
        picked[f.name] = value
    return RolloutBatch(**picked)


def filler_batch(batch: RolloutBatch) -> RolloutBatch:
    """One row of `batch`'s fields shaped [1, 2] / [1, 1]: what a rank runs, with weight 0, when
    it has fewer micro-batches than another rank (sharded forwards are collectives: every rank
    must run as many). Its one response token is unmasked so the loss stays finite."""
    picked = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if f.name in SEQUENCE_FIELDS:
            value = torch.tensor([[0, 1]]) if f.name == "position_ids" else torch.ones(1, 2)
            value = value.long()
        elif value is not None:
            fill = 1 if f.name == "response_mask" else 0
            value = torch.full((1, 1) if value.dim() == 2 else (1,), fill, dtype=value.dtype)
        picked[f.name] = value
    return RolloutBatch(**picked)
