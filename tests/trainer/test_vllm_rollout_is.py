"""Truncated importance sampling against the rollout engine (algorithm.rolloutIsCap): the weights
by hand, and their effect on the policy loss and on a whole actor update."""

from __future__ import annotations

import math

import pytest
import torch

from distill_trainer.algorithm import ppo_policy_loss, rollout_is_weights


def test_weights_by_hand() -> None:
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]])
    rollout = torch.tensor([[-1.0, -1.0, -2.5], [-1.0, 5.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = rollout_is_weights(old, rollout, mask, cap=2.0)
    # exp(0) = 1; exp(-1) = 0.3679; exp(2) = 7.39 → cut to 2; exp(-2) = 0.1353; padding 0.
    expected = torch.tensor([[1.0, math.exp(-1.0), 2.0], [math.exp(-2.0), 0.0, 0.0]])
    torch.testing.assert_close(w, expected)
    assert not w.requires_grad


def test_cap_must_be_at_least_one() -> None:
    ones = torch.ones(1, 2)
    with pytest.raises(ValueError, match="rolloutIsCap"):
        rollout_is_weights(ones, ones, ones, cap=0.5)


def test_weighted_advantage_weights_each_token_loss() -> None:
    """A·w in ppo_policy_loss = w·L per token, clips included (w > 0 keeps A's sign)."""
    logp = torch.tensor([[-0.5, -1.0, -2.0, -0.1]])
    old = torch.tensor([[-1.0, -1.0, -0.5, -0.1]])  # ratios e^0.5, 1, e^-1.5 (dual-clip side), 1
    adv = torch.tensor([[1.0, -1.0, -2.0, 0.5]])
    mask = torch.ones(1, 4)
    w = torch.tensor([[2.0, 0.5, 1.5, 1.0]])
    weighted, _ = ppo_policy_loss(logp, old, adv * w, mask, loss_agg="seq-mean-token-sum")
    per_token = [
        ppo_policy_loss(logp[:, i : i + 1], old[:, i : i + 1], adv[:, i : i + 1], mask[:, :1])[0]
        for i in range(4)
    ]
    torch.testing.assert_close(
        weighted, sum(wi * li for wi, li in zip(w[0], per_token, strict=True))
    )
    # By hand, token 0: ρ = e^0.5 = 1.6487 clipped to 1.2, A = 1 → L = −1.2, weighted −2.4.
    torch.testing.assert_close(per_token[0], torch.tensor(-1.2))
