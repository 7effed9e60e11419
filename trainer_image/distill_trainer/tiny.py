"""Tiny models built locally (no download): a character tokenizer, small Qwen2 models, and SFT.

They stand in for real checkpoints in the demo and in tests. Everything saved with
`save_pretrained` loads back with `AutoTokenizer` / `AutoModelForCausalLM`, so a directory from
`build_sft_model` works as `student.model` or `teacher.model` in a DistillJob. Student and teacher
share one tokenizer (the KL between them is per token, so their vocabularies must be identical).

The tokenizer is Qwen2's byte-level BPE with no merges and an alphabet of the 95 printable ASCII
characters: one token per character; other characters are dropped (the tiny models only ever see
arithmetic). A small vocabulary matters more than it seems: a briefly trained model spreads
leftover probability over every token it knows, and sampling at temperature 1 then emits junk.
It has to be a `Qwen2Tokenizer` because transformers 5 rebuilds the pre-tokenizer of whatever it
loads from a qwen2 checkpoint directory as Qwen2's; a differently built tokenizer would load back
splitting text differently. On top of the characters: pad/bos/eos, the chat roles, and
`\\boxed{`, which every answer ends with: one token instead of seven keeps responses short, and
generation on CPU is dominated by the number of decode steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

from distill_trainer.data import PromptRecord, last_boxed

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
BOXED = "\\boxed{"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Bump when the artefacts' recipe changes without a change to their config, to invalidate caches.
RECIPE_VERSION = 1


def build_tokenizer() -> Qwen2Tokenizer:
    """A character-level tokenizer (printable ASCII) with chat roles, pad/bos/eos, a chat template.

    Ids: the specials, then `\\boxed{`, then the characters in ASCII order.
    """
    byte_symbols = bytes_to_unicode()  # the byte-level alphabet Qwen2's pre-tokenizer emits
    chars = [byte_symbols[b] for b in range(32, 127)]
    tokens = [PAD, BOS, EOS, *ROLE_TOKENS, BOXED, *chars]
    tokenizer = Qwen2Tokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=[],
        unk_token=None,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens=list(ROLE_TOKENS),
    )
    tokenizer.add_tokens([BOXED])
    return tokenizer


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of a tiny Qwen2 decoder.

    The head size is hidden_size / num_heads (vLLM's Qwen2 derives it so, ignoring a config's
    `head_dim`), and the defaults make it 64: vLLM's CPU attention accepts 32, 64, 80, … but not
    the 16 of four heads over 64 dims, and the demo runs on either rollout engine.
    """

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 1
    num_kv_heads: int = 1
    intermediate_size: int = 192
    max_positions: int = 256


def build_model(
    tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig, seed: int = 0
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2ForCausalLM over `tokenizer`'s vocabulary (float32)."""
    torch.manual_seed(seed)
    hf_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(hf_config).float()


def num_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- SFT


@dataclass(frozen=True)
class SftConfig:
    """Supervised fine-tuning on (prompt, response) pairs; AdamW, linear warmup, then cosine
    decay to 10% (or a constant rate: a run cut short, like an early checkpoint of a long one)."""

    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    cosine: bool = True
    seed: int = 0


def sft_response(record: PromptRecord) -> str:
    """The response the SFT models learn for a record: a short chain of thought, then the box.

    For an arithmetic chain of + and − ("3 + 4 + 7 + 2") the chain is the running value after
    each operation but the last, comma-separated ("7,14,\\boxed{16}"): each step is one small
    fact, so a tiny model learns it quickly, and a mistake shows at the token where it happens
    (which is what the teacher's per-token KL can point at and a sequence reward cannot).
    Anything else gets just the boxed ground truth.
    """
    operands = record.extra_info.get("operands") or []
    operators = record.extra_info.get("operators") or []
    if len(operands) < 3 or not set(operators) <= {"+", "-"}:
        return f"{BOXED}{record.ground_truth}}}"
    running, steps = operands[0], []
    for op, value in zip(operators[:-1], operands[1:-1], strict=True):
        running = running + value if op == "+" else running - value
        steps.append(f"{running},")
    return f"{''.join(steps)}{BOXED}{record.ground_truth}}}"


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[PromptRecord]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + eos) per record; the prompt is rendered by the chat template."""
    pairs = []
    for record in records:
        prompt = tokenizer.apply_chat_template(
            record.messages, add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(sft_response(record), add_special_tokens=False)
        pairs.append((prompt_ids, [*answer_ids["input_ids"], tokenizer.eos_token_id]))
    return pairs


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids/attention_mask, and labels that score only the response tokens."""
    length = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, (prompt, response) in enumerate(pairs):
        n = len(prompt) + len(response)
        ids[row, :n] = torch.tensor(prompt + response)
        labels[row, len(prompt) : n] = torch.tensor(response)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lr_factor(step: int, config: SftConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if not config.cosine:
        return 1.0
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def sft(
    model: PreTrainedModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    config: SftConfig,
    pad_id: int,
) -> list[float]:
    """Train `model` in place on the response tokens of `pairs`; returns the loss of every step."""
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    model.train()
    losses = []
    for _ in range(config.steps):
        batch = collate(rng.sample(list(pairs), min(config.batch_size, len(pairs))), pad_id)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def greedy_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    max_new_tokens: int = 8,
    batch_size: int = 256,
) -> list[str]:
    """Greedy completions of the records' chat prompts (left-padded batches, KV cache)."""
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
        for r in records
    ]
    outputs: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = generated[:, batch["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    return outputs


def exact_boxed_accuracy(responses: Sequence[str], records: Sequence[PromptRecord]) -> float:
    """Share of responses whose last \\boxed{} equals the ground truth string exactly."""
    hits = [last_boxed(r) == rec.ground_truth for r, rec in zip(responses, records, strict=True)]
    return sum(hits) / max(1, len(hits))


# ----------------------------------------------------------------------------------------- cache


def config_key(**parts: object) -> str:
    """A short stable hash of the artefact's recipe (dataclasses are hashed field by field)."""
    plain = {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in parts.items()}
    text = json.dumps({"recipe": RECIPE_VERSION, **plain}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_sft_model(
    cache_dir: Path,
    name: str,
    model_config: TinyModelConfig,
    sft_config: SftConfig,
    records: Sequence[PromptRecord],
    data_key: str,
    base: Path | None = None,
) -> Path:
    """Build, SFT and save a tiny model (with the shared tokenizer) under `cache_dir`, or reuse
    the saved one when the same recipe was built before. Returns the model directory.

    `data_key` identifies the SFT records (e.g. the hash of the data recipe) so a change of data
    invalidates the cache without hashing every record. `base`: fine-tune that saved model (a
    directory this function returned, so its name holds its own recipe's hash) instead of a new
    one of `model_config`'s shape.
    """
    base_key = None if base is None else Path(base).resolve().name
    key = config_key(model=model_config, sft=sft_config, data=data_key, base=base_key)
    out = Path(cache_dir) / f"{name}-{key}"
    if (out / "config.json").is_file():
        log.info("reusing %s from %s", name, out)
        return out
    tokenizer = build_tokenizer()
    if base is None:
        model = build_model(tokenizer, model_config, seed=sft_config.seed)
    else:
        model, _ = load(base)
    losses = sft(model, encode_pairs(tokenizer, records), sft_config, tokenizer.pad_token_id)
    log.info(
        "SFT %s: %d params, %d steps, loss %.3f -> %.3f",
        name, num_parameters(model), sft_config.steps, losses[0], losses[-1],
    )  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a half-written directory is never mistaken for a cached model
    return out


def load(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a saved tiny model and its tokenizer (as the trainer would)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)
