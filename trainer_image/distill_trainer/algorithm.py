"""Algorithm core of on-policy distillation: advantages, the teacher KL, PPO losses, entropy.

Pure tensor functions (torch only; no I/O, no distributed calls). Per response token the actor
maximises the PPO surrogate of

    A_final = A_base − α · KL(π_student ‖ π_teacher),   KL added after A_base is normalised,

where A_base comes from the estimator named in the spec (``compute_base_advantages``; ``none``
gives 0, reward-free distillation) and the KL from ``kl_penalty`` (k1 only: the only per-token
term whose policy gradient is the KL's). An optional KL loss (``kl_loss``) adds a term
differentiated through the student's logprobs; nothing puts the KL in the reward. Also here: the
learning-rate schedule (``lr_factor``) and the unbiased pass@k (``pass_at_k``). docs/algorithm.md
derives it all.

Conventions: ``[B]`` per sequence, ``[B, T]`` per response token; ``response_mask`` is 1.0 (or True)
on response tokens and 0.0 on padding. Padding values never reach a result: they are selected away
with ``torch.where``, not multiplied by the mask. Everything is computed in float32 (float64 inputs
stay float64), so bf16 inputs give float32 outputs. Metrics are Python floats; losses are scalar
tensors carrying gradients. Advantage functions run under ``torch.no_grad`` (they are constants).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import TypeVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from distill_api.v1alpha1 import (
    KL_ESTIMATOR_REFUSAL,
    AdvEstimator,
    KlEstimator,
    KlLossEstimator,
    LrSchedule,
)


class LossAgg(StrEnum):
    """How a ``[B, T]`` loss matrix becomes one number."""

    TOKEN_MEAN = "token-mean"
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"


# The loss functions' metrics that are means over response tokens, whatever the loss aggregation:
# merging micro-batches weights them by tokens. Their other metrics are the loss aggregates, which
# merge like the loss does.
TOKEN_MEAN_METRICS = frozenset(
    {"actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl", "critic/vf_clipfrac"}
)


# --- validation and dtype ------------------------------------------------------------------------


def _f32(x: Tensor) -> Tensor:
    """Upcast to float32 (float64 stays float64); no copy when already there."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


_E = TypeVar("_E", bound=StrEnum)


def _enum(cls: type[_E], value: str, field: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(e.value) for e in cls)
        raise ValueError(f"{field} must be one of {choices}, got {value!r}") from None


def _shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def _mask(response_mask: Tensor, **same_shape: Tensor) -> Tensor:
    """Check ``response_mask`` is [B, T] and the named tensors match it; return it as bool."""
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be [B, T], got shape {tuple(response_mask.shape)}")
    for name, tensor in same_shape.items():
        _shape(name, tensor, tuple(response_mask.shape))
    return response_mask.bool()


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


# --- masked statistics ---------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ_{mask} x / Σ mask over ``dim`` (all elements when None); x and mask share a shape.

    Departs from ``(x*mask).sum()/mask.sum()``: an empty mask gives 0, not NaN, and padding values
    are selected away, so NaN or inf there cannot leak in.
    """
    m = mask.bool()
    total = torch.where(m, _f32(x), 0.0).sum(dim)
    return total / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over the masked elements (scalar); unbiased: × n/(n−1), skipped when n < 2."""
    m = mask.bool()
    mean = masked_mean(x, m)
    var = masked_mean((_f32(x) - mean) ** 2, m)
    if not unbiased:
        return var
    n = m.sum()
    return torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the masked elements (unbiased var); 0 on padding.

    ``shift_mean=False`` adds the mean back (scale only). All-equal inputs give 0, not NaN.
    """
    m = mask.bool()
    mean = masked_mean(x, m)
    out = (_f32(x) - mean) * torch.rsqrt(masked_var(x, m) + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0)


def _group_mean_std(x: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element mean and unbiased std of x[B] over its group; a group of one: mean 0, std 1.

    Vectorised with unique + index_add (no loop over B). x: [B] float; group_ids: [B] any labels.
    """
    labels, inverse = torch.unique(group_ids, return_inverse=True)  # inverse: [B] in 0..G-1
    n_groups = labels.numel()
    count = torch.bincount(inverse, minlength=n_groups).to(x.dtype)  # [G]
    mean = x.new_zeros(n_groups).index_add_(0, inverse, x) / count
    sq_dev = (x - mean[inverse]) ** 2
    var = x.new_zeros(n_groups).index_add_(0, inverse, sq_dev) / (count - 1).clamp(min=1)
    single = count < 2
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, var.sqrt())
    return mean[inverse], std[inverse]


# --- base advantage estimators -------------------------------------------------------------------


@torch.no_grad()
def grpo_advantages(
    scores: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Outcome GRPO: A_i = (s_i − mean_g(s)) / (std_g(s) + eps), broadcast over response tokens.

    scores, group_ids: [B]; response_mask: [B, T] → [B, T] float32, 0 on padding. std is unbiased;
    ``norm_by_std=False`` only centres (Dr. GRPO). Departs from the paper (DeepSeekMath): a group of
    one gets mean 0, std 1 (its raw score) rather than an undefined baseline, and eps is added to
    the std so an all-equal group gives 0, not NaN.
    """
    m = _mask(response_mask)
    _shape("scores", scores, (m.shape[0],))
    _shape("group_ids", group_ids, (m.shape[0],))
    s = _f32(scores)
    mean, std = _group_mean_std(s, group_ids)
    adv = s - mean
    if norm_by_std:
        adv = adv / (std + eps)
    return torch.where(m, adv[:, None], 0.0)


@torch.no_grad()
def gae_advantages(
    token_rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """GAE: δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}; returns R_t = A_t + V_t.

    All [B, T] → (advantages, returns), float32, 0 on padding. Returns are taken before the
    advantages are whitened over the masked tokens (the critic's target; never includes the KL).
    Departs from textbook GAE: positions with mask 0 (padding, or observation tokens between turns)
    are skipped — the next value and running advantage carry across them — and the value after the
    last response token is 0 (responses are terminal).
    """
    _in_range("gamma", gamma, 0.0, 1.0)
    _in_range("lam", lam, 0.0, 1.0)
    m = _mask(response_mask, token_rewards=token_rewards, values=values)
    r = torch.where(m, _f32(token_rewards), 0.0)
    v = torch.where(m, _f32(values), 0.0)
    next_value = r.new_zeros(r.shape[0])  # [B]
    running = r.new_zeros(r.shape[0])  # [B]
    adv = torch.zeros_like(r)
    for t in reversed(range(r.shape[1])):
        step = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * running
        running = torch.where(m[:, t], step, running)
        next_value = torch.where(m[:, t], v[:, t], next_value)
        adv[:, t] = step
    returns = torch.where(m, adv + v, 0.0)
    return masked_whiten(adv, m), returns


@torch.no_grad()
def grpo_per_step_advantages(
    step_rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    gamma: float = 1.0,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Multi-turn GRPO: every token of turn k gets (R_k − mean_g(R_0)) / (std_g(R_0) + eps).

    A turn is a maximal run of response tokens (mask 1); its reward r_k is the sum of step_rewards
    over it (normally one value at its last token). R_k = r_k + γ·R_{k+1}, and the group statistics
    use first-turn returns R_0. step_rewards, response_mask: [B, T]; group_ids: [B] → [B, T]
    float32, 0 on padding. With one turn this equals ``grpo_advantages(step_rewards.sum(-1))``
    exactly. Departs from GRPO process supervision (which normalises each step reward by all the
    group's step rewards, then sums): turn returns are discounted raw rewards scaled by the group's
    R_0 statistics, so all turns share one scale and outcome GRPO is exactly the one-turn case.
    """
    _in_range("gamma", gamma, 0.0, 1.0)
    m = _mask(response_mask, step_rewards=step_rewards)
    _shape("group_ids", group_ids, (m.shape[0],))
    r = torch.where(m, _f32(step_rewards), 0.0)
    starts = m & ~torch.nn.functional.pad(m, (1, 0))[:, :-1]  # first token of each turn
    turn = starts.long().cumsum(-1) - 1  # [B, T] turn index of each token
    n_turns = int(turn.max()) + 1 if turn.numel() else 0
    slot = torch.where(m, turn, n_turns)  # padding → spare slot n_turns, whose return stays 0
    turn_rewards = r.new_zeros(m.shape[0], n_turns + 1).scatter_add_(1, slot, r)  # [B, K+1]
    turn_returns = torch.zeros_like(turn_rewards)
    for k in reversed(range(n_turns)):  # loops over turns (few), not over B or T
        turn_returns[:, k] = turn_rewards[:, k] + gamma * turn_returns[:, k + 1]
    mean, std = _group_mean_std(turn_returns[:, 0], group_ids)
    adv = turn_returns.gather(1, slot) - mean[:, None]
    if norm_by_std:
        adv = adv / (std[:, None] + eps)
    return torch.where(m, adv, 0.0)


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything any base estimator may read; each uses only its own fields."""

    response_mask: Tensor  # [B, T]
    scores: Tensor | None = None  # [B] outcome score per response (grpo)
    step_rewards: Tensor | None = None  # [B, T] turn reward at each turn's last token
    token_rewards: Tensor | None = None  # [B, T] reward per token (gae)
    values: Tensor | None = None  # [B, T] critic values at rollout time (gae)
    group_ids: Tensor | None = None  # [B] prompt id: responses to one prompt form a group
    gamma: float = 1.0
    lam: float = 1.0
    norm_by_std: bool = True

    def need(self, field: str, estimator: AdvEstimator) -> Tensor:
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"advEstimator {estimator.value} needs {field}")
        return value


def _grpo(x: AdvantageInputs) -> tuple[Tensor, Tensor | None]:
    est = AdvEstimator.GRPO
    scores, group_ids = x.need("scores", est), x.need("group_ids", est)
    return grpo_advantages(scores, group_ids, x.response_mask, x.norm_by_std), None


def _gae(x: AdvantageInputs) -> tuple[Tensor, Tensor | None]:
    rewards, values = x.need("token_rewards", AdvEstimator.GAE), x.need("values", AdvEstimator.GAE)
    return gae_advantages(rewards, values, x.response_mask, x.gamma, x.lam)


def _grpo_per_step(x: AdvantageInputs) -> tuple[Tensor, Tensor | None]:
    est = AdvEstimator.GRPO_PER_STEP
    rewards, group_ids = x.need("step_rewards", est), x.need("group_ids", est)
    adv = grpo_per_step_advantages(
        rewards, group_ids, x.response_mask, x.gamma, norm_by_std=x.norm_by_std
    )
    return adv, None


def _none(x: AdvantageInputs) -> tuple[Tensor, Tensor | None]:
    # Reward-free distillation: no base advantage, so −α·KL (added next) is all there is.
    return torch.zeros(x.response_mask.shape, dtype=torch.float32), None


AdvantageFn = Callable[[AdvantageInputs], tuple[Tensor, Tensor | None]]
ADVANTAGE_ESTIMATORS: dict[AdvEstimator, AdvantageFn] = {
    AdvEstimator.GRPO: _grpo,
    AdvEstimator.GAE: _gae,
    AdvEstimator.GRPO_PER_STEP: _grpo_per_step,
    AdvEstimator.NONE: _none,
}


def compute_base_advantages(
    estimator: AdvEstimator | str,
    *,
    response_mask: Tensor,
    scores: Tensor | None = None,
    step_rewards: Tensor | None = None,
    token_rewards: Tensor | None = None,
    values: Tensor | None = None,
    group_ids: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    norm_by_std: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """A_base [B, T] by the named estimator, plus the critic's returns [B, T] (gae) or None.

    The driver passes what it has; the estimator reads its fields and names any that is missing.
    """
    est = _enum(AdvEstimator, estimator, "advEstimator")
    inputs = AdvantageInputs(
        response_mask=response_mask,
        scores=scores,
        step_rewards=step_rewards,
        token_rewards=token_rewards,
        values=values,
        group_ids=group_ids,
        gamma=gamma,
        lam=lam,
        norm_by_std=norm_by_std,
    )
    return ADVANTAGE_ESTIMATORS[est](inputs)


# --- the teacher KL ------------------------------------------------------------------------------


def kl_penalty(
    student_logprobs: Tensor, teacher_logprobs: Tensor, estimator: KlEstimator | str = "k1"
) -> Tensor:
    """Per-token k1 = log π_s − log π_t of the sampled token, [B, T] → [B, T].

    Only k1 is accepted. In the advantage a term k moves the policy by E_{y~π_s}[∇log π_s(y)·k(y)];
    for k1 that is exactly ∇KL(π_s ‖ π_t), for k3 it is ∇KL(π_s ‖ π_t) − ∇KL(π_t ‖ π_s), whose
    direction can be opposite (verl warns the same). Low-variance estimators belong in a loss,
    where they are differentiated: ``kl_loss``.
    """
    est = _enum(KlEstimator, estimator, "klEstimator")
    if est is not KlEstimator.K1:
        raise ValueError(f"klEstimator {est.value}: {KL_ESTIMATOR_REFUSAL}")
    _shape("teacher_logprobs", teacher_logprobs, tuple(student_logprobs.shape))
    return _f32(student_logprobs) - _f32(teacher_logprobs)


@torch.no_grad()
def apply_kl_to_advantages(
    advantages: Tensor,
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    response_mask: Tensor,
    coef: float,
    estimator: KlEstimator | str = "k1",
) -> tuple[Tensor, dict[str, float]]:
    """A_final = A − coef·kl·mask, applied after A was normalised; all [B, T] → float32 [B, T].

    Metrics: ``distill/kl_per_token`` (masked mean over response tokens, padding excluded) and
    ``distill/kl_coef``. ``coef == 0`` returns A unchanged (bit-identical), metrics still computed.
    Departs from RLHF-PPO, which puts the KL into the reward before GAE/normalisation: here it is
    a per-token term of fixed scale α, neither rescaled by a group's std nor centred away.
    """
    _in_range("coef", coef, 0.0, math.inf)
    m = _mask(
        response_mask,
        advantages=advantages,
        student_logprobs=student_logprobs,
        teacher_logprobs=teacher_logprobs,
    )
    kl = torch.where(m, kl_penalty(student_logprobs, teacher_logprobs, estimator), 0.0)
    metrics = {"distill/kl_per_token": masked_mean(kl, m).item(), "distill/kl_coef": float(coef)}
    base = _f32(advantages)
    if coef == 0:
        return base, metrics
    return base - coef * kl, metrics


def _low_var_kl(d: Tensor) -> Tensor:
    # Clamping d first only avoids inf: outside ±20 the result is clamped to 10 anyway (as verl).
    d = d.clamp(-20.0, 20.0)
    return (torch.expm1(-d) + d).clamp(-10.0, 10.0)


_KL_LOSS_ESTIMATORS: dict[KlLossEstimator, Callable[[Tensor], Tensor]] = {
    KlLossEstimator.LOW_VAR_KL: _low_var_kl,
    KlLossEstimator.K1: lambda d: d,
    KlLossEstimator.K2: lambda d: 0.5 * d.square(),
}


# --- losses --------------------------------------------------------------------------------------


def agg_loss(
    loss_mat: Tensor, mask: Tensor, loss_agg: LossAgg | str = LossAgg.TOKEN_MEAN
) -> Tensor:
    """Reduce a [B, T] loss to a scalar (float32) over the masked tokens.

    token-mean: Σ_{b,t} L·m / Σ m.  seq-mean-token-sum: mean_b Σ_t L·m.
    seq-mean-token-mean: mean_b (Σ_t L·m / Σ_t m). Sequence means skip sequences with no tokens.
    Differs from GRPO's seq-mean-token-mean default: token-mean (DAPO) weighs long responses by
    their length instead of diluting each of their tokens.
    """
    mode = _enum(LossAgg, loss_agg, "loss_agg")
    m = _mask(mask, loss_mat=loss_mat)
    if mode is LossAgg.TOKEN_MEAN:
        return masked_mean(loss_mat, m)
    per_seq = torch.where(m, _f32(loss_mat), 0.0).sum(-1)  # [B]
    if mode is LossAgg.SEQ_MEAN_TOKEN_MEAN:
        per_seq = per_seq / m.sum(-1).clamp(min=1)
    return masked_mean(per_seq, m.any(-1))


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg: LossAgg | str = LossAgg.TOKEN_MEAN,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate with dual clip; all [B, T] → (scalar loss with grad, metrics).

    ρ = exp(logp − old); L = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high)); where A < 0,
    L = min(L, −A·c) (dual clip, Ye et al. 2020). Metrics: actor/pg_loss, actor/pg_clipfrac,
    actor/pg_clipfrac_lower (tokens the dual clip bounds) and actor/ppo_kl = mean(old − logp).
    Departs from PPO: asymmetric ε (DAPO clip-higher) and the dual clip, which bounds the loss of a
    negative-advantage token whose ratio has exploded; log ρ is clamped to ±20 against overflow.
    """
    _in_range("clip_low", clip_low, 0.0, 1.0)
    _in_range("clip_high", clip_high, 0.0, math.inf)
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c!r}")
    m = _mask(response_mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    adv = torch.where(m, _f32(advantages), 0.0).detach()
    log_ratio = torch.where(m, _f32(logprobs) - _f32(old_logprobs), 0.0).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss_plain = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_ppo = torch.maximum(loss_plain, loss_clipped)
    loss_dual = torch.minimum(loss_ppo, -adv * clip_ratio_c)
    negative = adv < 0
    loss = agg_loss(torch.where(negative, loss_dual, loss_ppo), m, loss_agg)
    with torch.no_grad():
        metrics = {
            "actor/pg_loss": loss.item(),
            "actor/pg_clipfrac": masked_mean(loss_clipped > loss_plain, m).item(),
            "actor/pg_clipfrac_lower": masked_mean(negative & (loss_ppo > loss_dual), m).item(),
            "actor/ppo_kl": masked_mean(-log_ratio, m).item(),
        }
    return loss, metrics


def kl_loss(
    logprobs: Tensor,
    teacher_logprobs: Tensor,
    response_mask: Tensor,
    estimator: KlLossEstimator | str = KlLossEstimator.LOW_VAR_KL,
    loss_agg: LossAgg | str = LossAgg.TOKEN_MEAN,
) -> tuple[Tensor, dict[str, float]]:
    """KL loss with d = log π_s − log π_t per sampled token; [B, T] → (scalar with grad, metrics).

    low_var_kl (k3) = exp(−d) + d − 1 (clamped to [−10, 10]); k1 = d; k2 = ½·d². Gradients flow
    through ``logprobs`` only (the teacher's are constants). On tokens sampled from π_s the
    expected gradients are: k2 → ∇KL(π_s ‖ π_t), low_var_kl → ∇KL(π_t ‖ π_s) (forward KL), k1 → 0
    (E[∇log π] = 0). Metric ``actor/kl_loss``. As verl's ``use_kl_loss``, with its estimator names.
    """
    est = _enum(KlLossEstimator, estimator, "klLoss.estimator")
    m = _mask(response_mask, logprobs=logprobs, teacher_logprobs=teacher_logprobs)
    d = torch.where(m, _f32(logprobs) - _f32(teacher_logprobs).detach(), 0.0)
    loss = agg_loss(_KL_LOSS_ESTIMATORS[est](d), m, loss_agg)
    return loss, {"actor/kl_loss": loss.item()}


def rollout_is_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor, cap: float
) -> Tensor:
    """Truncated importance-sampling weights for the rollout engine's numerics; [B, T] → [B, T].

    w = min(π_old / π_rollout, C) = min(exp(old − rollout), C) on response tokens, 0 on padding;
    a constant (no gradient). π_rollout is what the engine sampled from (vLLM's kernels, bf16, a
    top-p cut), π_old the actor's recomputation of the same tokens, which PPO's ratio assumes
    sampled them. Multiplying each token's advantage by w weights its policy loss by w (w > 0
    keeps the sign, so the clip and dual clip are unchanged): verl's and the seed's truncated IS
    (Yao et al. 2025). Truncating at C bounds the variance; weights below C pass unchanged.
    """
    if not cap >= 1.0:
        raise ValueError(f"rolloutIsCap must be >= 1, got {cap!r}")
    m = _mask(response_mask, old_logprobs=old_logprobs, rollout_logprobs=rollout_logprobs)
    log_w = torch.where(m, _f32(old_logprobs) - _f32(rollout_logprobs), 0.0)
    weights = torch.exp(log_w.clamp(max=math.log(cap)))
    return torch.where(m, weights, 0.0).detach()


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    clip: float = 0.5,
    loss_agg: LossAgg | str = LossAgg.TOKEN_MEAN,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss ½·max((V − R)², (V_old + clip(V − V_old, ±c) − R)²); [B, T] → scalar.

    Metrics: critic/vf_loss and critic/vf_clipfrac (tokens where the clipped term wins). Departs
    from the PPO paper (which has no value clipping); this is the PPO2/baselines form, with the
    same aggregation as the policy loss.
    """
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    m = _mask(response_mask, values=values, old_values=old_values, returns=returns)
    # Select padding away before any product, so junk there cannot reach even the gradient.
    v = torch.where(m, _f32(values), 0.0)
    old = torch.where(m, _f32(old_values), 0.0).detach()
    ret = torch.where(m, _f32(returns), 0.0).detach()
    loss_plain = (v - ret) ** 2
    loss_clipped = (old + (v - old).clamp(-clip, clip) - ret) ** 2
    loss = 0.5 * agg_loss(torch.maximum(loss_plain, loss_clipped), m, loss_agg)
    with torch.no_grad():
        metrics = {
            "critic/vf_loss": loss.item(),
            "critic/vf_clipfrac": masked_mean(loss_clipped > loss_plain, m).item(),
        }
    return loss, metrics


# --- per-token quantities from logits ----------------------------------------------------------


def _by_row_chunks(fn: Callable[..., Tensor], logits: Tensor, *rows: Tensor, chunk: int) -> Tensor:
    """fn over row chunks of logits flattened to [N, V] (and rows to [N]) → [*logits.shape[:-1]].

    With grad, each chunk is checkpointed: only the logits themselves are kept for backward and
    each chunk's float32 copies are recomputed there, so no full-vocab copy outlives its chunk.
    """
    if chunk < 1:
        raise ValueError(f"chunk_rows must be ≥ 1, got {chunk!r}")
    flat = logits.reshape(-1, logits.shape[-1])
    flat_rows = [r.reshape(-1) for r in rows]
    if flat.shape[0] == 0:
        return flat.new_zeros(logits.shape[:-1], dtype=_f32(flat).dtype)
    keep_graph = torch.is_grad_enabled() and logits.requires_grad
    outs = []
    for start in range(0, flat.shape[0], chunk):
        args = (flat[start : start + chunk], *(r[start : start + chunk] for r in flat_rows))
        outs.append(checkpoint(fn, *args, use_reentrant=False) if keep_graph else fn(*args))
    return torch.cat(outs).reshape(logits.shape[:-1])


def _scaled(z: Tensor, temperature: float) -> Tensor:
    z = _f32(z)
    return z if temperature == 1.0 else z / temperature


def _chunk_logprobs(z: Tensor, ids: Tensor, temperature: float) -> Tensor:
    z = _scaled(z, temperature)
    return z.gather(-1, ids[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


def _chunk_entropy(z: Tensor, temperature: float) -> Tensor:
    # H is shift-invariant; shifting by the max keeps lse and Σ p·z small, avoiding cancellation.
    z = _scaled(z, temperature)
    z = z - z.amax(dim=-1, keepdim=True).detach()
    return torch.logsumexp(z, dim=-1) - torch.einsum("nv,nv->n", torch.softmax(z, dim=-1), z)


def token_logprobs_from_logits(
    logits: Tensor, token_ids: Tensor, temperature: float = 1.0, chunk_rows: int = 1024
) -> Tensor:
    """log softmax(logits / temperature)[token_id]: [B, T, V], [B, T] → [B, T] float32.

    Computed as z[id] − logsumexp(z) in float32, ``chunk_rows`` rows at a time, so a bf16 [B, T, V]
    never gets a full float32 copy (with grad, chunks are recomputed in backward rather than kept)
    and large logits do not overflow.
    """
    _in_range("temperature", temperature, 1e-6, math.inf)
    _shape("token_ids", token_ids, tuple(logits.shape[:-1]))
    fn = partial(_chunk_logprobs, temperature=temperature)
    return _by_row_chunks(fn, logits, token_ids.long(), chunk=chunk_rows)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0, chunk_rows: int = 1024) -> Tensor:
    """Entropy of softmax(logits / temperature): H = logsumexp(z) − Σ_v softmax(z)_v·z_v.

    [..., V] → [...] float32; finite logits. Chunked and checkpointed like
    ``token_logprobs_from_logits``; inside a chunk at most two float32 vocab-sized temporaries are
    alive (the max-shifted logits and the softmax; Σ p·z is a batched dot product, not a copy).
    """
    _in_range("temperature", temperature, 1e-6, math.inf)
    return _by_row_chunks(
        partial(_chunk_entropy, temperature=temperature), logits, chunk=chunk_rows
    )


def _chunk_logprobs_entropy(
    h: Tensor, ids: Tensor, head: Callable[[Tensor], Tensor], temperature: float, entropy: bool
) -> tuple[Tensor, Tensor]:
    # One float32 copy of the chunk's logits serves both (the two helpers above would make two).
    z = _scaled(head(h), temperature)
    logprobs = z.gather(-1, ids[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)
    if not entropy:
        return logprobs, logprobs.new_zeros(())
    z = z - z.amax(dim=-1, keepdim=True).detach()
    ent = torch.logsumexp(z, dim=-1) - torch.einsum("nv,nv->n", torch.softmax(z, dim=-1), z)
    return logprobs, ent


def token_logprobs_from_hidden(
    hidden: Tensor,
    head: Callable[[Tensor], Tensor],
    token_ids: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Token logprobs (and entropies) from the last hidden states, logits a chunk at a time.

    [B, T, H] hidden, head: [n, H] → [n, V] logits, [B, T] ids → ([B, T], [B, T] | None) float32:
    log softmax(head(h) / temperature)[id] and H = lse(z) − Σ_v softmax(z)_v·z_v, as
    ``token_logprobs_from_logits`` and ``entropy_from_logits`` compute them. Only ``chunk_tokens``
    rows of [n, V] logits exist at once; with grad each chunk is checkpointed, so backward keeps
    its hidden states (n × H) and recomputes the logits, never holding a [B, T, V] tensor.
    """
    _in_range("temperature", temperature, 1e-6, math.inf)
    _shape("token_ids", token_ids, tuple(hidden.shape[:-1]))
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be ≥ 1, got {chunk_tokens!r}")
    flat, ids = hidden.reshape(-1, hidden.shape[-1]), token_ids.reshape(-1).long()
    fn = partial(_chunk_logprobs_entropy, head=head, temperature=temperature, entropy=with_entropy)
    keep_graph = torch.is_grad_enabled() and hidden.requires_grad
    logprobs, entropies = [], []
    for start in range(0, flat.shape[0], chunk_tokens):
        args = (flat[start : start + chunk_tokens], ids[start : start + chunk_tokens])
        lp, ent = checkpoint(fn, *args, use_reentrant=False) if keep_graph else fn(*args)
        logprobs.append(lp)
        entropies.append(ent)
    shape = tuple(hidden.shape[:-1])
    if not logprobs:
        empty = hidden.new_zeros(shape, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    entropy = torch.cat(entropies).reshape(shape) if with_entropy else None
    return torch.cat(logprobs).reshape(shape), entropy


# --- schedules and validation ------------------------------------------------------------------


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: LrSchedule | str = LrSchedule.CONSTANT,
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate for update ``step`` (0-based, one per training step).

    Warm-up: (step + 1) / warmup_steps while step < warmup_steps, so the first update already moves.
    Then constant: 1; cosine: r + (1 − r)·½(1 + cos(π·p)), p = (step − W) / (total − W − 1), which
    is 1 at the first update after warm-up and r = min_lr_ratio at the last (p capped at 1).
    Departs from verl's cosine (which reaches its minimum one step after the run ends): the last
    update runs at exactly min_lr_ratio.
    """
    mode = _enum(LrSchedule, schedule, "lrSchedule")
    _in_range("min_lr_ratio", min_lr_ratio, 0.0, 1.0)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if mode is LrSchedule.CONSTANT:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def pass_at_k(correct: Tensor, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) averaged over problems; correct: [P, n] bool, k ≤ n.

    Per problem with c of n samples correct: 1 − C(n − c, k) / C(n, k), computed as the product
    Π_{i=n−c+1}^{n} (1 − k/i) for numerical stability (the paper's form); 1 when n − c < k.
    """
    if correct.dim() != 2:
        raise ValueError(f"correct must be [P, n], got shape {tuple(correct.shape)}")
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k!r}")
    per_problem = []
    for c in correct.bool().sum(-1).tolist():
        if n - c < k:
            per_problem.append(1.0)
        else:
            per_problem.append(1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1)))
    return sum(per_problem) / max(len(per_problem), 1)
