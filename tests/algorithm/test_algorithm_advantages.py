"""Hand-computed values for the masked statistics, the advantage estimators and the KL term."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from distill_trainer.algorithm import (
    AdvEstimator,
    apply_kl_to_advantages,
    compute_base_advantages,
    gae_advantages,
    grpo_advantages,
    grpo_per_step_advantages,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
)

GARBAGE = 1e6  # what padding holds in these tests: it must never show up in a result


def t(rows: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


# --- masked statistics ----------------------------------------------------------------------------


def test_masked_mean_ignores_padding_and_empty_mask_is_zero() -> None:
    x = t([[1, 2, GARBAGE], [4, float("nan"), GARBAGE]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert_close(masked_mean(x, mask, dim=-1), t([1.5, 4.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_var_is_unbiased_and_whiten_centres_and_scales() -> None:
    x = t([[2, 4, 6, GARBAGE]])
    mask = t([[1, 1, 1, 0]])
    # mean 4, squared deviations 4, 0, 4 → unbiased var 8/2 = 4, std 2
    assert masked_var(x, mask).item() == pytest.approx(4.0)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(8 / 3)
    assert_close(masked_whiten(x, mask), t([[-1, 0, 1, 0]]))
    assert_close(masked_whiten(x, mask, shift_mean=False), t([[3, 4, 5, 0]]))


def test_masked_whiten_of_equal_values_is_zero_not_nan() -> None:
    out = masked_whiten(t([[3, 3, 3]]), t([[1, 1, 1]]))
    assert torch.equal(out, torch.zeros(1, 3))


# --- grpo -----------------------------------------------------------------------------------------

# Group 5 (rows 0, 2, 3, 5): scores 1, 0, 0, 1 → mean 0.5, unbiased std sqrt(1/3).
# Group 9 (rows 1, 4): scores 2, 2 → all equal → 0.  Group 2 (row 6): alone → mean 0, std 1.
GROUPS = t([5, 9, 5, 5, 9, 5, 2], torch.long)
SCORES = [1, 2, 0, 0, 2, 1, 0.5]
MASK7 = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]])
A = 0.5 / (math.sqrt(1 / 3) + 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grpo_advantages_by_hand(dtype: torch.dtype) -> None:
    adv = grpo_advantages(t(SCORES, dtype), GROUPS, MASK7.to(dtype))
    per_seq = t([A, 0, -A, -A, 0, A, 0.5 / (1 + 1e-6)])
    assert adv.dtype == torch.float32
    assert_close(adv, per_seq[:, None] * MASK7)


def test_grpo_advantages_centred_only() -> None:
    adv = grpo_advantages(t(SCORES), GROUPS, MASK7, norm_by_std=False)
    assert_close(adv, t([0.5, 0, -0.5, -0.5, 0, 0.5, 0.5])[:, None] * MASK7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grpo_all_equal_group_gives_zero_not_nan(dtype: torch.dtype) -> None:
    adv = grpo_advantages(t([0.7, 0.7, 0.7], dtype), t([1, 1, 1], torch.long), torch.ones(3, 2))
    assert torch.equal(adv, torch.zeros(3, 2))


def test_grpo_rejects_mismatched_scores() -> None:
    with pytest.raises(ValueError, match="scores must have shape"):
        grpo_advantages(t([1, 2]), t([0, 0, 0], torch.long), torch.ones(3, 2))


# --- gae ------------------------------------------------------------------------------------------


def test_gae_by_hand() -> None:
    # γ = λ = 0.5. Row 0: r = 0,0,1; V = .2,.5,.4 → δ = .05, −.3, .6 → A = .0125, −.15, .6.
    # Row 1 (2 tokens): r = 1,0; V = 0,0 → δ = 1, 0 → A = 1, 0.
    rewards = t([[0, 0, 1], [1, 0, GARBAGE]])
    values = t([[0.2, 0.5, 0.4], [0, 0, GARBAGE]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, returns = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.5)
    assert_close(returns, t([[0.2125, 0.35, 1.0], [1.0, 0.0, 0.0]]))
    raw = t([0.0125, -0.15, 0.6, 1.0, 0.0])  # mean 0.2925, unbiased var 0.954875 / 4
    whitened = (raw - 0.2925) / math.sqrt(0.954875 / 4)
    assert_close(adv, t([[*whitened[:3].tolist()], [*whitened[3:].tolist(), 0.0]]))


def test_gae_skips_tokens_between_turns() -> None:
    # The observation token (mask 0) is skipped: position 0 bootstraps from V at position 2.
    # γ = λ = 1: A_2 = 1 − .5 = .5, A_0 = (0 + .5 − .3) + .5 = .7; returns 1 and 1.
    mask = t([[1, 0, 1]])
    adv, returns = gae_advantages(t([[0, 9, 1]]), t([[0.3, 7, 0.5]]), mask)
    assert_close(returns, t([[1.0, 0.0, 1.0]]))
    # whitening .7, .5: mean .6, unbiased var .02
    assert_close(adv, t([[0.1 / math.sqrt(0.02), 0.0, -0.1 / math.sqrt(0.02)]]))


def test_gae_rejects_gamma_out_of_range() -> None:
    with pytest.raises(ValueError, match="gamma"):
        gae_advantages(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), gamma=1.5)


# --- grpo_per_step --------------------------------------------------------------------------------


def test_grpo_per_step_by_hand() -> None:
    # Row 0: two turns (tokens 0-1, 3-4), rewards 2 and 1; γ = .5 → R_1 = 1, R_0 = 2.5.
    # Row 1: one turn, reward .5 → R_0 = .5. Group R_0 = 2.5, .5: mean 1.5, std sqrt(2).
    rewards = t([[0, 2, GARBAGE, 0, 1, 0], [0, 0, 0.5, GARBAGE, 0, 0]])
    mask = t([[1, 1, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    groups = t([4, 4], torch.long)
    s2 = math.sqrt(2) + 1e-6
    adv = grpo_per_step_advantages(rewards, groups, mask, gamma=0.5)
    a, b, c = 1 / s2, -0.5 / s2, -1 / s2
    assert_close(adv, t([[a, a, 0, b, b, 0], [c, c, c, 0, 0, 0]]))
    centred = grpo_per_step_advantages(rewards, groups, mask, gamma=0.5, norm_by_std=False)
    assert_close(centred, t([[1, 1, 0, -0.5, -0.5, 0], [-1, -1, -1, 0, 0, 0]]))


def test_grpo_per_step_one_turn_equals_grpo_bit_for_bit() -> None:
    rewards = t([[0, 0, 0.3], [0, 1, 0], [0.9, 0, 0]])
    mask = t([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    groups = t([0, 0, 0], torch.long)
    expected = grpo_advantages(rewards.sum(-1), groups, mask)
    assert torch.equal(grpo_per_step_advantages(rewards, groups, mask, gamma=0.9), expected)


# --- kl -------------------------------------------------------------------------------------------

STUDENT = t([[-1.0, -2.0, -0.5]])
TEACHER = t([[-1.5, -1.0, -0.5]])  # s − t = .5, −1, 0


def test_kl_penalty_is_k1_by_hand() -> None:
    assert_close(kl_penalty(STUDENT, TEACHER, "k1"), t([[0.5, -1.0, 0.0]]))


@pytest.mark.parametrize("estimator", ["k3", "abs"])
def test_kl_penalty_refuses_all_but_k1_and_points_to_the_kl_loss(estimator: str) -> None:
    with pytest.raises(ValueError, match=f"klEstimator {estimator}: only k1 is accepted") as err:
        kl_penalty(STUDENT, TEACHER, estimator)
    assert "algorithm.klLoss (estimator low_var_kl)" in str(err.value)


def test_kl_penalty_bf16_returns_float32() -> None:
    out = kl_penalty(STUDENT.bfloat16(), TEACHER.bfloat16(), "k1")
    assert out.dtype == torch.float32
    assert_close(out, t([[0.5, -1.0, 0.0]]))


def test_kl_penalty_rejects_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="klEstimator must be one of 'k1', 'k3', 'abs'"):
        kl_penalty(STUDENT, TEACHER, "k2")


def test_apply_kl_after_normalisation_by_hand() -> None:
    adv = t([[1.0, -1.0, 0.0]])
    teacher = t([[-1.5, -1.0, GARBAGE]])
    mask = t([[1, 1, 0]])
    out, metrics = apply_kl_to_advantages(adv, STUDENT, teacher, mask, coef=0.1)
    assert_close(out, t([[0.95, -0.9, 0.0]]))
    assert metrics["distill/kl_per_token"] == pytest.approx(-0.25)  # (.5 − 1) / 2, not / 3
    assert metrics["distill/kl_coef"] == 0.1


def test_apply_kl_with_zero_coef_is_identity_but_still_reports_kl() -> None:
    adv = t([[0.3, -1.7, 0.0]])
    out, metrics = apply_kl_to_advantages(adv, STUDENT, TEACHER, t([[1, 1, 0]]), coef=0.0)
    assert torch.equal(out, adv)
    assert metrics == {"distill/kl_per_token": pytest.approx(-0.25), "distill/kl_coef": 0.0}


def test_apply_kl_with_zero_coef_is_identity_even_where_the_teacher_gives_zero_probability() -> (
    None
):
    adv = t([[0.3, -1.7]])
    teacher = t([[-float("inf"), -1.0]])  # k1 = +inf on the first token: 0 · inf would be NaN
    out, _ = apply_kl_to_advantages(adv, STUDENT[:, :2], teacher, t([[1, 1]]), coef=0.0)
    assert torch.equal(out, adv)


def test_apply_kl_rejects_negative_coef() -> None:
    with pytest.raises(ValueError, match="coef"):
        apply_kl_to_advantages(torch.zeros(1, 3), STUDENT, TEACHER, torch.ones(1, 3), coef=-0.1)


# --- registry -------------------------------------------------------------------------------------


def test_compute_base_advantages_dispatches_by_name() -> None:
    mask = t([[1, 1], [1, 0]])
    groups = t([0, 0], torch.long)
    adv, returns = compute_base_advantages(
        "grpo", response_mask=mask, scores=t([1, 0]), group_ids=groups
    )
    assert returns is None
    assert_close(adv, t([[0.7071, 0.7071], [-0.7071, 0.0]]), atol=1e-4, rtol=0)

    rewards = t([[0, 1], [0.5, 0]])
    adv, returns = compute_base_advantages(
        AdvEstimator.GAE, response_mask=mask, token_rewards=rewards, values=torch.zeros(2, 2)
    )
    assert_close(returns, t([[1, 1], [0.5, 0]]))

    adv, returns = compute_base_advantages(
        "grpo_per_step", response_mask=mask, step_rewards=rewards, group_ids=groups
    )
    assert returns is None
    assert_close(adv, t([[0.7071, 0.7071], [-0.7071, 0.0]]), atol=1e-4, rtol=0)


def test_compute_base_advantages_names_missing_input_and_unknown_estimator() -> None:
    mask = torch.ones(2, 2)
    with pytest.raises(ValueError, match="advEstimator gae needs values"):
        compute_base_advantages("gae", response_mask=mask, token_rewards=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="advEstimator grpo needs group_ids"):
        compute_base_advantages("grpo", response_mask=mask, scores=torch.zeros(2))
    with pytest.raises(ValueError, match="advEstimator must be one of"):
        compute_base_advantages("reinforce", response_mask=mask)


def test_gae_and_grpo_per_step_take_bf16() -> None:
    # values exactly representable in bf16, so the bf16 path must give the float32 result
    rewards = t([[0, 0, 1], [0, 0.5, 0]])
    values = t([[0.25, 0.5, 0.375], [0.125, -0.25, 0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    groups = t([1, 1], torch.long)
    adv, returns = gae_advantages(rewards, values, mask, 0.5, 0.5)
    adv16, returns16 = gae_advantages(rewards.bfloat16(), values.bfloat16(), mask.bool(), 0.5, 0.5)
    per_step = grpo_per_step_advantages(rewards, groups, mask)
    per_step16 = grpo_per_step_advantages(rewards.bfloat16(), groups, mask.bfloat16())
    for full, half in [(adv, adv16), (returns, returns16), (per_step, per_step16)]:
        assert half.dtype == torch.float32
        assert torch.equal(full, half)
