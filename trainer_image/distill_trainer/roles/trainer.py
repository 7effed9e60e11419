"""The model-holding workers that score and train: teacher, actor (student), critic (gae only).

Forward helpers (`response_logits`, `batch_token_logprobs`) are shared by all three; the teacher
only scores the student's responses. The actor and the critic run the same optimisation schedule:
`ppoEpochs` passes over the step's batch, each split into mini-batches of ppoMiniBatchSize ×
rolloutN responses (ppoMiniBatchSize counts prompts; the responses are shuffled across prompts;
one optimizer step each), each mini-batch split into micro-batches whose gradients accumulate with
weights that make the sum equal the loss over the whole mini-batch.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModelForTokenClassification, PreTrainedModel

from distill_trainer.algorithm import (
    LossAgg,
    agg_loss,
    entropy_from_logits,
    ppo_policy_loss,
    rollout_is_weights,
    token_logprobs_from_logits,
    value_loss,
)
from distill_trainer.batch import RolloutBatch
from distill_trainer.checkpoint import CheckpointWriter
from distill_trainer.config import ActorConfig, CriticConfig, OptimConfig, RoleConfig
from distill_trainer.roles.base import LogprobOutput, Weights, bucketed, without_aliases
from distill_trainer.roles.models import (
    autocast,
    compute_dtype,
    load_model,
    load_tokenizer,
    on_this_machine,
    seed_everything,
)

log = logging.getLogger(__name__)


def micro_batches(batch: RolloutBatch, rows: int, device: str) -> Iterator[RolloutBatch]:
    for chunk in batch.chunks(rows):
        yield chunk.to(device)


def response_logits(model: PreTrainedModel, batch: RolloutBatch) -> Tensor:
    """[n, R, V] contiguous logits predicting each response token (columns P−1 … P+R−2).

    `logits_to_keep` with these positions makes the vocab projection run on them alone, so the
    result is its own contiguous tensor, not a slice of a larger one. The [n·R, V] reshapes of
    the chunked logprob and entropy passes are then views: with grad on, their checkpointed
    chunks keep these logits alive for backward, never a full copy of them.
    """
    width = batch.input_ids.shape[1]
    positions = torch.arange(
        width - batch.response_length - 1, width - 1, device=batch.input_ids.device
    )
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=positions,
        use_cache=False,
    )
    return out.logits


@torch.inference_mode()
def batch_token_logprobs(model: PreTrainedModel, batch: RolloutBatch, cfg: RoleConfig) -> Tensor:
    """[N, R] logprobs of the response tokens, micro-batch by micro-batch (only these are kept)."""
    parts = []
    for mb in micro_batches(batch, cfg.micro_batch_size, cfg.device):
        with autocast(cfg.device):
            logits = response_logits(model, mb)
        logprobs = token_logprobs_from_logits(logits, mb.response_ids, cfg.temperature)
        parts.append(torch.where(mb.response_mask.bool(), logprobs, 0.0).cpu())
    return torch.cat(parts)


class HFTeacher:
    """A frozen model that only scores the student's responses."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.cfg = cfg = on_this_machine(cfg)
        self.model = load_model(cfg)

    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        return batch_token_logprobs(self.model, batch, self.cfg)


# (micro-batch) -> (loss, metrics); the loss is the micro-batch's own aggregate.
LossFn = Callable[[RolloutBatch], tuple[Tensor, dict[str, float]]]


def _loss_weight(mb: RolloutBatch, mini: RolloutBatch, loss_agg: LossAgg) -> float:
    """Share of the mini-batch loss a micro-batch's aggregate stands for."""
    if loss_agg == LossAgg.TOKEN_MEAN:
        return mb.response_mask.sum().item() / max(mini.response_mask.sum().item(), 1.0)
    rows = (mb.response_mask.sum(-1) > 0).sum().item()
    return rows / max((mini.response_mask.sum(-1) > 0).sum().item(), 1)


class _Trainer:
    """The shared PPO schedule: epochs × shuffled mini-batches × accumulated micro-batches."""

    def __init__(
        self, model: Any, optim: OptimConfig, micro_batch_size: int, device: str, seed: int
    ):
        self.model, self.optim_cfg = model, optim
        self.micro_batch_size, self.device = micro_batch_size, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=optim.learning_rate, weight_decay=optim.weight_decay
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0  # run() calls so far: the version of the weights it leaves behind

    def mini_batches(self, batch: RolloutBatch) -> Iterator[RolloutBatch]:
        for _ in range(self.optim_cfg.ppo_epochs):
            order = torch.randperm(batch.size, generator=self.generator)
            for index in order.split(self.optim_cfg.mini_batch_size):
                yield batch.select(index)

    def run(self, batch: RolloutBatch, loss_fn: LossFn, prefix: str) -> dict[str, float]:
        """Optimise over the batch; returns metrics averaged over mini-batches."""
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        for mini in self.mini_batches(batch):
            self.optimizer.zero_grad(set_to_none=True)
            for mb in micro_batches(mini, self.micro_batch_size, self.device):
                weight = _loss_weight(mb, mini, self.optim_cfg.loss_agg)
                with autocast(self.device):
                    loss, metrics = loss_fn(mb)
                (loss * weight).backward()
                for key, value in metrics.items():
                    sums[key] += value * weight
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.optim_cfg.grad_clip))
            if math.isfinite(grad_norm):
                self.optimizer.step()
            else:
                log.warning("%s: non-finite grad norm, optimizer step skipped", prefix)
            sums[f"{prefix}/grad_norm"] += grad_norm
            steps += 1
        self.updates += 1
        metrics = {key: value / max(steps, 1) for key, value in sums.items()}
        metrics[f"{prefix}/lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics


class HFActor:
    """The student: logprobs, the PPO update, and its weights for the rollout engine."""

    def __init__(self, cfg: ActorConfig) -> None:
        assert cfg.optim is not None
        seed_everything(cfg.seed)
        self.cfg = cfg = on_this_machine(cfg)
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_model(cfg)
        self.trainer = _Trainer(self.model, cfg.optim, cfg.micro_batch_size, cfg.device, cfg.seed)
        self.checkpoints: CheckpointWriter | None = None

    @torch.no_grad()
    def compute_logprobs(self, batch: RolloutBatch, with_entropy: bool = False) -> LogprobOutput:
        """Token logprobs (and entropies) from one forward pass per micro-batch."""
        logprobs, entropies = [], []
        for mb in micro_batches(batch, self.cfg.micro_batch_size, self.cfg.device):
            with autocast(self.cfg.device):
                logits = response_logits(self.model, mb)
            mask = mb.response_mask.bool()
            lp = token_logprobs_from_logits(logits, mb.response_ids, self.cfg.temperature)
            logprobs.append(torch.where(mask, lp, 0.0).cpu())
            if with_entropy:
                ent = entropy_from_logits(logits, self.cfg.temperature)
                entropies.append(torch.where(mask, ent, 0.0).cpu())
        entropy = torch.cat(entropies) if with_entropy else None
        return LogprobOutput(logprobs=torch.cat(logprobs), entropy=entropy)

    def _loss(self, mb: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        assert mb.old_logprobs is not None and mb.advantages is not None
        assert cfg.optim is not None
        logits = response_logits(self.model, mb)
        logprobs = token_logprobs_from_logits(logits, mb.response_ids, cfg.temperature)
        advantages = mb.advantages
        if cfg.rollout_is_cap is not None and mb.rollout_logprobs is not None:
            advantages = advantages * rollout_is_weights(
                mb.old_logprobs, mb.rollout_logprobs, mb.response_mask, cfg.rollout_is_cap
            )
        loss, metrics = ppo_policy_loss(
            logprobs,
            mb.old_logprobs,
            advantages,
            mb.response_mask,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            clip_ratio_c=cfg.clip_ratio_c,
            loss_agg=cfg.optim.loss_agg,
        )
        if cfg.entropy_coeff > 0:
            entropy = entropy_from_logits(logits, cfg.temperature)
            loss = loss - cfg.entropy_coeff * agg_loss(
                entropy, mb.response_mask, cfg.optim.loss_agg
            )
        return loss, metrics

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        return self.trainer.run(batch, self._loss, "actor")

    def get_weights(self) -> Weights:
        dtype = compute_dtype(self.cfg.device)  # what the engines compute in: bf16 on GPU
        state = without_aliases(self.model.state_dict().items())
        named = ((name, t.detach().to(dtype)) for name, t in state)
        return Weights(version=self.trainer.updates, buckets=bucketed(named))

    def save(self, path: str) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def save_checkpoint(self, root: Path, step: int, keep: int, state: dict[str, Any]) -> Path:
        """Save, write trainer_state.json and prune, all in this process: on a cluster only the
        actor's pod has the disk the checkpoint lands on."""
        if self.checkpoints is None or self.checkpoints.root != root:
            self.checkpoints = CheckpointWriter(root, keep)
        return self.checkpoints.save(step, self.save, state)


class HFCritic:
    """V(s_t) per response token from the student's architecture with a scalar head."""

    def __init__(self, cfg: CriticConfig) -> None:
        assert cfg.optim is not None
        seed_everything(cfg.seed)
        self.cfg = cfg = on_this_machine(cfg)
        self.model = load_model(cfg, AutoModelForTokenClassification, num_labels=1)
        # A zero head starts every value at 0, the mean return of a fresh GRPO-like task.
        torch.nn.init.zeros_(self.model.score.weight)
        if self.model.score.bias is not None:
            torch.nn.init.zeros_(self.model.score.bias)
        self.trainer = _Trainer(self.model, cfg.optim, cfg.micro_batch_size, cfg.device, cfg.seed)

    def _values(self, mb: RolloutBatch) -> Tensor:
        out = self.model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            position_ids=mb.position_ids,
            use_cache=False,
        )
        # The value of the state before response token t sits at column P−1+t, like the logits.
        values = out.logits[:, -mb.response_length - 1 : -1, 0].float()
        return torch.where(mb.response_mask.bool(), values, 0.0)

    @torch.no_grad()
    def compute_values(self, batch: RolloutBatch) -> Tensor:
        parts = []
        for mb in micro_batches(batch, self.cfg.micro_batch_size, self.cfg.device):
            with autocast(self.cfg.device):
                parts.append(self._values(mb).cpu())
        return torch.cat(parts)

    def _loss(self, mb: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        assert mb.values is not None and mb.returns is not None and self.cfg.optim is not None
        return value_loss(
            self._values(mb),
            mb.values,
            mb.returns,
            mb.response_mask,
            clip=self.cfg.value_clip,
            loss_agg=self.cfg.optim.loss_agg,
        )

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        return self.trainer.run(batch, self._loss, "critic")
