"""The issue-17 pieces of the algorithm: k1 only in the advantage, the KL loss and its gradient,
reward-free distillation (advEstimator none), the LR schedule and pass@k, by hand."""

from __future__ import annotations

import math

import api.test_crd as crd
import pytest
import torch
from pydantic import ValidationError

from distill_api import format_validation_error, load_job
from distill_trainer.algorithm import (
    apply_kl_to_advantages,
    compute_base_advantages,
    kl_loss,
    lr_factor,
    pass_at_k,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def job(**algorithm: object) -> dict:
    return {
        "apiVersion": "distill.dev/v1alpha1",
        "kind": "DistillJob",
        "metadata": {"name": "j"},
        "spec": {"student": {"model": "s"}, "data": {"train": "t"}, "algorithm": algorithm},
    }


def errors_of(document: dict) -> str:
    with pytest.raises(ValidationError) as err:
        load_job(document)
    return format_validation_error(err.value)


# --- k1 only in the advantage ----------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["k3", "abs"])
def test_spec_refuses_kl_estimators_but_k1_and_points_to_the_kl_loss(estimator: str) -> None:
    message = errors_of(job(klEstimator=estimator))
    assert message.startswith(f"spec.algorithm.klEstimator: {estimator}: only k1 is accepted")
    assert "use algorithm.klLoss (estimator low_var_kl)" in message


def test_cel_refuses_kl_estimators_but_k1_too() -> None:
    spec = crd.defaulted_spec()
    assert crd.failing_messages(spec) == []
    spec["algorithm"]["klEstimator"] = "k3"
    assert [m for m in crd.failing_messages(spec) if m.startswith("klEstimator: only k1")]


def test_spec_accepts_k1_and_a_kl_loss() -> None:
    spec = load_job(job(klEstimator="k1", klLoss={"estimator": "k2"})).spec
    assert spec.algorithm.kl_loss is not None
    assert (spec.algorithm.kl_loss.coef, spec.algorithm.kl_loss.estimator) == (0.001, "k2")
    assert load_job(job()).spec.algorithm.kl_loss is None  # off by default


def test_a_kl_loss_alone_still_builds_the_teacher() -> None:
    spec = load_job(job(useKlInAdvantage=False, klLoss={"coef": 0.01})).spec
    assert spec.needs_teacher


# --- the KL loss -------------------------------------------------------------------------------

# A 6-way categorical whose probabilities are multiples of 1/20, so a batch holding 20·π(x) copies
# of each token x makes the token-mean loss the exact expectation Σ_x π(x)·k(x) over samples.
COUNTS = [1, 2, 3, 4, 5, 5]
TEACHER_P = torch.tensor([6.0, 4.0, 3.0, 3.0, 2.0, 2.0]) / 20


def _expected_loss_gradient(estimator: str) -> torch.Tensor:
    theta = torch.tensor([float(c) for c in COUNTS]).log().requires_grad_(True)
    tokens = torch.repeat_interleave(torch.arange(6), torch.tensor(COUNTS))  # [20]
    logprobs = torch.log_softmax(theta, -1)[tokens][None, :]  # [1, 20]
    teacher = TEACHER_P.log()[tokens][None, :]
    loss, metrics = kl_loss(logprobs, teacher, torch.ones(1, 20), estimator)
    loss.backward()
    assert metrics["actor/kl_loss"] == pytest.approx(loss.item())
    return theta.grad


def _analytic(forward: bool) -> torch.Tensor:
    """∂/∂θ of KL(π ‖ π_t) (or KL(π_t ‖ π) when forward), π = softmax(θ), in closed form."""
    p = torch.tensor([float(c) for c in COUNTS]) / 20
    if forward:
        return p - TEACHER_P  # ∂/∂θ_j of −Σ π_t log π = π_j − π_t,j
    log_ratio = p.log() - TEACHER_P.log()
    return p * (log_ratio - (p * log_ratio).sum())  # π_j (log π_j/π_t,j − KL)


def test_k2_loss_gradient_is_the_reverse_kl_gradient() -> None:
    torch.testing.assert_close(_expected_loss_gradient("k2"), _analytic(forward=False))


def test_low_var_kl_loss_gradient_is_the_forward_kl_gradient() -> None:
    torch.testing.assert_close(_expected_loss_gradient("low_var_kl"), _analytic(forward=True))


def test_k1_loss_has_zero_expected_gradient() -> None:
    torch.testing.assert_close(_expected_loss_gradient("k1"), torch.zeros(6), atol=1e-7, rtol=0)


def test_kl_loss_values_by_hand_and_clamped() -> None:
    s, teacher, mask = t([[-1.0, -2.0, 5.0]]), t([[-1.5, -1.0, 0.0]]), t([[1, 1, 0]])
    # d = .5, −1 on the two response tokens; the padding's junk never counts.
    k2, _ = kl_loss(s, teacher, mask, "k2")
    assert k2.item() == pytest.approx((0.125 + 0.5) / 2)
    k3, _ = kl_loss(s, teacher, mask, "low_var_kl")
    assert k3.item() == pytest.approx((math.exp(-0.5) + 0.5 - 1 + math.exp(1) - 2) / 2)
    far, _ = kl_loss(t([[0.0, 30.0]]), t([[30.0, 0.0]]), t([[1, 1]]), "low_var_kl")
    assert far.item() == pytest.approx(10.0)  # both tokens clamped at 10, finite


# --- reward-free distillation ------------------------------------------------------------------


def test_none_gives_exactly_minus_alpha_times_the_kl() -> None:
    mask = t([[1, 1, 1], [1, 1, 0]])
    student = t([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]])
    teacher = t([[-1.5, -1.0, -0.5], [-2.0, -0.5, 0.0]])
    scores = torch.tensor([1.0, 0.0])  # ignored: the grader only measures
    base, returns = compute_base_advantages(
        "none", response_mask=mask, scores=scores, group_ids=torch.tensor([0, 0])
    )
    assert returns is None and torch.equal(base, torch.zeros(2, 3))
    adv, metrics = apply_kl_to_advantages(base, student, teacher, mask, 0.7, "k1")
    expected = torch.where(mask.bool(), -0.7 * (student - teacher), 0.0)
    assert torch.equal(adv, expected)
    assert metrics["distill/kl_per_token"] == pytest.approx((0.5 - 1 + 0 + 1.9 - 2.5) / 5)


def test_none_needs_the_teacher_kl_and_no_group() -> None:
    assert load_job(job(advEstimator="none", rolloutN=1)).spec.needs_teacher
    message = errors_of(job(advEstimator="none", useKlInAdvantage=False))
    assert message.startswith("spec.algorithm.advEstimator: none needs useKlInAdvantage: true")
    assert "klPenaltyCoef > 0" in errors_of(job(advEstimator="none", klPenaltyCoef=0))


# --- learning-rate schedule --------------------------------------------------------------------


def test_constant_with_warmup() -> None:
    got = [lr_factor(s, total_steps=10, warmup_steps=4) for s in range(6)]
    assert got == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, total_steps=10) == 1.0  # no warm-up: the first update runs at the peak


def test_cosine_after_warmup_reaches_min_ratio_at_the_last_step() -> None:
    def f(step: int) -> float:
        return lr_factor(step, 12, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)

    # 12 steps: 0, 1 warm up; 2 … 11 decay over 9 intervals; p = (step − 2) / 9.
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0
    assert f(11) == pytest.approx(0.1)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))
    assert f(20) == pytest.approx(0.1)  # past the end: stays at the minimum


def test_schedule_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="lrSchedule must be one of 'constant', 'cosine'"):
        lr_factor(0, 10, schedule="linear")


# --- pass@k ------------------------------------------------------------------------------------


def test_pass_at_k_by_hand() -> None:
    # Problem 1: 1 of 4 right; problem 2: 2 of 4; problem 3: none; problem 4: all.
    correct = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool
    )
    # pass@1 = c/n; pass@2 = 1 − C(n−c, 2)/C(4, 2) = 1 − {3, 1, 6, 0}/6; pass@4 = [c > 0].
    assert pass_at_k(correct, 1) == pytest.approx((0.25 + 0.5 + 0 + 1) / 4)
    assert pass_at_k(correct, 2) == pytest.approx((0.5 + 5 / 6 + 0 + 1) / 4)
    assert pass_at_k(correct, 3) == pytest.approx((0.75 + 1 + 0 + 1) / 4)  # C(3,3)/C(4,3) = 1/4
    assert pass_at_k(correct, 4) == pytest.approx(3 / 4)


def test_pass_at_k_refuses_k_above_n() -> None:
    with pytest.raises(ValueError, match=r"k must be in \[1, 2\]"):
        pass_at_k(torch.ones(3, 2, dtype=torch.bool), 3)
