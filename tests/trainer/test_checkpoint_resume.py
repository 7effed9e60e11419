"""Exact resume: the trainer CLI SIGKILLed mid-run and restarted continues as if nothing happened.

Each run is a real `python -m distill_trainer run` process on the tiny models (in-process roles;
gae, so the critic's state is exercised next to the actor's). The interrupted run is killed once
its metrics file shows a step past the first checkpoint; restarted with the same command it must
pick up at its newest committed checkpoint and end with weights equal, bit for bit, to those of
a run that was never interrupted (started at the same time, to share the wall-clock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from trainer.conftest import job_document

SAVE_FREQ = 2
TOTAL_STEPS = 6


def _job(student_dir: Path, data_dir: Path, work: Path, **extra: Any) -> Path:
    document = job_document(
        student_dir,
        data_dir,
        "crash-job",
        algorithm={"advEstimator": "gae", "rolloutN": 2, "useKlInAdvantage": False},
        training={"totalSteps": TOTAL_STEPS, "saveFreq": SAVE_FREQ, "testFreq": 100},
        data={"val": None},
        checkpoint={"uri": str(work / "ckpt"), "keep": 2},
        **extra,
    )
    path = work / "job.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def _command(job: Path, work: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "distill_trainer", "run", str(job), "--backend", "inprocess",
            "--device", "cpu", "--output-dir", str(work / "out"), "--no-progress",
            *flags]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _finish(process: subprocess.Popen[bytes], log: Path) -> str:
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    return log.read_text()


def _steps(work: Path) -> list[dict[str, Any]]:
    path = work / "out" / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def _committed(work: Path) -> list[int]:
    return sorted(
        int(p.parent.name.removeprefix("global_step_"))
        for p in (work / "ckpt").glob("global_step_*/manifest.json")
    )


def _final_weights(work: Path) -> dict[str, torch.Tensor]:
    return load_file(work / "ckpt" / "final" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_then_restart_resumes_bit_exactly(
    student_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    uninterrupted, work = tmp_path / "uninterrupted", tmp_path / "killed"
    reference_run = _start(
        _command(_job(student_dir, data_dir, uninterrupted), uninterrupted), tmp_path / "ref.log"
    )
    job = _job(student_dir, data_dir, work)
    process = _start(_command(job, work), tmp_path / "killed.log")
    deadline = time.monotonic() + 90
    while not any(s["step"] > SAVE_FREQ for s in _steps(work)):
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never got past its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = _committed(work)
    assert committed and committed[-1] >= SAVE_FREQ and committed[-1] < TOTAL_STEPS
    assert not (work / "ckpt" / "final").exists()

    log = _finish(_start(_command(job, work), tmp_path / "resumed.log"), tmp_path / "resumed.log")
    start = committed[-1]
    assert f"resumed from {work / 'ckpt' / f'global_step_{start}'}" in log
    _finish(reference_run, tmp_path / "ref.log")
    steps = _steps(work)
    assert [s["step"] for s in steps] == list(range(start + 1, TOTAL_STEPS + 1))
    # Every step after the checkpoint computed exactly what the uninterrupted run computed...
    reference = {s["step"]: s for s in _steps(uninterrupted)}
    for step in steps:
        for key in ("training_step_reward", "actor/pg_loss", "critic/vf_loss", "actor/grad_norm"):
            assert step[key] == reference[step["step"]][key], (step["step"], key)
    # ...and the final students are equal bit for bit.
    expected, actual = _final_weights(uninterrupted), _final_weights(work)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert steps[-1]["training/final_model_saved"] == 1.0
