"""Fixtures for the trainer tests: tiny Qwen2 models and prompt files built in tmp dirs.

Models come from distill_trainer.tiny (no download), are built once per session and kept small
(2 layers, hidden 32), so a full training step takes a fraction of a second on one core. The task
is "always answer 7": arithmetic prompts whose ground truth is 7, graded by the real grader.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from distill_api import DistillJob, load_job
from distill_trainer import tiny
from distill_trainer.data import make_row, row_to_record, write_rows

TINY = tiny.TinyModelConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=64,
    max_positions=128,
)


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and the test machine's cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def arithmetic_rows(count: int, seed: int, answer: str | None = None) -> list[dict[str, Any]]:
    """Seed-format rows "What is a + b?"; `answer` replaces every ground truth when given."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        truth = answer if answer is not None else str(a + b)
        rows.append(make_row(f"What is {a} + {b}?", truth, "test/arith", "train", index))
    return rows


def save_model(model: Any, tokenizer: Any, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sft_model(path: Path, answer: Callable[[random.Random], str], steps: int = 150) -> Path:
    """A tiny model fine-tuned to reply `\\boxed{<answer>}` to the arithmetic prompts (~2 s)."""
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, TINY, seed=0)
    rng = random.Random(0)
    records = [
        dataclasses.replace(row_to_record(row), ground_truth=answer(rng))
        for row in arithmetic_rows(64, seed=0)
    ]
    config = tiny.SftConfig(steps=steps, batch_size=32, learning_rate=1e-2, warmup_steps=5)
    with one_thread():
        tiny.sft(model, tiny.encode_pairs(tokenizer, records), config, tokenizer.pad_token_id)
    return save_model(model, tokenizer, path)


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Samples `\\boxed{d}` with a roughly uniform digit d: about one sampled answer in ten is
    right, so steps see mixed rewards (non-zero advantages); its greedy answer is wrong."""
    return sft_model(tmp_path_factory.mktemp("student"), lambda rng: str(rng.randint(0, 9)))


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same tokenizer and shape as the student, fine-tuned to always answer `\\boxed{7}`."""
    return sft_model(tmp_path_factory.mktemp("teacher"), lambda rng: "7")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_rows(arithmetic_rows(64, seed=0, answer="7"), out / "train.parquet")
    write_rows(arithmetic_rows(8, seed=1, answer="7"), out / "test.parquet")
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


JobFactory = Callable[..., DistillJob]


def job_document(
    student_model: Path, data_path: Path, name: str = "tiny-job", **spec: Any
) -> dict[str, Any]:
    """A small valid DistillJob manifest; keyword dicts deep-merge into the spec."""
    base = {
        "student": {"model": str(student_model)},
        "algorithm": {"advEstimator": "grpo", "rolloutN": 4, "klPenaltyCoef": 0.1},
        "training": {
            "batchSize": 2,
            "ppoMiniBatchSize": 1,
            "learningRate": 3e-3,
            "criticLearningRate": 1e-3,
            "totalSteps": 1,
            "testFreq": 1,
            "saveFreq": 1,
        },
        "rollout": {"temperature": 1.0, "maxPromptLength": 64, "maxResponseLength": 6},
        "data": {"train": str(data_path / "train.parquet"), "val": str(data_path / "test.parquet")},
    }
    if spec.get("algorithm", {}).get("advEstimator") == "gae":
        base["resources"] = {"critic": {"gpusPerReplica": 0}}
    return {
        "apiVersion": "distill.dev/v1alpha1",
        "kind": "DistillJob",
        "metadata": {"name": name},
        "spec": _merge(base, spec),
    }


@pytest.fixture
def make_job(student_dir: Path, data_dir: Path) -> JobFactory:
    def factory(name: str = "tiny-job", **spec: Any) -> DistillJob:
        return load_job(job_document(student_dir, data_dir, name, **spec))

    return factory


@pytest.fixture
def make_document(student_dir: Path, data_dir: Path) -> Callable[..., dict[str, Any]]:
    def factory(name: str = "tiny-job", **spec: Any) -> dict[str, Any]:
        return job_document(student_dir, data_dir, name, **spec)

    return factory


@pytest.fixture
def write_task(tmp_path: Path) -> Callable[[str, int], Path]:
    """Write `<tmp>/<answer>/train.parquet` (and test.parquet) whose ground truth is `answer`."""

    def factory(answer: str, count: int = 64) -> Path:
        out = tmp_path / f"task-{answer}"
        write_rows(arithmetic_rows(count, seed=0, answer=answer), out / "train.parquet")
        write_rows(arithmetic_rows(8, seed=1, answer=answer), out / "test.parquet")
        return out

    return factory
