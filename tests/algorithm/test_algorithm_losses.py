"""Hand-computed values for the loss aggregation, PPO policy and value losses, logprobs, entropy."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.testing import assert_close

from distill_trainer.algorithm import (
    agg_loss,
    entropy_from_logits,
    ppo_policy_loss,
    token_logprobs_from_logits,
    value_loss,
)


def t(rows: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


# --- agg_loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),
        ("seq-mean-token-sum", (6 + 4) / 2),  # row 2 has no tokens: it is not a sequence
        ("seq-mean-token-mean", (2 + 4) / 2),
    ],
)
def test_agg_loss_by_hand(mode: str, expected: float) -> None:
    loss = t([[1, 2, 3], [4, 99, 99], [99, 99, 99]])
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert agg_loss(loss, mask, mode).item() == pytest.approx(expected)


def test_agg_loss_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="loss_agg must be one of"):
        agg_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")


# --- ppo_policy_loss ------------------------------------------------------------------------------
# Five response tokens, ε = 0.2, dual clip c = 3:
#   ρ = 1.5, A =  1: max(−1.5, −1.2) = −1.2   (clipped)
#   ρ = 0.5, A =  1: max(−0.5, −0.8) = −0.5
#   ρ = 1.0, A = −1: max( 1.0,  1.0) =  1.0,  min(1.0, 3) = 1.0
#   ρ = 5.0, A = −1: max( 5.0,  1.2) =  5.0,  min(5.0, 3) = 3.0   (dual clip)
#   ρ = 0.5, A = −2: max( 1.0,  1.6) =  1.6   (clipped),  min(1.6, 6) = 1.6
RATIOS = [[1.5, 0.5, 1.0], [5.0, 0.5, 1.0]]
ADVANTAGES = t([[1.0, 1.0, -1.0], [-1.0, -2.0, 7.0]])
MASK = t([[1, 1, 1], [1, 1, 0]])
OLD = t([[-1.0, -2.0, -0.5], [-3.0, -0.2, -1.0]])


def _logprobs(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    log_ratio = t([[math.log(r) for r in row] for row in RATIOS])
    return (OLD + log_ratio).to(dtype).requires_grad_()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (-1.2 - 0.5 + 1.0 + 3.0 + 1.6) / 5),
        ("seq-mean-token-sum", ((-1.2 - 0.5 + 1.0) + (3.0 + 1.6)) / 2),
        ("seq-mean-token-mean", ((-1.2 - 0.5 + 1.0) / 3 + (3.0 + 1.6) / 2) / 2),
    ],
)
def test_ppo_policy_loss_by_hand(mode: str, expected: float) -> None:
    loss, metrics = ppo_policy_loss(_logprobs(), OLD, ADVANTAGES, MASK, loss_agg=mode)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["actor/pg_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(2 / 5)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(1 / 5)
    mean_log_ratio = (math.log(1.5) + 2 * math.log(0.5) + math.log(5.0)) / 5
    assert metrics["actor/ppo_kl"] == pytest.approx(-mean_log_ratio, rel=1e-5)


def test_ppo_policy_loss_gradient_flows_only_through_unclipped_tokens() -> None:
    logprobs = _logprobs()
    loss, _ = ppo_policy_loss(logprobs, OLD, ADVANTAGES, MASK)
    loss.backward()
    # d(−A·ρ)/d logp = −A·ρ on unclipped tokens, divided by 5 tokens; clipped tokens get 0.
    assert_close(logprobs.grad, t([[0.0, -0.5 / 5, 1.0 / 5], [0.0, 0.0, 0.0]]))


def test_ppo_policy_loss_bf16_inputs() -> None:
    loss, _ = ppo_policy_loss(_logprobs(torch.bfloat16), OLD.bfloat16(), ADVANTAGES, MASK)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(3.9 / 5, abs=0.02)
    loss.backward()


def test_ppo_policy_loss_rejects_bad_dual_clip() -> None:
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_policy_loss(_logprobs(), OLD, ADVANTAGES, MASK, clip_ratio_c=1.0)


# --- value_loss -----------------------------------------------------------------------------------
#   V = 1.0, V_old = 0.0, R = 2.0: clipped V = 0.5 → max(1.0, 2.25) = 2.25  (clipped)
#   V = 2.0, V_old = 1.8, R = 1.0: inside the clip  → max(1.0, 1.0)  = 1.0
#   V = 0.0, V_old = 1.0, R = 0.2: clipped V = 0.5 → max(0.04, 0.09) = 0.09 (clipped)


def test_value_loss_by_hand() -> None:
    values = t([[1.0, 2.0], [0.0, 50.0]]).requires_grad_()
    old = t([[0.0, 1.8], [1.0, -50.0]])
    returns = t([[2.0, 1.0], [0.2, 0.0]])
    mask = t([[1, 1], [1, 0]])
    loss, metrics = value_loss(values, old, returns, mask, clip=0.5)
    expected = 0.5 * (2.25 + 1.0 + 0.09) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics == {
        "critic/vf_loss": pytest.approx(expected, rel=1e-5),
        "critic/vf_clipfrac": pytest.approx(2 / 3),
    }
    loss.backward()
    # only the unclipped token moves: ½ · 2(V − R) / 3 = 1/3
    assert_close(values.grad, t([[0.0, 1 / 3], [0.0, 0.0]]))


def test_value_loss_rejects_non_positive_clip() -> None:
    with pytest.raises(ValueError, match="clip must be"):
        value_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), 0.0)


# --- logprobs and entropy from logits -------------------------------------------------------------
# softmax(log [1, 2, 5] + c) = [1, 2, 5] / 8 for any shift c.
PROBS = [1 / 8, 2 / 8, 5 / 8]
ENTROPY = -sum(p * math.log(p) for p in PROBS)


def _logits(shift: float) -> torch.Tensor:
    row = [math.log(8 * p) + shift for p in PROBS]
    return t([[row, row[::-1]], [row, [0.0, 0.0, 0.0]]])  # [B=2, T=2, V=3]


@pytest.mark.parametrize("shift", [0.0, 1000.0])
@pytest.mark.parametrize("chunk_rows", [1, 3, 1024])
def test_token_logprobs_by_hand(shift: float, chunk_rows: int) -> None:
    ids = t([[2, 2], [0, 1]], torch.long)
    out = token_logprobs_from_logits(_logits(shift), ids, chunk_rows=chunk_rows)
    expected = [[math.log(5 / 8), math.log(1 / 8)], [math.log(1 / 8), math.log(1 / 3)]]
    # float32 spacing near 1000 is 6e-5: that much of the input is already rounded away
    assert_close(out, t(expected), atol=1e-4 if shift else 1e-6, rtol=0)


def test_token_logprobs_temperature_and_bf16() -> None:
    logits = t([[[0.0, 2.0]]])
    out = token_logprobs_from_logits(logits.bfloat16(), t([[1]], torch.long), temperature=2.0)
    assert out.dtype == torch.float32
    assert_close(out, t([[math.log(math.e / (1 + math.e))]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [0.0, 1000.0])
def test_entropy_by_hand(shift: float) -> None:
    out = entropy_from_logits(_logits(shift), chunk_rows=3)
    expected = t([[ENTROPY, ENTROPY], [ENTROPY, math.log(3)]])
    assert_close(out, expected, atol=1e-4 if shift else 1e-6, rtol=0)


def test_entropy_of_a_near_one_hot_is_zero_not_nan() -> None:
    out = entropy_from_logits(t([[[1000.0, 0.0, -1000.0]]]).bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fn", ["entropy", "logprobs"])
def test_chunked_checkpointed_gradients_match_unchunked_autograd(fn: str) -> None:
    logits = torch.randn(3, 5, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    weights = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(3, 5)

    def ours(z: torch.Tensor) -> torch.Tensor:
        if fn == "entropy":
            return entropy_from_logits(z, temperature=0.7, chunk_rows=4)
        return token_logprobs_from_logits(z, ids, temperature=0.7, chunk_rows=4)

    def plain(z: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(z / 0.7, dim=-1)
        if fn == "entropy":
            return -(logp.exp() * logp).sum(-1)
        return logp.gather(-1, ids[..., None]).squeeze(-1)

    grads = []
    for f in (ours, plain):
        z = logits.clone().requires_grad_()
        (f(z) * weights).sum().backward()
        grads.append(z.grad)
    assert_close(grads[0], grads[1])


def _bytes_saved_for_backward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, apart from x's own storage."""
    total = 0

    def pack(saved: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if saved.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            total += saved.numel() * saved.element_size()
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved):
        fn(x)
    return total


def test_logits_functions_keep_no_float32_copy_of_the_logits_for_backward() -> None:
    logits = torch.randn(4, 8, 1000, dtype=torch.bfloat16).requires_grad_()
    one_copy = logits.numel() * 4  # one float32 copy of the logits
    ids = torch.zeros(4, 8, dtype=torch.long)

    def plain(z: torch.Tensor) -> torch.Tensor:  # what the chunking saves us from
        z = z.float()
        return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)

    assert _bytes_saved_for_backward(plain, logits) >= one_copy  # the probe sees copies
    assert _bytes_saved_for_backward(lambda z: entropy_from_logits(z, chunk_rows=8), logits) == 0
    kept = _bytes_saved_for_backward(
        lambda z: token_logprobs_from_logits(z, ids, chunk_rows=8), logits
    )
    assert kept <= ids.numel() * 8  # at most the token ids


def test_nan_and_inf_in_padding_reach_neither_loss_nor_gradient() -> None:
    mask = t([[1, 0]])
    junk = [float("nan"), float("inf"), float("-inf")]
    values = t([[1.0, junk[1]]]).requires_grad_()
    loss, _ = value_loss(values, t([[0.0, junk[0]]]), t([[2.0, junk[2]]]), mask)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 2.25)  # clipped: (0.5 − 2)²
    assert torch.equal(values.grad, t([[0.0, 0.0]]))

    logprobs = t([[-1.0, junk[0]]]).requires_grad_()
    loss, metrics = ppo_policy_loss(logprobs, t([[-1.0, junk[1]]]), t([[1.0, junk[0]]]), mask)
    loss.backward()
    assert loss.item() == -1.0
    assert torch.equal(logprobs.grad, t([[-1.0, 0.0]]))
    assert metrics["actor/ppo_kl"] == 0.0
