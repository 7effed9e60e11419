"""The Hugging Face `generate` rollout engine.

`HFRolloutEngine` samples with `model.generate` (batched, KV cache, left padding) and records the
behaviour logprob of each sampled token on the fly, so no [B, T, V] score tensor is ever kept.
The vLLM engine (roles/rollout_vllm.py) implements the same `RolloutEngine` interface.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from distill_trainer.checkpoint.state import capture_torch_rng, restore_torch_rng
from distill_trainer.config import RolloutConfig
from distill_trainer.roles.base import (
    Rollouts,
    SamplingParams,
    Weights,
    replica_sampling_states,
    unaliased_state,
)
from distill_trainer.roles.models import (
    autocast,
    load_model,
    load_tokenizer,
    on_this_machine,
    seed_everything,
)

log = logging.getLogger(__name__)


class _SampledTokenLogprobs(LogitsProcessor):
    """Records log π(token) of each sampled token and the entropy of the distribution it was
    drawn from; must run after every other processor.

    At step k it sees the token sampled at step k−1 (the last column of input_ids), so it keeps
    one [N, V] log-softmax at a time and lists of [N] values.
    """

    def __init__(self) -> None:
        self.previous: Tensor | None = None
        self.gathered: list[Tensor] = []
        self.entropies: list[Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self._gather(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        # H = −Σ p log p; a token the warpers removed has p = 0 and log p = −inf: it adds 0.
        plogp = self.previous.exp() * self.previous
        self.entropies.append(-torch.nan_to_num(plogp, nan=0.0).sum(-1))
        return scores

    def _gather(self, tokens: Tensor) -> None:
        assert self.previous is not None
        self.gathered.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, last_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """[N, L] logprobs and entropies once generation is over (the last token is gathered
        here)."""
        self._gather(last_tokens)
        self.previous = None
        return torch.stack(self.gathered, dim=1), torch.stack(self.entropies, dim=1)


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
    """Sampling with `transformers` generate."""

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
        self.weight_version = 0  # the actor's initial weights
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
        with self._stream(sampling.seed):
            parts = [
                self._generate(prompt_token_ids[i : i + step], n, sampling)
                for i in range(0, len(prompt_token_ids), step)
            ]
        return Rollouts.concat(parts, self.pad_id)

    @contextlib.contextmanager
    def _stream(self, seed: int | None) -> Iterator[None]:
        """`generate` samples from the global torch generators: with a seed, from a fork of them
        seeded so, which is dropped afterwards."""
        if seed is None:
            yield
            return
        on_cuda = torch.device(self.cfg.device).type == "cuda"
        with torch.random.fork_rng(devices=None if on_cuda else []):
            # On CPU the CPU generator alone: torch.manual_seed would reseed CUDA's too, which
            # fork_rng(devices=[]) does not restore.
            (torch.manual_seed if on_cuda else torch.default_generator.manual_seed)(seed)
            yield

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
        logprobs = entropy = None
        if recorder is not None:
            logprobs, entropy = recorder.finish(response_ids[:, -1])
            logprobs = torch.where(response_mask.bool(), logprobs, 0.0).cpu()
            entropy = torch.where(response_mask.bool(), entropy, 0.0).cpu()
        return Rollouts(
            prompt_ids=input_ids.repeat_interleave(n, dim=0).cpu(),
            prompt_mask=attention_mask.repeat_interleave(n, dim=0).cpu(),
            response_ids=torch.where(response_mask.bool(), response_ids, self.pad_id).cpu(),
            response_mask=response_mask.cpu(),
            logprobs=logprobs,
            entropy=entropy,
            truncated=truncated_rows(response_ids, eos_ids).cpu(),
            weight_version=self.weight_version,
        )

    def load_weights(self, weights: Weights) -> dict[str, float]:
        """Copy the tensors in; only a tied alias (lm_head.weight) may be absent."""
        result = self.model.load_state_dict(dict(weights.items()), strict=False)
        needed = dict(unaliased_state(self.model))
        missing = [name for name in result.missing_keys if name in needed]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights do not match the rollout model: missing {missing}, "
                f"unexpected {result.unexpected_keys}"
            )
        self.weight_version = weights.version
        return {"weight_sync/bytes": float(weights.nbytes)}

    def sampling_state(self) -> dict[str, Any]:
        """`generate` samples from this process's global torch generators."""
        return capture_torch_rng()

    def load_sampling_state(self, state: dict[str, Any]) -> None:
        restore_torch_rng(replica_sampling_states(state, 1)[0])
