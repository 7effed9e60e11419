"""Hugging Face transformers implementations of the inference roles, and their shared helpers.

`HFRolloutEngine` samples with `model.generate` (batched, KV cache, left padding) and records the
behaviour logprob of each sampled token on the fly, so no [B, T, V] score tensor is ever kept.
`HFTeacher` scores responses micro-batch by micro-batch and keeps only the gathered token
logprobs. The trainable roles (actor, critic) are in roles/hf_train.py.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.utils import logging as hf_logging

from distill_trainer.algorithm import token_logprobs_from_logits
from distill_trainer.batch import RolloutBatch
from distill_trainer.config import RoleConfig, RolloutConfig
from distill_trainer.roles.base import Rollouts, SamplingParams

log = logging.getLogger(__name__)
_Cfg = TypeVar("_Cfg", bound=RoleConfig)
# Per-load progress bars would interleave with the trainer's own progress bar.
hf_logging.disable_progress_bar()


def seed_everything(seed: int) -> None:
    """Seed Python and torch (CPU and CUDA) so sampling and data order repeat."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> str:
    """`auto` → cuda when this process sees a GPU, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def on_this_machine(cfg: _Cfg) -> _Cfg:
    """The config with its device resolved in the process that runs the role."""
    return dataclasses.replace(cfg, device=resolve_device(cfg.device))


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: RoleConfig, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
    """Load a model for a role: eval mode always (no dropout: logprobs must be reproducible)."""
    dtype = torch.float32 if cfg.train or cfg.device == "cpu" else torch.bfloat16
    model = auto_class.from_pretrained(cfg.model, dtype=dtype, **kwargs).to(cfg.device)
    model.eval()
    if not cfg.train:
        model.requires_grad_(False)
    return model


def autocast(device: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA (float32 master weights); nothing on CPU."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


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


class _SampledTokenLogprobs(LogitsProcessor):
    """Records log π(token) of each sampled token; must run after every other processor.

    At step k it sees the token sampled at step k−1 (the last column of input_ids), so it keeps
    one [N, V] log-softmax at a time and a list of [N] gathered values.
    """

    def __init__(self) -> None:
        self.previous: Tensor | None = None
        self.gathered: list[Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self._gather(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _gather(self, tokens: Tensor) -> None:
        assert self.previous is not None
        self.gathered.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, last_tokens: Tensor) -> Tensor:
        """[N, L] logprobs once generation is over (the last token is gathered here)."""
        self._gather(last_tokens)
        self.previous = None
        return torch.stack(self.gathered, dim=1)


def sampling_processors(
    sampling: SamplingParams,
) -> tuple[LogitsProcessorList, _SampledTokenLogprobs | None]:
    """Temperature and top-p as our own processors, then the logprob recorder after them
    (`generate` would append its built-in warpers after any custom processor)."""
    processors = LogitsProcessorList()
    if not sampling.greedy:
        if sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
    recorder = _SampledTokenLogprobs() if sampling.logprobs else None
    if recorder is not None:
        processors.append(recorder)
    return processors, recorder


def first_eos_mask(response_ids: Tensor, eos_ids: Tensor) -> Tensor:
    """[N, R] float: 1.0 up to and including each row's first EOS, 0.0 after it."""
    is_eos = torch.isin(response_ids, eos_ids).long()
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0
    return (~after_eos).float()


def truncated_rows(response_ids: Tensor, eos_ids: Tensor) -> Tensor:
    """[N] bool: the response has no EOS, i.e. generation stopped at max_new_tokens (vLLM's
    finish_reason "length"). An EOS in the last allowed position is a finished response."""
    return ~torch.isin(response_ids, eos_ids).any(dim=1)


class HFRolloutEngine:
    """Sampling with `transformers` generate; a vLLM engine later implements the same methods."""

    def __init__(self, cfg: RolloutConfig) -> None:
        seed_everything(cfg.seed)
        self.cfg = cfg = on_this_machine(cfg)
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_model(cfg)
        eos = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        eos.update(configured if isinstance(configured, list) else [configured])
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.pad_id = int(self.tokenizer.pad_token_id)
        # A checkpoint's generation_config (e.g. an instruct model's repetition_penalty or top_k)
        # would change the sampling distribution behind the actor's back: keep only the ids.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id
        )

    @torch.inference_mode()
    def generate(
        self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams
    ) -> Rollouts:
        step = self.cfg.generate_batch_size or len(prompt_token_ids)
        parts = [
            self._generate(prompt_token_ids[i : i + step], n, sampling)
            for i in range(0, len(prompt_token_ids), step)
        ]
        return Rollouts.concat(parts, self.pad_id)

    def _generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts:
        encoded = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.cfg.device)
        attention_mask = encoded["attention_mask"].to(self.cfg.device)
        processors, recorder = sampling_processors(sampling)
        # Explicit neutral values, so the model's own generation_config cannot add warpers.
        neutral = {} if sampling.greedy else {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not sampling.greedy,
            num_return_sequences=n,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            **neutral,
        )
        with autocast(self.cfg.device):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
            )
        response_ids = out[:, input_ids.shape[1] :]
        eos_ids = torch.tensor(self.eos_ids, device=out.device)
        response_mask = first_eos_mask(response_ids, eos_ids)
        logprobs = None
        if recorder is not None:
            logprobs = torch.where(response_mask.bool(), recorder.finish(response_ids[:, -1]), 0.0)
            logprobs = logprobs.cpu()
        return Rollouts(
            prompt_ids=input_ids.repeat_interleave(n, dim=0).cpu(),
            prompt_mask=attention_mask.repeat_interleave(n, dim=0).cpu(),
            response_ids=torch.where(response_mask.bool(), response_ids, self.pad_id).cpu(),
            response_mask=response_mask.cpu(),
            logprobs=logprobs,
            truncated=truncated_rows(response_ids, eos_ids).cpu(),
        )

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        self.model.load_state_dict(weights)


class HFTeacher:
    """A frozen model that only scores the student's responses."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.cfg = cfg = on_this_machine(cfg)
        self.model = load_model(cfg)

    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        return batch_token_logprobs(self.model, batch, self.cfg)
