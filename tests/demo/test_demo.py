"""The demo pipeline end to end with tiny settings, and its pure pieces."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from distill_trainer import data, demo, tiny
from distill_trainer.cli import load_document, main


def test_sft_response_shows_the_running_sums() -> None:
    rows = data.arithmetic_rows([((3, 4, 7, 2), ("+", "+", "+")), ((9, 5, 1), ("-", "+"))], "t")
    first, second = (data.row_to_record(r) for r in rows)
    assert tiny.sft_response(first) == "7,14,\\boxed{16}"
    assert tiny.sft_response(second) == "4,\\boxed{5}"


def test_sft_response_is_just_the_box_otherwise() -> None:
    rows = data.arithmetic_rows([((23, 48), ("+",)), ((2, 3, 4), ("+", "*"))], "t")
    assert [tiny.sft_response(data.row_to_record(r)) for r in rows] == [
        "\\boxed{71}",
        "\\boxed{14}",
    ]


def test_sft_responses_are_graded_correct() -> None:
    from distill_grader.grading import grade_answer

    problems = data.arithmetic_problems(50, seed=4, max_operand=9, terms=4)
    for record in map(data.row_to_record, data.arithmetic_rows(problems, "t")):
        assert grade_answer(tiny.sft_response(record), record.ground_truth).score == 1.0


@pytest.mark.parametrize("name", list(demo.JOBS))
def test_example_jobs_are_valid_and_share_all_but_the_objective(name: str, repo_root: Path) -> None:
    job = load_document(repo_root / "examples" / demo.JOBS[name], [])
    assert job.spec.needs_teacher is (name in demo.TEACHER_JOBS)
    assert job.spec.student.model == "out/demo/models/student"
    other = load_document(repo_root / "examples" / demo.JOBS["distill"], [])
    # Only the objective and its learning rate differ between the three.
    ignored = {"learning_rate"}
    assert job.spec.training.model_dump(exclude=ignored) == other.spec.training.model_dump(
        exclude=ignored
    )
    assert job.spec.rollout == other.spec.rollout
    assert job.spec.algorithm.rollout_n == other.spec.algorithm.rollout_n
    expected = {"rl": "grpo", "distill": "grpo", "reward_free": "none"}[name]
    assert job.spec.algorithm.adv_estimator == expected


def test_first_step_reaching() -> None:
    rewards = {0: 0.1, 5: 0.4, 10: 0.7, 15: 0.6}
    assert demo.first_step_reaching(rewards, 0.5) == 10
    assert demo.first_step_reaching(rewards, 0.1) == 0
    assert demo.first_step_reaching(rewards, 0.9) is None


def _seed(start: float, end: float, half: int | None, most: int | None) -> dict:
    return {
        "val_reward_start": start,
        "val_reward_end": end,
        "seconds": 1.5,
        "steps_to_gap": {"0.5": half, "0.9": most},
    }


def test_format_table_lists_every_job_with_its_seeds() -> None:
    results = {"teacher": {"val_reward": 0.9}}
    for name in demo.JOBS:
        per_seed = {"0": _seed(0.1, 0.5, 10, None), "1": _seed(0.1, 0.7, 5, 20)}
        results[name] = demo.job_result(per_seed)
    lines = demo.format_table(results).splitlines()
    assert lines[0] == "teacher val reward: 0.900"
    assert lines[2].split() == ["rl", "0.100", "0.600", "(0.50..0.70)", "10/5", "-/20", "3.0"]
    assert [line.split()[0] for line in lines[2:]] == list(demo.JOBS)


@pytest.mark.slow
def test_demo_pipeline_smoke(tmp_path: Path) -> None:
    small = tiny.TinyModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    cfg = demo.DemoConfig(
        out=tmp_path / "demo",
        train_size=64,
        val_size=8,
        teacher_model=small,
        teacher_sft=tiny.SftConfig(steps=3, batch_size=8, warmup_steps=1),
        student_terms=2,
        student_sft=tiny.SftConfig(steps=1, batch_size=8, warmup_steps=1),
        steps=2,
        test_freq=1,
        seeds=(0, 1),
        lanes=2,
        progress=False,
        backend="inprocess",  # the Ray path has its own tests in tests/trainer/test_ray.py
        overrides=("training.batchSize=4", "algorithm.rolloutN=2", "training.ppoMiniBatchSize=2"),
    )
    results = demo.run_demo(cfg)
    written = json.loads((cfg.out / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert set(written) >= {"teacher", *demo.JOBS, "total_seconds"}
    assert 0.0 <= written["teacher"]["val_reward"] <= 1.0
    for name in demo.JOBS:
        job = written[name]
        assert set(job["seeds"]) == {"0", "1"}
        for run in job["seeds"].values():
            assert run["steps"] == 2 and run["seconds"] > 0
            assert sorted(run["val_rewards"], key=int) == ["0", "1", "2"]
            assert set(run["steps_to_gap"]) == {"0.5", "0.9"}
            assert (run["final_kl_per_token"] is not None) is (name in demo.TEACHER_JOBS)
    assert (cfg.out / "demo.png").stat().st_size > 10_000
    assert (cfg.out / "models" / "teacher" / "config.json").is_file()
    # Again with another totalSteps (a math field under the cosine schedule): a fresh run, not a
    # resume of the last one's checkpoints, which would be refused.
    again = dataclasses.replace(cfg, steps=3)
    models = {role: cfg.out / "models" / role for role in ("student", "teacher")}
    paths = {split: cfg.out / "data" / f"{split}.parquet" for split in ("train", "test")}
    summary = demo.run_example("rl", 0, again, demo.job_overrides(again, models, paths))
    assert summary.steps == 3 and sorted(summary.val_rewards) == [0, 1, 2, 3]


def test_the_cli_runs_the_demo_with_its_own_arguments(capsys) -> None:
    """`python -m distill_trainer demo ...`, what make demo runs, hands every argument to the
    demo's own parser."""
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m distill_trainer demo")
