"""Prompts as token ids, and the order in which training batches visit them.

Prompts are rendered with the student's chat template once, at start-up; those longer than
`rollout.maxPromptLength` tokens are skipped (setup.load_prompts logs how many). Each epoch
visits every prompt once in a seeded shuffle; the last incomplete batch of an epoch is skipped.
The order is a pure function of (seed, batch index), so a resumed run picks it up at any batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from distill_trainer.data import PromptRecord


@dataclass(frozen=True)
class EncodedPrompt:
    token_ids: list[int]
    ground_truth: str
    data_source: str


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[PromptRecord], max_length: int
) -> list[EncodedPrompt]:
    """Chat-template and tokenize every record; skip the ones over `max_length` tokens."""
    if not records:
        return []
    texts = tokenizer.apply_chat_template(
        [r.messages for r in records], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [
        EncodedPrompt(token_ids, r.ground_truth, r.data_source)
        for token_ids, r in zip(ids, records, strict=True)
        if len(token_ids) <= max_length
    ]


def steps_per_epoch(num_prompts: int, batch_size: int) -> int:
    return num_prompts // batch_size


def prompt_batches(
    prompts: Sequence[EncodedPrompt], batch_size: int, seed: int, skip: int = 0
) -> Iterator[tuple[int, list[EncodedPrompt]]]:
    """(epoch, batch) forever: a fresh seeded shuffle per epoch, full batches only, starting
    after the first `skip` batches (the ones a resumed run has already trained on)."""
    per_epoch = steps_per_epoch(len(prompts), batch_size)
    epoch, first = divmod(skip, per_epoch)
    while True:
        order = list(range(len(prompts)))
        random.Random(seed + epoch).shuffle(order)
        for index in range(first, per_epoch):
            start = index * batch_size
            yield epoch, [prompts[i] for i in order[start : start + batch_size]]
        epoch, first = epoch + 1, 0
