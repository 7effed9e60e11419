"""Helpers every role shares: seeding, device choice, tokenizer and model loading, autocast.

Rollout engines (roles/rollout_hf.py, roles/rollout_vllm.py) and the training workers
(roles/trainer.py) all load through these, so a dtype or device rule is written once.
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from distill_trainer.config import RoleConfig

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


def compute_dtype(device: str) -> torch.dtype:
    """What inference runs in: bf16 on CUDA, float32 on CPU (slow bf16 kernels there). Weights
    travel to the rollout engines in it, so a GPU sync moves half the bytes of float32."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: RoleConfig, auto_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
    """Load a model for a role: eval mode always (no dropout: logprobs must be reproducible)."""
    dtype = torch.float32 if cfg.train else compute_dtype(cfg.device)
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
