"""The model-holding workers that score and train: teacher, actor (student), critic (gae only).

One worker body for every backend: in-process it holds the whole model; in a Ray group
(roles/group.py) each rank holds FSDP2 shards (roles/fsdp.py) and runs the same code, with its
share of the rows. Per micro-batch the forward runs on a token budget (batch.py) and response
logprobs come from the last hidden states a chunk at a time (`ResponseScorer`), so memory grows
with tokens, never with rows × the longest row × the vocabulary.

The actor and the critic run the same optimisation schedule: `ppoEpochs` passes over the step's
batch, each split into mini-batches of ppoMiniBatchSize × rolloutN responses (ppoMiniBatchSize
counts prompts; the responses are shuffled across prompts; one optimizer step each), each
mini-batch split into micro-batches whose gradients accumulate with weights that make the sum
equal the loss over the whole mini-batch.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, PreTrainedModel

from distill_api.v1alpha1 import LoraConfig
from distill_trainer.algorithm import (
    TOKEN_MEAN_METRICS,
    LossAgg,
    agg_loss,
    kl_loss,
    lr_factor,
    ppo_policy_loss,
    rollout_is_weights,
    token_logprobs_from_hidden,
    value_loss,
)
from distill_trainer.batch import (
    RolloutBatch,
    balanced_shares,
    filler_batch,
    micro_batch_rows,
    prompt_lengths,
    sequence_lengths,
    trimmed,
)
from distill_trainer.checkpoint.state import (
    capture_torch_rng,
    export_adapter,
    export_pretrained,
    read_role_state,
    restore_torch_rng,
    write_role_state,
)
from distill_trainer.config import ActorConfig, CriticConfig, OptimConfig, RoleConfig
from distill_trainer.roles import fsdp
from distill_trainer.roles.base import LogprobOutput, Weights, bucketed
from distill_trainer.roles.lora import (
    ADAPTER,
    adapter_tensors,
    apply_lora,
    has_dropout,
    lora_scaling,
    merged_named_tensors,
)
from distill_trainer.roles.models import (
    autocast,
    compute_dtype,
    load_tokenizer,
    on_this_machine,
    seed_everything,
)

log = logging.getLogger(__name__)

# Full (unsharded) tensors on the CPU: the same checkpoint for one process and an FSDP2 group.
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def place_model(
    model: Any, hf_model: PreTrainedModel, cfg: RoleConfig, dropout: bool = False
) -> Any:
    """The loaded (CPU) model on the role's device: activation checkpointing when asked, FSDP2
    shards when the worker is in a process group. `dropout`: the model updates in train mode."""
    layers = hf_model.base_model.layers  # the decoder blocks: one FSDP unit each
    return fsdp.shard_model(
        model, layers, cfg.device, cfg.train, cfg.gradient_checkpointing, dropout
    )


def load_on_cpu(cfg: RoleConfig, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
    """`load_model`'s dtype (bf16 for frozen roles on CUDA) and mode, but loaded on the CPU:
    sharding then moves only this rank's shard to the GPU."""
    dtype = torch.float32 if cfg.train or cfg.device == "cpu" else torch.bfloat16
    model = auto_class.from_pretrained(cfg.model, dtype=dtype, **kwargs)
    model.eval()  # no dropout: logprobs must be reproducible
    if not cfg.train:
        model.requires_grad_(False)
    return model


def micro_batches(
    batch: RolloutBatch, cfg: RoleConfig
) -> Iterator[tuple[Tensor | None, RolloutBatch]]:
    """(row indices, micro-batch on the role's device), under the token budget of batch.py.

    Every rank of a sharded group yields as many micro-batches as the rank with the most
    (each forward is a collective): the missing ones are filler rows with indices None.
    """
    groups = []
    if batch.size:
        groups = micro_batch_rows(
            prompt_lengths(batch),
            batch.response_lengths,
            cfg.micro_batch_size,
            cfg.max_tokens_per_micro_batch,
        )
    # Agreed before the first forward: a collective between two ranks' forwards would pair
    # with the other rank's all-gather.
    count = fsdp.max_over_ranks(len(groups))
    for rows in groups:
        index = torch.tensor(rows, dtype=torch.long)
        yield index, trimmed(batch.select(index)).to(cfg.device)
    for _ in range(count - len(groups)):
        yield None, filler_batch(batch).to(cfg.device)


class ResponseScorer(torch.nn.Module):
    """A causal LM whose forward returns the response tokens' logprobs (and entropies).

    The logits come from the last hidden states a chunk of tokens at a time
    (`token_logprobs_from_hidden`), so no [n, R, V] tensor exists, in the forward or for
    backward. It is the FSDP root: the embeddings, final norm and head are gathered for it.
    """

    def __init__(self, lm: PreTrainedModel, temperature: float, chunk_tokens: int) -> None:
        super().__init__()
        self.lm, self.temperature, self.chunk_tokens = lm, temperature, chunk_tokens

    def forward(self, mb: RolloutBatch, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        out = self.lm.get_decoder()(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            position_ids=mb.position_ids,
            use_cache=False,
        )
        # Columns P−1 … P+R−2 predict the response tokens (next-token prediction).
        hidden = out.last_hidden_state[:, -mb.response_length - 1 : -1]
        return token_logprobs_from_hidden(
            hidden,
            self.lm.get_output_embeddings(),
            mb.response_ids,
            self.temperature,
            self.chunk_tokens,
            with_entropy,
        )


def load_scorer(cfg: RoleConfig, lora: LoraConfig | None = None) -> ResponseScorer:
    """The role's model as a ResponseScorer, placed and sharded; with `lora`, peft adapters are
    added first (peft freezes the base weights), so FSDP shards the adapted model."""
    hf_model = load_on_cpu(cfg)
    lm = apply_lora(hf_model, lora) if lora is not None else hf_model
    scorer = ResponseScorer(lm, cfg.temperature, cfg.logprob_chunk_tokens)
    return place_model(scorer, hf_model, cfg, dropout=has_dropout(lora))


@torch.no_grad()
def score_batch(
    scorer: ResponseScorer, batch: RolloutBatch, cfg: RoleConfig, entropy: bool
) -> LogprobOutput:
    """[N, R] logprobs (and entropies) of the response tokens, micro-batch by micro-batch; 0.0 on
    padding."""
    logprobs = torch.zeros(batch.response_mask.shape)
    entropies = torch.zeros(batch.response_mask.shape) if entropy else None
    for rows, mb in micro_batches(batch, cfg):
        with autocast(cfg.device):
            lp, ent = scorer(mb, with_entropy=entropy)
        if rows is None:
            continue
        mask, width = mb.response_mask.bool(), mb.response_length
        logprobs[rows, :width] = torch.where(mask, lp, 0.0).cpu()
        if entropies is not None and ent is not None:
            entropies[rows, :width] = torch.where(mask, ent, 0.0).cpu()
    return LogprobOutput(logprobs=logprobs, entropy=entropies)


class HFTeacher:
    """A frozen model that only scores the student's responses (bf16 on CUDA, no grad)."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.cfg = cfg = on_this_machine(cfg)
        self.scorer = load_scorer(cfg)
        self.model = self.scorer.lm

    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        return score_batch(self.scorer, batch, self.cfg, entropy=False).logprobs


# (micro-batch) -> (loss, metrics); the loss is the micro-batch's own aggregate.
LossFn = Callable[[RolloutBatch], tuple[Tensor, dict[str, float]]]


def _token_share(mb: RolloutBatch, mini: RolloutBatch) -> float:
    return mb.response_mask.sum().item() / max(mini.response_mask.sum().item(), 1.0)


def _loss_weight(mb: RolloutBatch, mini: RolloutBatch, loss_agg: LossAgg) -> float:
    """Share of the mini-batch loss a micro-batch's aggregate stands for."""
    if loss_agg == LossAgg.TOKEN_MEAN:
        return _token_share(mb, mini)
    rows = (mb.response_mask.sum(-1) > 0).sum().item()
    return rows / max((mini.response_mask.sum(-1) > 0).sum().item(), 1)


class _Trainer:
    """The shared PPO schedule: epochs × shuffled mini-batches × accumulated micro-batches.

    In a sharded group every rank draws the same mini-batches (same seed) and trains on its
    token-balanced share of each; micro-batch weights are shares of the whole mini-batch and the
    shards' gradients are summed, so the update equals one process training on it all.
    """

    def __init__(self, model: Any, optim: OptimConfig, cfg: RoleConfig):
        self.model, self.optim_cfg, self.cfg = model, optim, cfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=optim.learning_rate, weight_decay=optim.weight_decay
        )
        # One scheduler step per run() (per training step, as verl); its state sits beside the
        # optimizer's for checkpoints.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step,
                optim.total_steps,
                optim.lr_warmup_steps,
                optim.lr_schedule,
                optim.min_lr_ratio,
            ),
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.updates = 0  # run() calls so far: the version of the weights it leaves behind

    def mini_batches(self, batch: RolloutBatch) -> Iterator[RolloutBatch]:
        for _ in range(self.optim_cfg.ppo_epochs):
            order = torch.randperm(batch.size, generator=self.generator)
            for index in order.split(self.optim_cfg.mini_batch_size):
                yield batch.select(index)

    def run(self, batch: RolloutBatch, loss_fn: LossFn, prefix: str) -> dict[str, float]:
        """Optimise over the batch; returns metrics averaged over mini-batches (and ranks)."""
        sums: dict[str, float] = defaultdict(float)
        grad_norms = []
        for mini in self.mini_batches(batch):
            shares = balanced_shares(sequence_lengths(mini), fsdp.world_size())
            share = mini.select(torch.tensor(shares[fsdp.rank()], dtype=torch.long))
            self.optimizer.zero_grad(set_to_none=True)
            for rows, mb in micro_batches(share, self.cfg):
                weight = 0.0 if rows is None else _loss_weight(mb, mini, self.optim_cfg.loss_agg)
                tokens = 0.0 if rows is None else _token_share(mb, mini)
                with autocast(self.cfg.device):
                    loss, metrics = loss_fn(mb)
                # FSDP averages the ranks' gradients; the weights already split the mini-batch
                # between ranks, so the sum is wanted (gloo has no pre-scaled reduce-scatter).
                (loss * (weight * fsdp.world_size())).backward()
                for key, value in metrics.items():
                    sums[key] += value * (tokens if key in TOKEN_MEAN_METRICS else weight)
            grad_norm = fsdp.clip_grad_norm(self.params, self.optim_cfg.grad_clip)
            if math.isfinite(grad_norm):
                self.optimizer.step()
            else:
                log.warning("%s: non-finite grad norm, optimizer step skipped", prefix)
            grad_norms.append(grad_norm)
        self.updates += 1
        keys = sorted(sums)
        totals = fsdp.sum_over_ranks(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
        steps = max(len(grad_norms), 1)
        metrics = {key: float(total) / steps for key, total in zip(keys, totals, strict=True)}
        metrics[f"{prefix}/grad_norm"] = sum(grad_norms) / steps
        metrics[f"{prefix}/lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything the next update depends on: weights, optimizer moments, the LR schedule's
        position, the shuffling generator, the update count, and every rank's torch RNG (dropout,
        when on: the ranks' streams drift apart, as their shares of a mini-batch differ).
        Collective under FSDP: every rank calls it."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=FULL_STATE)
        return {
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "updates": self.updates,
            "rng_by_rank": fsdp.gather_objects(capture_torch_rng()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state_dict()` was taken (every rank calls it)."""
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=FULL_STATE,
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])
        by_rank = state["rng_by_rank"] if "rng_by_rank" in state else [state["rng"]]
        if len(by_rank) != fsdp.world_size():
            log.warning(
                "checkpoint holds the RNG of %d ranks, this group has %d: dropout masks after the "
                "resume differ from an uninterrupted run",
                len(by_rank), fsdp.world_size(),
            )  # fmt: skip
        restore_torch_rng(by_rank[min(fsdp.rank(), len(by_rank) - 1)])


class HFActor:
    """The student: logprobs, the PPO update, and its weights for the rollout engine."""

    def __init__(self, cfg: ActorConfig) -> None:
        assert cfg.optim is not None
        seed_everything(cfg.seed)
        self.cfg = cfg = on_this_machine(cfg)
        self.tokenizer = load_tokenizer(cfg.model)
        self.scorer = load_scorer(cfg, cfg.lora)  # LoRA: only the adapters train
        self.model = self.scorer.lm
        self.trainer = _Trainer(self.model, cfg.optim, cfg)
        self.optimizer = self.trainer.optimizer

    def compute_logprobs(self, batch: RolloutBatch, with_entropy: bool = False) -> LogprobOutput:
        """Token logprobs (and entropies) from one forward pass per micro-batch."""
        return score_batch(self.scorer, batch, self.cfg, with_entropy)

    def _loss(self, mb: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        assert mb.old_logprobs is not None and mb.advantages is not None
        assert cfg.optim is not None
        logprobs, entropy = self.scorer(mb, with_entropy=cfg.entropy_coeff > 0)
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
        if entropy is not None:
            loss = loss - cfg.entropy_coeff * agg_loss(
                entropy, mb.response_mask, cfg.optim.loss_agg
            )
        if cfg.kl_loss is not None:
            assert mb.teacher_logprobs is not None, "klLoss needs the teacher's logprobs"
            kl, kl_metrics = kl_loss(
                logprobs,
                mb.teacher_logprobs,
                mb.response_mask,
                cfg.kl_loss.estimator,
                cfg.optim.loss_agg,
            )
            loss = loss + cfg.kl_loss.coef * kl
            metrics.update(kl_metrics)
        return loss, metrics

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        if has_dropout(self.cfg.lora):
            self.model.train()  # dropout only while updating; logprobs stay deterministic
        try:
            return self.trainer.run(batch, self._loss, "actor")
        finally:
            self.model.eval()

    def named_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
        """The student's full weights under the base model's names, LoRA adapters merged in: on
        rank 0 (the other ranks yield nothing, but must drain it: each tensor is gathered)."""
        named = fsdp.full_named_tensors(self.model, dtype, aliases=False)
        if self.cfg.lora is None:
            return named
        return merged_named_tensors(named, lora_scaling(self.cfg.lora))

    def get_weights(self) -> Weights:
        """The full weights gathered from the shards, tensor by tensor, in the engines' compute
        dtype (bf16 on GPU), tied aliases dropped (engines tie them again), in buckets; on ranks
        other than 0 the buckets are empty (rank 0's payload is the one)."""
        named = self.named_weights(compute_dtype(self.cfg.device))
        return Weights(version=self.trainer.updates, buckets=bucketed(named))

    def init_weight_transfer(self, engines: list[Any]) -> None:
        """Join vLLM's NCCL weight transfer with the rollout engines' Ray actors (the nccl path of
        roles/weight_transfer.py); every rank calls it, rank 0 becomes the sender."""
        from distill_trainer.roles.weight_transfer import ActorWeightSource, WeightSender

        lora, merge = self.cfg.lora, None
        if lora is not None:
            merge = lambda named: merged_named_tensors(named, lora_scaling(lora))  # noqa: E731
        dtype = compute_dtype(self.cfg.device)
        source = ActorWeightSource(self.model, dtype, self.cfg.device, merge)
        self.weight_sender = WeightSender(source, engines)

    def send_weights(self) -> dict[str, float]:
        """Broadcast the current weights to the engines (after `init_weight_transfer`), as the
        version `get_weights` would carry; every rank calls it."""
        return self.weight_sender.send(self.trainer.updates)

    def save_checkpoint(self, uri: str) -> dict[str, int]:
        """Write `<uri>/actor/` (student, tokenizer, optimizer and trainer state; under LoRA the
        peft model with its adapters); returns the files written. Every rank calls it; rank 0
        writes."""
        state = self.trainer.state_dict()
        return write_role_state(uri, "actor", self.model, state, self.tokenizer)

    def load_checkpoint(self, uri: str) -> None:
        self.trainer.load_state_dict(read_role_state(uri, "actor"))

    def export_model(self, uri: str) -> None:
        """The student in Hugging Face format (save_pretrained + tokenizer) at `uri`; under LoRA
        the merged model there and its adapters (peft format) in `<uri>/adapter/`."""
        full = dict(fsdp.full_named_tensors(self.model, None))  # rank 0 holds it; all gather
        if self.cfg.lora is None:
            export_pretrained(uri, self.model, full, self.tokenizer)
            return
        merged = dict(merged_named_tensors(full.items(), lora_scaling(self.cfg.lora)))
        export_pretrained(uri, self.model.get_base_model(), merged, self.tokenizer)
        config = self.model.peft_config[ADAPTER]
        adapter = f"{uri.rstrip('/')}/adapter"
        export_adapter(adapter, config, adapter_tensors(full.items()), self.tokenizer)


class HFCritic:
    """V(s_t) per response token from the student's architecture with a scalar head."""

    def __init__(self, cfg: CriticConfig) -> None:
        assert cfg.optim is not None
        seed_everything(cfg.seed)
        self.cfg = cfg = on_this_machine(cfg)
        model = load_on_cpu(cfg, AutoModelForTokenClassification, num_labels=1)
        # A zero head starts every value at 0, the mean return of a fresh GRPO-like task.
        torch.nn.init.zeros_(model.score.weight)
        if model.score.bias is not None:
            torch.nn.init.zeros_(model.score.bias)
        self.model = place_model(model, model, cfg)
        self.trainer = _Trainer(self.model, cfg.optim, cfg)
        self.optimizer = self.trainer.optimizer

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
        values = torch.zeros(batch.response_mask.shape)
        for rows, mb in micro_batches(batch, self.cfg):
            with autocast(self.cfg.device):
                part = self._values(mb).cpu()
            if rows is not None:
                values[rows, : mb.response_length] = part
        return values

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

    def save_checkpoint(self, uri: str) -> dict[str, int]:
        """Write `<uri>/critic/`; returns the files written (every rank calls it)."""
        return write_role_state(uri, "critic", self.model, self.trainer.state_dict())

    def load_checkpoint(self, uri: str) -> None:
        self.trainer.load_state_dict(read_role_state(uri, "critic"))
