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
