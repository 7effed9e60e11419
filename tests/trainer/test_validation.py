"""Validation: a fixed, capped subset streamed through the engine in batches; valN and pass@k."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_trainer.config import RunOptions
from distill_trainer.driver import pass_at_k_values, run_job, validate
from distill_trainer.prompts import EncodedPrompt
from distill_trainer.setup import setup_run, validation_subset


class CountingEngine:
    """The real rollout engine, recording how many prompts each generate call received."""

    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, []

    def generate(self, prompts, n, sampling):
        self.calls.append((len(prompts), n, sampling.greedy, sampling.seed))
        return self.engine.generate(prompts, n, sampling)


def prompts(count: int) -> list[EncodedPrompt]:
    return [
        EncodedPrompt(token_ids=[i], ground_truth=str(i), data_source="t") for i in range(count)
    ]


def test_subset_is_fixed_capped_and_in_file_order() -> None:
    everything = prompts(50)
    subset = validation_subset(everything, 10)
    assert len(subset) == 10 and subset == validation_subset(everything, 10)  # fixed
    ids = [p.token_ids[0] for p in subset]
    assert ids == sorted(ids) and ids != list(range(10))  # a sample, not the first ten
    assert len(validation_subset(everything, 10, cap=4)) == 4  # --max-val-prompts caps further
    assert validation_subset(everything, 500) == everything


def test_pass_at_k_values() -> None:
    assert pass_at_k_values(1) == [1]
    assert pass_at_k_values(4) == [1, 2, 4]
    assert pass_at_k_values(6) == [1, 2, 4, 6]


def _validate(make_job, tmp_path: Path, **training) -> tuple[dict[str, float], CountingEngine, int]:
    job = make_job(training=training)
    options = RunOptions(backend="inprocess", device="cpu", output_dir=tmp_path, progress=False)
    run = setup_run(job, options)
    try:
        counting = CountingEngine(run.roles.rollout)
        run.roles.rollout = counting
        return validate(run), counting, len(run.val)
    finally:
        run.close()


def test_sampled_validation_streams_batches_and_reports_pass_at_k(make_job, tmp_path) -> None:
    metrics, engine, n_val = _validate(
        make_job, tmp_path, valN=4, valBatchSize=3, valMaxPrompts=5, valTemperature=1.0
    )
    assert n_val == 5  # of the 8 in test.parquet
    # Each batch's seeds continue where the last one's ended (3 prompts × 4 samples).
    assert engine.calls == [(3, 4, False, 0), (2, 4, False, 12)]
    # Binary scores: pass@1 is the mean score; pass@k never falls as k grows.
    assert metrics["val/pass@1"] == pytest.approx(metrics["val/reward"])
    assert metrics["val/pass@1"] <= metrics["val/pass@2"] <= metrics["val/pass@4"] <= 1.0
    assert "timing_s/validate" in metrics


def test_default_validation_is_one_greedy_sample(make_job, tmp_path) -> None:
    metrics, engine, n_val = _validate(make_job, tmp_path)
    assert engine.calls == [(n_val, 1, True, 0)]
    assert set(metrics) == {"val/reward", "val/pass@1", "timing_s/validate"}


def test_how_often_validation_runs_does_not_change_training(make_job, tmp_path) -> None:
    """Sampled validation draws from a stream of its own: testFreq (a schedule field, free to
    change on resume) leaves every training sample as it was, and validations of the same
    weights draw the same samples."""
    runs = {}
    for test_freq in (1, 100):
        job = make_job(training={"totalSteps": 3, "testFreq": test_freq, "valN": 4})
        options = RunOptions(
            backend="inprocess", output_dir=tmp_path / str(test_freq), progress=False
        )
        runs[test_freq] = run_job(job, options)
    every_step, rarely = runs[1], runs[100]
    keys = ("training_step_reward", "actor/pg_loss", "response_length/mean")
    trained = [[[m[k] for k in keys] for m in r.history if keys[0] in m] for r in runs.values()]
    assert len(trained[0]) == 3 and trained[0] == trained[1]
    assert sorted(every_step.val_rewards) == [0, 1, 2, 3] and sorted(rarely.val_rewards) == [0, 3]
    for step in (0, 3):
        assert every_step.val_rewards[step] == rarely.val_rewards[step]
