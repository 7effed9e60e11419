"""Small pure parts of the trainer: prompt order, step counting, checkpoints, sharding helpers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from distill_api import load_job
from distill_trainer.batch import RolloutBatch
from distill_trainer.checkpoint import checkpoint_uri
from distill_trainer.config import RoleConfig
from distill_trainer.data import PromptRecord, make_row, write_rows
from distill_trainer.prompts import EncodedPrompt, encode_prompts, prompt_batches
from distill_trainer.roles.base import LogprobOutput, SamplingParams, Weights, bucketed
from distill_trainer.roles.group import (
    Placement,
    engine_placement,
    merge_results,
    replica_config,
    sharded_args,
    split_rows,
)
from distill_trainer.roles.models import load_tokenizer
from distill_trainer.roles.rollout_hf import truncated_rows
from distill_trainer.setup import load_prompts


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


def test_prompts_over_max_prompt_length_are_skipped_and_counted(
    student_dir: Path, tmp_path: Path, caplog
) -> None:
    lengths = [1, 200, 2, 200, 3]
    rows = [make_row("x" * n, str(i), "t", "train", i) for i, n in enumerate(lengths)]
    write_rows(rows, tmp_path / "train.parquet")
    tokenizer = load_tokenizer(str(student_dir))
    with caplog.at_level(logging.WARNING, logger="distill_trainer.setup"):
        kept = load_prompts("data.train", str(tmp_path / "train.parquet"), tokenizer, 64)
    assert [p.ground_truth for p in kept] == ["0", "2", "4"]
    assert (
        "data.train: skipped 2 of 5 prompts longer than rollout.maxPromptLength=64" in caplog.text
    )


def test_checkpoint_uri(tmp_path: Path, monkeypatch) -> None:
    def spec(checkpoint):
        document = {
            "metadata": {"name": "j"},
            "spec": {"student": {"model": "m"}, "data": {"train": "t"}, **checkpoint},
        }
        return load_job(document).spec

    out = tmp_path / "out"
    assert checkpoint_uri(spec({}), out) == str(out / "checkpoints")
    assert checkpoint_uri(spec({"checkpoint": {"uri": "/ckpt/a"}}), out) == "/ckpt/a"
    assert checkpoint_uri(spec({"checkpoint": {"uri": "file:///ckpt/b"}}), out) == "/ckpt/b"
    assert checkpoint_uri(spec({"checkpoint": {"uri": "s3://b/p/"}}), out) == "s3://b/p"
    monkeypatch.chdir(tmp_path)  # relative paths become absolute: Ray workers agree on them
    assert checkpoint_uri(spec({"checkpoint": {"uri": "rel"}}), out) == str(tmp_path / "rel")


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


def test_a_seeded_generate_gives_each_replica_its_rows_seeds() -> None:
    """Validation's seeded calls: replica r starts where one call's seeds for its rows would
    (vLLM seeds prompt i with seed + i·n), so no two replicas draw the same samples."""
    shards = split_rows(list(range(5)), 2)  # 3 prompts, then 2
    seeded = sharded_args("generate", ([], 4, SamplingParams(8, seed=100)), shards)
    assert [(len(p), n, s.seed) for p, n, s in seeded] == [(3, 4, 100), (2, 4, 112)]
    plain = sharded_args("generate", ([], 4, SamplingParams(8)), shards)
    assert [s.seed for _, _, s in plain] == [None, None]
    assert sharded_args("compute_values", ([],), shards) == [(shards[0],), (shards[1],)]


def test_truncated_rows_are_those_without_an_eos() -> None:
    ids = torch.tensor([[5, 1, 0, 0], [5, 5, 5, 1], [5, 5, 5, 5], [2, 0, 0, 0]])
    # Row 1 ends with its EOS in the last allowed position: finished, not cut.
    assert truncated_rows(ids, torch.tensor([1, 2])).tolist() == [False, False, True, False]


def test_replicas_get_distinct_seeds() -> None:
    cfg = RoleConfig(model="m", device="cpu", seed=7, temperature=1.0, micro_batch_size=1)
    assert [replica_config(cfg, rank).seed for rank in range(3)] == [7, 8, 9]
    assert replica_config(cfg, 2).model == "m" and replica_config("x", 1) == "x"


def test_merge_results() -> None:
    a, b = torch.zeros(1, 2), torch.ones(2, 2)
    assert torch.equal(merge_results([a, b], 0), torch.cat([a, b]))
    merged = merge_results([LogprobOutput(a, a), LogprobOutput(b, b)], 0)
    assert torch.equal(merged.logprobs, torch.cat([a, b])) and merged.entropy.shape == (3, 2)


def test_bucketed_caps_bucket_bytes_and_keeps_order() -> None:
    named = [(f"w{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([3, 2, 9, 1])]
    buckets = bucketed(named, bucket_bytes=19)  # under 5 float32: no two of the first share
    assert [list(b) for b in buckets] == [["w0"], ["w1"], ["w2"], ["w3"]]
    weights = Weights(version=4, buckets=bucketed(named, bucket_bytes=24))
    assert [list(b) for b in weights.buckets] == [["w0", "w1"], ["w2"], ["w3"]]
    assert [name for name, _ in weights.items()] == ["w0", "w1", "w2", "w3"]
    assert weights.nbytes == 4 * (3 + 2 + 9 + 1)


@pytest.mark.parametrize(
    ("pods", "gpus", "tensor_parallel", "engines", "gpus_each", "unit_each"),
    [
        (2, 2, 2, 2, 2.0, 1.0),  # the seed's: one TP-2 engine per pod
        (2, 4, 2, 4, 2.0, 0.5),  # two TP-2 engines per pod: no GPU left idle
        (1, 8, 1, 8, 1.0, 0.125),
        (3, 0, 2, 3, 0.0, 1.0),  # CPU pods: one engine each
    ],
)
def test_rollout_engines_fill_their_pods(
    pods: int, gpus: int, tensor_parallel: int, engines: int, gpus_each: float, unit_each: float
) -> None:
    placement = engine_placement("rollout", pods, gpus, tensor_parallel)
    assert placement == Placement(engines, gpus_each, {"rollout": unit_each})
    # Together they take exactly what the pods advertise: every GPU, every unit.
    assert placement.replicas * placement.num_gpus == pods * gpus
    assert placement.replicas * unit_each == pytest.approx(pods)
