"""Property tests (hypothesis): padding invariance, group-permutation invariance, coef = 0 identity,
GRPO = grpo_per_step on one turn, and GAE(λ = γ = 1, V = 0) returns = reward-to-go.

Values are small integers in float64, so sums are exact and reordering them (padding, permuting)
cannot change a result by rounding: the comparisons can be tight.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from distill_trainer.algorithm import (
    LossAgg,
    agg_loss,
    apply_kl_to_advantages,
    gae_advantages,
    grpo_advantages,
    grpo_per_step_advantages,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)

PROPERTY = settings(max_examples=40, deadline=None)


class Batch:
    """A random batch: B rows, T columns, right-padded with per-row lengths, groups of rows."""

    def __init__(self, seed: int, b: int, t: int, n_groups: int, min_len: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_len, t + 1, (b,), generator=self.gen)
        self.mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
        self.groups = torch.randint(0, n_groups, (b,), generator=self.gen) * 7 + 3

    def ints(self, *shape: int, low: int = -4, high: int = 5) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=self.gen).double()

    def pad(self, x: torch.Tensor, extra: int) -> torch.Tensor:
        """x with `extra` columns of large junk appended."""
        return torch.cat([x, torch.full((x.shape[0], extra), 1e6, dtype=x.dtype)], dim=1)

    def padded_mask(self, extra: int) -> torch.Tensor:
        return torch.cat([self.mask, torch.zeros(self.mask.shape[0], extra).double()], dim=1)


batches = st.builds(
    Batch,
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 7),
    t=st.integers(1, 6),
    n_groups=st.integers(1, 3),
)


@PROPERTY
@given(batch=batches, extra=st.integers(1, 4), gamma=st.sampled_from([1.0, 0.5, 0.0]))
def test_padding_changes_no_advantage(batch: Batch, extra: int, gamma: float) -> None:
    b, t = batch.mask.shape
    scores, rewards, values = batch.ints(b), batch.ints(b, t), batch.ints(b, t)
    mask, pmask = batch.mask, batch.padded_mask(extra)
    rewards, values = rewards * mask, values * mask
    pr, pv = batch.pad(rewards, extra), batch.pad(values, extra)

    def same(padded: torch.Tensor, plain: torch.Tensor) -> None:
        assert_close(padded[:, :t], plain)
        assert torch.equal(padded[:, t:], torch.zeros(b, extra, dtype=padded.dtype))

    same(grpo_advantages(scores, batch.groups, pmask), grpo_advantages(scores, batch.groups, mask))
    same(
        grpo_per_step_advantages(pr, batch.groups, pmask, gamma),
        grpo_per_step_advantages(rewards, batch.groups, mask, gamma),
    )
    for padded, plain in zip(
        gae_advantages(pr, pv, pmask, gamma, lam=0.5),
        gae_advantages(rewards, values, mask, gamma, lam=0.5),
        strict=True,
    ):
        same(padded, plain)
    same(masked_whiten(pv, pmask), masked_whiten(values, mask))
    student, teacher = batch.ints(b, t), batch.ints(b, t)
    adv_padded = torch.cat([rewards, torch.zeros(b, extra).double()], dim=1)  # as estimators give
    kl_padded, m_padded = apply_kl_to_advantages(
        adv_padded, batch.pad(student, extra), batch.pad(teacher, extra), pmask, 0.3, "k1"
    )
    kl_plain, m_plain = apply_kl_to_advantages(rewards, student, teacher, mask, 0.3, "k1")
    same(kl_padded, kl_plain)
    assert m_padded == pytest.approx(m_plain, rel=1e-12)


@PROPERTY
@given(batch=batches, extra=st.integers(1, 4), mode=st.sampled_from(list(LossAgg)))
def test_padding_changes_no_loss(batch: Batch, extra: int, mode: LossAgg) -> None:
    b, t = batch.mask.shape
    logp, old, adv = batch.ints(b, t) / 4, batch.ints(b, t) / 4, batch.ints(b, t)
    mask, pmask = batch.mask, batch.padded_mask(extra)
    p = [batch.pad(x, extra) for x in (logp, old, adv)]
    loss_padded, metrics_padded = ppo_policy_loss(*p, pmask, loss_agg=mode)
    loss_plain, metrics_plain = ppo_policy_loss(logp, old, adv, mask, loss_agg=mode)
    assert_close(loss_padded, loss_plain)
    assert metrics_padded == pytest.approx(metrics_plain, rel=1e-12)
    v, v_old, ret = batch.ints(b, t), batch.ints(b, t), batch.ints(b, t)
    pv = [batch.pad(x, extra) for x in (v, v_old, ret)]
    assert_close(
        value_loss(*pv, pmask, loss_agg=mode)[0], value_loss(v, v_old, ret, mask, loss_agg=mode)[0]
    )
    assert_close(agg_loss(batch.pad(adv, extra), pmask, mode), agg_loss(adv, mask, mode))


@PROPERTY
@given(batch=batches, perm_seed=st.integers(0, 1000), gamma=st.sampled_from([1.0, 0.5]))
def test_grpo_is_invariant_to_permuting_and_relabelling_groups(
    batch: Batch, perm_seed: int, gamma: float
) -> None:
    b, t = batch.mask.shape
    scores, rewards = batch.ints(b), batch.ints(b, t) * batch.mask
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(perm_seed))
    relabelled = (batch.groups * 13 + 1)[perm]  # a bijection of labels, rows shuffled
    assert_close(
        grpo_advantages(scores[perm], relabelled, batch.mask[perm]),
        grpo_advantages(scores, batch.groups, batch.mask)[perm],
    )
    assert_close(
        grpo_per_step_advantages(rewards[perm], relabelled, batch.mask[perm], gamma),
        grpo_per_step_advantages(rewards, batch.groups, batch.mask, gamma)[perm],
    )


@PROPERTY
@given(batch=batches)
def test_zero_coef_leaves_advantages_bit_identical(batch: Batch) -> None:
    b, t = batch.mask.shape
    adv = torch.randn(b, t, generator=batch.gen)  # arbitrary float32, not just integers
    student, teacher = torch.randn(b, t), torch.randn(b, t)
    out, _ = apply_kl_to_advantages(adv, student, teacher, batch.mask, 0.0, "k1")
    assert torch.equal(out, adv)


@PROPERTY
@given(
    batch=st.builds(
        Batch,
        seed=st.integers(0, 2**31 - 1),
        b=st.integers(1, 7),
        t=st.integers(1, 6),
        n_groups=st.integers(1, 3),
        min_len=st.just(1),
    ),
    gamma=st.floats(0.0, 1.0),
    norm_by_std=st.booleans(),
)
def test_grpo_per_step_with_one_turn_equals_grpo_exactly(
    batch: Batch, gamma: float, norm_by_std: bool
) -> None:
    b, _ = batch.mask.shape
    last = batch.mask.sum(-1).long() - 1  # each row's last response token
    scores = torch.randn(b, generator=batch.gen).float()  # arbitrary float32 rewards
    rewards = torch.zeros(batch.mask.shape).scatter_(1, last[:, None], scores[:, None])
    mask = batch.mask.float()
    per_step = grpo_per_step_advantages(rewards, batch.groups, mask, gamma, norm_by_std)
    assert torch.equal(per_step, grpo_advantages(scores, batch.groups, mask, norm_by_std))


@PROPERTY
@given(batch=batches)
def test_gae_returns_with_unit_gamma_lambda_and_zero_values_are_reward_to_go(
    batch: Batch,
) -> None:
    b, t = batch.mask.shape
    rewards = batch.ints(b, t) * batch.mask
    _, returns = gae_advantages(rewards, torch.zeros(b, t), batch.mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(-1).cumsum(-1).flip(-1) * batch.mask
    assert torch.equal(returns, reward_to_go)
