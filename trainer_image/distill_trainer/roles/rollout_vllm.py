"""The vLLM rollout engine: paged KV cache, continuous batching, n samples per prompt request.

`VLLMRolloutEngine` implements the same `RolloutEngine` interface as the HF engine
(roles/rollout_hf.py) on `vllm.LLM`, imported only when the engine is built, so the operator
image and HF-only runs never import vLLM. It runs inside the process that owns it (the driver
in-process, a Ray actor of the rollout group on a cluster): `VLLM_ENABLE_V1_MULTIPROCESSING=0`
keeps vLLM's engine core in that process, so weight syncs hand tensors over without serialising.

Weights arrive after every update by one of two paths (`rollout.weightSync`, docs/spec.md):

- reload (CPU, a local GPU, and wherever nccl cannot run): `load_weights` gets the actor's
  `Weights` buckets (through Ray's object store on Ray) and `LLM.collective_rpc` runs
  `_reload_weights` on every worker, which calls `worker.model_runner.reload_weights(
  weights_iterator=...)` (vLLM's `model_loader/reload/inplace.py`: the model's own
  `load_weights`, so checkpoint names, fused qkv/gate-up projections and tensor-parallel sharding
  are handled by vLLM). The same RPC runs on CPU and GPU workers.
- nccl (a DistillJob's cluster: vLLM engines and the actor on GPUs of separate workers): the LLM
  is built with vLLM's `weight_transfer_config` (backend nccl), so each worker holds vLLM's
  `NCCLWeightTransferEngine`; actor rank 0 broadcasts from its GPU into the workers' GPUs and
  drives this engine through `init_weight_transfer` (once), then per sync
  `start_weight_update`, `update_weights`, `finish_weight_update` (roles/weight_transfer.py has
  the protocol). vLLM loads what arrives with the same layerwise reload as the reload path.

Either way the prefix cache is reset afterwards (its KV blocks were computed by the old weights)
and the engine takes the actor's weight version, which every rollout then carries.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AutoConfig, GenerationConfig

from distill_trainer.config import RolloutConfig
from distill_trainer.roles.base import (
    Rollouts,
    SamplingParams,
    Weights,
    replica_sampling_states,
)
from distill_trainer.roles.models import load_tokenizer, on_this_machine, seed_everything

log = logging.getLogger(__name__)

# Set before vLLM is imported; a value already in the environment wins.
VLLM_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in this process (see module doc)
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache on CPU; the default takes far more
}


def eos_token_ids(model: str, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus every EOS id of the model's generation config, sorted."""
    eos = {tokenizer.eos_token_id}
    try:
        configured = GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    eos.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in eos if i is not None)


@contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """vLLM's CPU worker drops torch to one thread and turns `torch.set_num_threads` into a
    no-op for the whole process; in-process the actor trains in that process, so undo both."""
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


@contextmanager
def _unbound_proxies_hidden() -> Iterator[None]:
    """Hide, while the engine starts, the modules whose globals are unbound werkzeug proxies.

    vLLM's CPU start-up (`triton_utils.dispatcher._rebind_kernels`) calls `hasattr` on every
    global of every loaded module; an unbound `LocalProxy` (flask's `request`, `g`, …, loaded by
    e.g. moto's S3 server in the same process) raises RuntimeError there, not AttributeError, and
    the engine fails to start. `type()` does not touch the proxy, so finding them is safe.
    """
    hidden = {
        name: module
        for name, module in list(sys.modules.items())
        if any(type(v).__name__ == "LocalProxy" for v in getattr(module, "__dict__", {}).values())
    }
    for name in hidden:
        del sys.modules[name]
    try:
        yield
    finally:
        sys.modules.update(hidden)


def _plain_cpu_linear() -> None:
    """Have vLLM's CPU linear layers run torch's linear on their parameters, not oneDNN handlers.

    A oneDNN handler is built from the weight once, at load; after an in-place reload its layer
    decoded with the old or freed weights (measured here: logprobs off by over 10 nats, tests
    check the sync), while torch's linear reads the parameters the reload writes into. vLLM
    reads this flag when it prepares each layer; on the tiny CPU models speed does not suffer.
    """
    import vllm._custom_ops as ops

    ops._supports_onednn = False


def _reload_weights(worker: Any, weights: Weights, tied: bool) -> int:
    """Runs on each vLLM worker: stream the buckets into the model in place; returns bytes."""
    named = [(name, t) for name, t in weights.items() if not (tied and name == "lm_head.weight")]
    worker.model_runner.reload_weights(weights_iterator=iter(named))
    if tied:
        _repack_tied_head(worker)
    return sum(t.numel() * t.element_size() for _, t in named)


def _repack_tied_head(worker: Any) -> None:
    """A tied lm_head shares the embedding's parameter, but on CPU vLLM packs its own copy of it
    for the logits GEMM when the model loads; `reload_weights` re-packs only layers it loaded
    weights into, so the lm_head is re-processed here (a no-op on GPU, which packs nothing).
    The weight-transfer lifecycle (start/finish_weight_update) needs no such step: the nccl
    receiver test matches the actor without it."""
    lm_head = getattr(worker.model_runner.get_model(), "lm_head", None)
    if hasattr(lm_head, "quant_method"):
        lm_head.quant_method.process_weights_after_loading(lm_head)


def llm_kwargs(cfg: RolloutConfig, hf_config: Any) -> dict[str, Any]:
    """`vllm.LLM`'s arguments for the rollout config (device already resolved)."""
    gpu = cfg.device == "cuda"
    context = getattr(hf_config, "max_position_embeddings", None)
    kwargs: dict[str, Any] = dict(
        model=cfg.model,
        dtype="bfloat16" if gpu else "float32",
        seed=cfg.seed,
        tensor_parallel_size=cfg.tensor_parallel_size if gpu else 1,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_model_len=min(filter(None, (cfg.max_model_len, context)), default=None),
        enable_prefix_caching=True,  # the n samples of a prompt share its KV blocks
        # vLLM's CPU runner cannot rewind a seeded request's generator (CPU generators have
        # no offset), which it does when a prefill is split across steps: so none is split.
        enable_chunked_prefill=gpu,
        enforce_eager=not gpu if cfg.enforce_eager is None else cfg.enforce_eager,
        # Logprobs after temperature and top-p: the distribution the tokens were drawn from.
        logprobs_mode="processed_logprobs",
        # Not the checkpoint's sampling defaults (repetition_penalty, top_k, ...): only ours.
        generation_config="vllm",
    )
    if cfg.weight_transfer is not None:  # each worker builds vLLM's receiving engine
        from vllm.config import WeightTransferConfig

        kwargs["weight_transfer_config"] = WeightTransferConfig(backend=cfg.weight_transfer)
    return kwargs


class VLLMRolloutEngine:
    """Sampling with vLLM; one `generate` call is one vLLM batch of all prompts × n."""

    def __init__(self, cfg: RolloutConfig) -> None:
        seed_everything(cfg.seed)
        self.cfg = cfg = on_this_machine(cfg)
        for key, value in VLLM_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from vllm import LLM

        self.tokenizer = load_tokenizer(cfg.model)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.eos_ids = eos_token_ids(cfg.model, self.tokenizer)
        hf_config = AutoConfig.from_pretrained(cfg.model)
        # vLLM ties lm_head to the embeddings itself: a tied model's lm_head.weight is not loaded.
        self.tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        with _keep_torch_threads(), _unbound_proxies_hidden():
            self.llm = self._start(LLM, cfg, hf_config)
        self.weight_version = 0  # the actor's initial weights, as loaded from cfg.model
        self.seeds = random.Random(cfg.seed)

    @staticmethod
    def _start(llm_class: Any, cfg: RolloutConfig, hf_config: Any) -> Any:
        if cfg.device != "cuda":
            _plain_cpu_linear()
        return llm_class(**llm_kwargs(cfg, hf_config))

    def _sampling_params(self, n: int, sampling: SamplingParams, seed: int) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams

        return VLLMSamplingParams(
            n=n,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=self.eos_ids,
            logprobs=0 if sampling.logprobs else None,  # 0: just the sampled token's
            seed=seed,  # vLLM gives sample j of the request seed + j
            detokenize=False,
        )

    @torch.inference_mode()
    def generate(
        self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams
    ) -> Rollouts:
        # vLLM refuses n > 1 when greedy: the n samples would be one sample n times anyway.
        per_request = 1 if sampling.greedy else n
        # A fresh seed per call (step), spaced so that no two samples of the call share one.
        step_seed = sampling.seed
        if step_seed is None:
            step_seed = self.seeds.randrange(2**31 - n * len(prompt_token_ids))
        params = [
            self._sampling_params(per_request, sampling, step_seed + i * n)
            for i in range(len(prompt_token_ids))
        ]
        prompts = [{"prompt_token_ids": ids} for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = [
            sample
            for output in outputs
            for sample in output.outputs
            for _ in range(n // per_request)
        ]
        return self._rollouts(prompt_token_ids, n, samples, sampling.logprobs)

    def _rollouts(
        self, prompts: list[list[int]], n: int, samples: list[Any], with_logprobs: bool
    ) -> Rollouts:
        """Left-padded prompts, right-padded responses, prompt-major rows (as the HF engine)."""
        rows, width = len(samples), max(len(s.token_ids) for s in samples)
        prompt_width = max(len(p) for p in prompts)
        prompt_ids = torch.full((rows, prompt_width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((rows, prompt_width), dtype=torch.long)
        response_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((rows, width))
        logprobs = torch.zeros((rows, width)) if with_logprobs else None
        for row, sample in enumerate(samples):
            prompt, length = prompts[row // n], len(sample.token_ids)
            prompt_ids[row, prompt_width - len(prompt) :] = torch.tensor(prompt)
            prompt_mask[row, prompt_width - len(prompt) :] = 1
            response_ids[row, :length] = torch.tensor(sample.token_ids)
            response_mask[row, :length] = 1.0
            if logprobs is not None:
                steps = zip(sample.logprobs, sample.token_ids, strict=True)
                picked = [step[token].logprob for step, token in steps]
                logprobs[row, :length] = torch.tensor(picked)
        return Rollouts(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logprobs=logprobs,
            truncated=torch.tensor([s.finish_reason == "length" for s in samples]),
            weight_version=self.weight_version,
        )

    def load_weights(self, weights: Weights) -> dict[str, float]:
        """The reload path: reload in place on every worker, then `_synced`."""
        started = time.perf_counter()
        moved = self.llm.collective_rpc(_reload_weights, args=(weights, self.tied))
        self._synced(weights.version)
        seconds = time.perf_counter() - started
        log.debug("vLLM weights v%d loaded in %.3fs", weights.version, seconds)
        return {"weight_sync/bytes": float(sum(moved))}

    def _synced(self, version: int) -> None:
        """Drop the prefix cache the old weights built; rollouts now carry `version`."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache: KV blocks of the old weights in use")
        self.weight_version = version

    # The nccl path (roles/weight_transfer.py): actor rank 0 calls these on every replica.

    def weight_transfer_ranks(self) -> int:
        """Ranks this engine's workers take in the weight-transfer group (TP × PP)."""
        return int(self.llm.llm_engine.vllm_config.parallel_config.world_size)

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the sender's NCCL group (blocks until every rank has joined)."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Receive the broadcast described by `update_info` (names, dtype names, shapes)."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))

    def finish_weight_update(self, version: int) -> None:
        """vLLM finalises the layerwise reload; then `_synced(version)`, as after a reload."""
        self.llm.finish_weight_update(weight_version=str(version))
        self._synced(version)

    def sampling_state(self) -> dict[str, Any]:
        """Where the per-step seeds stand: vLLM's samples are a function of the request seeds."""
        return {"seeds": self.seeds.getstate()}

    def load_sampling_state(self, state: dict[str, Any]) -> None:
        self.seeds.setstate(replica_sampling_states(state, 1)[0]["seeds"])
