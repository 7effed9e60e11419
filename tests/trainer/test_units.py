"""Small pure parts of the trainer: prompt order, step counting, checkpoints, sharding helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill_api import load_job
from distill_trainer.batch import RolloutBatch
from distill_trainer.checkpoint import checkpoint_root, list_checkpoints, prune_checkpoints
from distill_trainer.data import PromptRecord
from distill_trainer.prompts import EncodedPrompt, encode_prompts, prompt_batches
from distill_trainer.roles.base import LogprobOutput
from distill_trainer.roles.hf import load_tokenizer
from distill_trainer.roles.ray_group import merge_results, split_rows


def _prompts(n: int) -> list[EncodedPrompt]:
    return [EncodedPrompt([i], str(i), "t") for i in range(n)]


def test_each_epoch_visits_every_prompt_once_in_a_new_order() -> None:
    batches = prompt_batches(_prompts(7), batch_size=3, seed=1)
    first = [next(batches) for _ in range(2)]  # 7 // 3 = 2 full batches per epoch
    second = [next(batches) for _ in range(2)]
    assert [epoch for epoch, _ in first + second] == [0, 0, 1, 1]
    ids = [[p.token_ids[0] for p in batch] for _, batch in first + second]
    assert all(len(b) == 3 for b in ids)
    assert len(set(ids[0] + ids[1])) == 6 and len(set(ids[2] + ids[3])) == 6
    assert ids[:2] != ids[2:]
    again = prompt_batches(_prompts(7), batch_size=3, seed=1)
    assert [[p.token_ids[0] for p in next(again)[1]] for _ in range(2)] == ids[:2]


def test_encode_prompts_uses_the_chat_template_and_drops_long_ones(student_dir: Path) -> None:
    tokenizer = load_tokenizer(str(student_dir))
    records = [
        PromptRecord([{"role": "user", "content": "hi"}], "1", "t"),
        PromptRecord([{"role": "user", "content": "x" * 100}], "2", "t"),
    ]
    kept = encode_prompts(tokenizer, records, max_length=20)
    assert [p.ground_truth for p in kept] == ["1"]
    assert tokenizer.decode(kept[0].token_ids) == "<|user|>hi<|end|><|assistant|>"


def test_checkpoint_root_and_pruning(tmp_path: Path) -> None:
    def spec(checkpoint):
        document = {
            "metadata": {"name": "j"},
            "spec": {"student": {"model": "m"}, "data": {"train": "t"}, **checkpoint},
        }
        return load_job(document).spec

    out = tmp_path / "out"
    assert checkpoint_root(spec({}), out) == out / "checkpoints"
    assert checkpoint_root(spec({"checkpoint": {"uri": "/ckpt/a"}}), out) == Path("/ckpt/a")
    assert checkpoint_root(spec({"checkpoint": {"uri": "file:///ckpt/b"}}), out) == Path("/ckpt/b")
    assert checkpoint_root(spec({"checkpoint": {"uri": "s3://b/p"}}), out) == out / "checkpoints"
    for step in (1, 10, 2, 30):
        (tmp_path / f"global_step_{step}").mkdir()
    (tmp_path / "global_step_x").mkdir()
    removed = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["global_step_1", "global_step_2"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10, 30]
    assert (tmp_path / "global_step_x").is_dir()  # not ours: left alone


def _batch(rows: int) -> RolloutBatch:
    ids = torch.arange(rows * 3).reshape(rows, 3)
    return RolloutBatch(ids, torch.ones_like(ids), ids, torch.ones(rows, 2), torch.arange(rows))


@pytest.mark.parametrize(
    ("rows", "parts", "sizes"), [(5, 2, [3, 2]), (4, 4, [1, 1, 1, 1]), (2, 3, [1, 1])]
)
def test_split_rows_keeps_order(rows: int, parts: int, sizes: list[int]) -> None:
    shards = split_rows(_batch(rows), parts)
    assert [s.size for s in shards] == sizes
    assert torch.equal(torch.cat([s.input_ids for s in shards]), _batch(rows).input_ids)
    assert [len(s) for s in split_rows(list(range(rows)), parts)] == sizes


def test_merge_results() -> None:
    a, b = torch.zeros(1, 2), torch.ones(2, 2)
    assert torch.equal(merge_results([a, b], 0), torch.cat([a, b]))
    merged = merge_results([LogprobOutput(a, a), LogprobOutput(b, b)], 0)
    assert torch.equal(merged.logprobs, torch.cat([a, b])) and merged.entropy.shape == (3, 2)
