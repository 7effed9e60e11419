"""Whole runs with `run_job`: outputs on disk, step counting, and learning that really happens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_trainer.checkpoint import open_store
from distill_trainer.config import RunOptions
from distill_trainer.driver import run_job
from distill_trainer.setup import JobInputError


def _options(tmp_path: Path, **extra) -> RunOptions:
    return RunOptions(backend="inprocess", output_dir=tmp_path / "out", progress=False, **extra)


def test_run_writes_metrics_checkpoints_and_summary(make_job, tmp_path: Path, caplog) -> None:
    job = make_job(
        training={"totalSteps": 3, "testFreq": 2, "saveFreq": 1},
        checkpoint={"uri": str(tmp_path / "ckpt"), "keep": 2},
    )
    (tmp_path / "ckpt" / "global_step_10").mkdir(parents=True)  # no manifest: not ours, kept
    summary = run_job(job, _options(tmp_path))
    assert summary.steps == summary.total_steps == 3
    assert summary.roles == ["rollout", "actor", "teacher"]
    # Validation before training, every testFreq steps, and after the last step.
    assert sorted(summary.val_rewards) == [0, 2, 3]
    lines = [json.loads(line) for line in summary.metrics_path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert lines[1]["training/step"] == 1 and "training_step_reward" in lines[1]
    # Checkpoints go to a local checkpoint.uri; only the `keep` newest of this job survive.
    store = open_store(str(tmp_path / "ckpt"))
    assert store.list_dirs() == ["final", "global_step_10", "global_step_2", "global_step_3"]
    assert summary.last_checkpoint == str(tmp_path / "ckpt" / "global_step_3")
    manifest = json.loads((tmp_path / "ckpt" / "global_step_3" / "manifest.json").read_text())
    assert manifest["step"] == 3 and manifest["job"] == "tiny-job"
    # The student of a checkpoint and the final export load with transformers alone.
    for path in (tmp_path / "ckpt" / "global_step_3" / "actor", tmp_path / "ckpt" / "final"):
        AutoModelForCausalLM.from_pretrained(path)
        AutoTokenizer.from_pretrained(path)
    assert summary.final_model == str(tmp_path / "ckpt" / "final")
    assert summary.history[-1]["training/final_model_saved"] == 1.0
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["steps"] == 3 and saved["val_rewards"]["3"] == summary.val_rewards[3]


def test_steps_follow_epochs_unless_total_steps_is_set(make_job, write_task, tmp_path) -> None:
    data = write_task("7", count=6)  # batchSize 2: 3 steps per epoch
    paths = {"train": str(data / "train.parquet"), "val": None}
    job = make_job(data=paths, training={"totalSteps": None, "numEpochs": 2, "saveFreq": 100})
    summary = run_job(job, _options(tmp_path, val_before_train=False))
    assert summary.steps == 6 and summary.val_rewards == {}
    epochs = [m["training/epoch"] for m in summary.history]
    assert epochs == [0, 0, 0, 1, 1, 1]
    # totalSteps takes precedence over numEpochs (as in the seed): more passes when needed.
    job = make_job(data=paths, training={"totalSteps": 7, "numEpochs": 1, "saveFreq": 100})
    assert run_job(job, _options(tmp_path / "b")).steps == 7


def test_bad_inputs_name_the_field(make_job, tmp_path: Path) -> None:
    with pytest.raises(JobInputError, match=r"^data\.train: .*does not exist"):
        run_job(make_job(data={"train": str(tmp_path / "none.parquet")}), _options(tmp_path))
    with pytest.raises(
        JobInputError, match=r"^data\.train: no prompt .* fits rollout\.maxPromptLength=3"
    ):
        run_job(make_job(rollout={"maxPromptLength": 3}), _options(tmp_path))
    with pytest.raises(JobInputError, match=r"^training\.batchSize: 128 is more than the 64"):
        run_job(make_job(training={"batchSize": 128}), _options(tmp_path))
    with pytest.raises(JobInputError, match=r"^student\.model: cannot load"):
        run_job(make_job(student={"model": str(tmp_path / "nothing")}), _options(tmp_path))


def _rewards(summary) -> list[float]:
    return [m["training_step_reward"] for m in summary.history if "training_step_reward" in m]


@pytest.mark.slow
def test_reward_rises_on_an_easy_task(make_job, tmp_path: Path) -> None:
    """Pure RL (no teacher) on "always answer 7": the reward climbs from about 1 in 10."""
    job = make_job(
        algorithm={"useKlInAdvantage": False, "rolloutN": 8},
        training={
            "batchSize": 4,
            "ppoMiniBatchSize": 4,
            "learningRate": 1e-3,
            "totalSteps": 40,
            "testFreq": 10,
            "saveFreq": 1000,
        },
    )
    summary = run_job(job, _options(tmp_path))
    rewards = _rewards(summary)
    start, end = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert start < 0.4 and end > start + 0.4, rewards
    assert summary.val_rewards[0] == 0.0 and summary.val_rewards[40] == 1.0


@pytest.mark.slow
def test_distillation_alone_pulls_the_student_to_the_teacher(
    make_job, write_task, teacher_dir: Path, tmp_path: Path
) -> None:
    """No reward signal at all (no answer can match), only the teacher KL in the advantage: the
    KL falls and the student takes up the teacher's answer, 7, on the validation set."""
    unreachable = write_task("none")
    job = make_job(
        teacher={"model": str(teacher_dir)},
        algorithm={"klPenaltyCoef": 1.0, "rolloutN": 8},
        training={
            "batchSize": 4,
            "ppoMiniBatchSize": 4,
            "totalSteps": 30,
            "testFreq": 10,
            "saveFreq": 1000,
        },
        data={"train": str(unreachable / "train.parquet")},
    )
    summary = run_job(job, _options(tmp_path))
    assert set(_rewards(summary)) == {0.0}
    kl = [m["distill/kl_per_token"] for m in summary.history if "distill/kl_per_token" in m]
    assert sum(kl[-5:]) / 5 < 0.3 * sum(kl[:5]) / 5, kl
    assert summary.val_rewards[0] == 0.0 and summary.val_rewards[30] == 1.0
