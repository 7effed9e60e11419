"""`python -m distill_trainer run job.yaml`: overrides, clear errors, and a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill_trainer.cli import InputError, apply_override, main, parse_override


def _write(document: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("training.batchSize=8", ["spec", "training", "batchSize"], 8),
        ("algorithm.useKlInAdvantage=false", ["spec", "algorithm", "useKlInAdvantage"], False),
        ("training.learningRate=3.0e-4", ["spec", "training", "learningRate"], 3.0e-4),
        ("teacher.model=Qwen/Qwen2.5-7B", ["spec", "teacher", "model"], "Qwen/Qwen2.5-7B"),
        ("metadata.name=other", ["metadata", "name"], "other"),
        ("spec.data.val=", ["spec", "data", "val"], ""),
        ("teacher=null", ["spec", "teacher"], None),
        (
            "student.lora.targetModules=[q_proj, v_proj]",
            ["spec", "student", "lora", "targetModules"],
            ["q_proj", "v_proj"],
        ),
        # YAML 1.2, not PyYAML's 1.1: no octal, no base 60, no yes/no booleans, exponents
        # without a dot are numbers.
        ("training.totalSteps=010", ["spec", "training", "totalSteps"], 10),
        ("training.seed=1:30", ["spec", "training", "seed"], "1:30"),
        ("metadata.name=no", ["metadata", "name"], "no"),
        ("training.learningRate=1e-3", ["spec", "training", "learningRate"], 1e-3),
        ("algorithm.klPenaltyCoef=-.5", ["spec", "algorithm", "klPenaltyCoef"], -0.5),
        ("resources.actor.memory=16Gi", ["spec", "resources", "actor", "memory"], "16Gi"),
    ],
)
def test_parse_override(text: str, keys: list[str], value: object) -> None:
    assert parse_override(text) == (keys, value)


def test_override_errors() -> None:
    with pytest.raises(InputError, match="expected PATH=VALUE"):
        parse_override("training.batchSize")
    with pytest.raises(InputError, match="expected PATH=VALUE"):
        parse_override("training..batchSize=3")
    document = {"spec": {"training": 5}}
    with pytest.raises(InputError, match=r"spec\.training is not a mapping"):
        apply_override(document, ["spec", "training", "batchSize"], 8)
    apply_override(document, ["spec", "rollout", "topP"], 0.9)
    assert document["spec"]["rollout"] == {"topP": 0.9}
    document["spec"]["teacher"] = None  # `teacher:` left empty in the file
    apply_override(document, ["spec", "teacher", "model"], "Qwen/Qwen2.5-7B")
    assert document["spec"]["teacher"] == {"model": "Qwen/Qwen2.5-7B"}


def test_bad_fields_are_listed_one_per_line(make_document, tmp_path: Path, capsys) -> None:
    job = _write(make_document(), tmp_path / "job.yaml")
    code = main(
        [
            "run",
            str(job),
            "--set",
            "training.batchSize=0",
            "--set",
            "rollout.topP=2",
            "--set",
            "training.bogus=1",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid DistillJob {job}:")
    assert "spec.training.batchSize: Input should be greater than or equal to 1" in err
    assert "spec.rollout.topP: Input should be less than or equal to 1" in err
    assert "spec.training.bogus: Extra inputs are not permitted" in err
    assert "Traceback" not in err


def test_cross_field_rules_and_unreadable_files(make_document, tmp_path: Path, capsys) -> None:
    job = _write(make_document(), tmp_path / "job.yaml")
    assert main(["run", str(job), "--set", "algorithm.advEstimator=gae"]) == 2
    assert "spec.resources.critic: required when algorithm.advEstimator is gae" in (
        capsys.readouterr().err
    )
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert main(["run", str(tmp_path / "list.yaml")]) == 2
    assert "expected a DistillJob mapping" in capsys.readouterr().err


def test_input_problems_found_at_start_exit_2(make_document, tmp_path: Path, capsys) -> None:
    job = _write(make_document(), tmp_path / "job.yaml")
    code = main(
        [
            "run",
            str(job),
            "--backend",
            "inprocess",
            "--no-progress",
            "--output-dir",
            str(tmp_path / "out"),
            "--set",
            f"data.train={tmp_path}/x.parquet",
        ]
    )
    assert code == 2
    assert "data.train: dataset" in capsys.readouterr().err


def test_run_from_the_command_line(make_document, tmp_path: Path) -> None:
    """JSON works as well as YAML (the operator mounts job.json); --set wins over the file."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_document(name="cli-job")))
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(job),
            "--backend",
            "inprocess",
            "--no-progress",
            "--device",
            "cpu",
            "--output-dir",
            str(out),
            "--set",
            "training.totalSteps=2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["job_name"] == "cli-job" and summary["steps"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_module_entry_point_exits_2_without_traceback(make_document, tmp_path: Path) -> None:
    job = _write(make_document(), tmp_path / "job.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "distill_trainer", "run", str(job), "--set", "training.seed=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "spec.training.seed: Input should be greater than or equal to 0" in proc.stderr
    assert "Traceback" not in proc.stderr
