"""Tiny tokenizer and models: round trips, chat template, shapes, SFT, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_trainer import data, tiny

torch.set_num_threads(1)
SMALL = tiny.TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer()


def _records(n: int = 32, seed: int = 0) -> list[data.PromptRecord]:
    problems = data.arithmetic_problems(n, seed=seed, max_operand=9)
    return [data.row_to_record(r) for r in data.arithmetic_rows(problems, "train", "")]


def test_vocabulary_is_small_and_has_the_special_tokens(tokenizer) -> None:
    assert len(tokenizer) == 95 + 7  # printable ASCII, pad/bos/eos, three roles, \\boxed{
    assert tokenizer.convert_ids_to_tokens(
        [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    ) == ["<|pad|>", "<|bos|>", "<|end|>"]
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}) == 3


def test_text_round_trips_character_by_character(tokenizer) -> None:
    text = "What is 23 + 48? Answer in \\boxed{}."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # one id per character, except \boxed{ which is a single token
    assert len(ids) == len(text) - len("\\boxed{") + 1
    assert tokenizer.convert_ids_to_tokens(ids[:4]) == ["W", "h", "a", "t"]


def test_ascii_round_trips_and_other_characters_are_dropped(tokenizer) -> None:
    text = "x^2 <= 5 # {done} ~"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(text)
    assert tokenizer.decode(tokenizer("x² ≤ 5", add_special_tokens=False)["input_ids"]) == "x  5"


def test_chat_template_renders_roles_and_generation_prompt(tokenizer) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1 + 2?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>be brief<|end|><|user|>1 + 2?<|end|><|assistant|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[-3:]) == ["?", "<|end|>", "<|assistant|>"]
    without = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not without.endswith("<|assistant|>")


def test_saved_tokenizer_and_model_load_with_auto_classes(tokenizer, tmp_path: Path) -> None:
    model = tiny.build_model(tokenizer, SMALL)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    text = "<|user|>What is 1 + 2?<|end|><|assistant|>"
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded_tok.chat_template == tiny.CHAT_TEMPLATE
    assert loaded_tok.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_model_forward_shapes(tokenizer) -> None:
    model = tiny.build_model(tokenizer, tiny.TinyModelConfig())
    assert 100_000 < tiny.num_parameters(model) < 300_000
    ids = torch.randint(0, len(tokenizer), (3, 11))
    logits = model(input_ids=ids).logits
    assert logits.shape == (3, 11, len(tokenizer))
    assert torch.isfinite(logits).all()


def test_encode_pairs_and_collate_score_only_the_response(tokenizer) -> None:
    records = _records(2)
    pairs = tiny.encode_pairs(tokenizer, records)
    prompt, response = pairs[0]
    assert tokenizer.decode(prompt).endswith("<|end|><|assistant|>")
    assert tokenizer.decode(response) == f"\\boxed{{{records[0].ground_truth}}}<|end|>"
    batch = tiny.collate(pairs, tokenizer.pad_token_id)
    labels = batch["labels"][0]
    scored = labels[labels != -100].tolist()
    assert scored == response
    assert batch["attention_mask"].sum().item() == sum(len(p) + len(r) for p, r in pairs)


def test_sft_lowers_the_loss(tokenizer) -> None:
    model = tiny.build_model(tokenizer, SMALL)
    pairs = tiny.encode_pairs(tokenizer, _records(32))
    config = tiny.SftConfig(steps=40, batch_size=16, learning_rate=1e-2, warmup_steps=5)
    losses = tiny.sft(model, pairs, config, tokenizer.pad_token_id)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_greedy_responses_and_accuracy(tokenizer) -> None:
    records = _records(4)
    model = tiny.build_model(tokenizer, SMALL)
    responses = tiny.greedy_responses(model, tokenizer, records, max_new_tokens=3)
    assert len(responses) == 4
    right = [f"\\boxed{{{r.ground_truth}}}" for r in records]
    assert tiny.exact_boxed_accuracy(right, records) == 1.0
    assert tiny.exact_boxed_accuracy(["\\boxed{x}", *right[1:]], records) == 0.75


def test_build_sft_model_caches_by_recipe(tmp_path: Path) -> None:
    records = _records(8)
    config = tiny.SftConfig(steps=2, batch_size=4)
    first = tiny.build_sft_model(tmp_path, "m", SMALL, config, records, data_key="d1")
    stamp = (first / "config.json").stat().st_mtime_ns
    again = tiny.build_sft_model(tmp_path, "m", SMALL, config, records, data_key="d1")
    assert again == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    other = tiny.build_sft_model(tmp_path, "m", SMALL, config, records, data_key="d2")
    assert other != first
    assert (other / "tokenizer.json").is_file()


def test_build_sft_model_fine_tunes_a_base(tmp_path: Path) -> None:
    """With `base`, the SFT starts from that saved model (the demo's student is its teacher after
    a short fine-tune), and the base's recipe is part of the cache key."""
    records = _records(8)
    base = tiny.build_sft_model(tmp_path, "base", SMALL, tiny.SftConfig(steps=2), records, "d")
    other_base = tiny.build_sft_model(
        tmp_path, "base", SMALL, tiny.SftConfig(steps=3), records, "d"
    )
    gentle = tiny.SftConfig(steps=1, learning_rate=1e-4, warmup_steps=1)
    tuned = tiny.build_sft_model(tmp_path, "tuned", SMALL, gentle, records, "d", base=base)
    assert tuned != tiny.build_sft_model(
        tmp_path, "tuned", SMALL, gentle, records, "d", base=other_base
    )
    before, after = tiny.load(base)[0].state_dict(), tiny.load(tuned)[0].state_dict()
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 0 < moved < 2e-4  # one Adam step of 1e-4 from the base's weights, not a fresh model
