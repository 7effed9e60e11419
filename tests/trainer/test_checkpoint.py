"""Checkpoint bookkeeping on a local directory: commit by manifest, what resume picks and refuses,
pruning, the resumable data order and RNG states; a refused resume through the CLI, and a
finished run started again."""

from __future__ import annotations

import json
import logging
import random
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import AutoModelForCausalLM

from distill_api import load_job
from distill_trainer.checkpoint import CheckpointError, JobCheckpoints, math_fields
from distill_trainer.checkpoint.manifest import differing_fields
from distill_trainer.checkpoint.state import capture_rng, load_weights, restore_rng, save_weights
from distill_trainer.checkpoint.store import LocalStore
from distill_trainer.cli import main
from distill_trainer.config import RunOptions
from distill_trainer.driver import run_job
from distill_trainer.prompts import EncodedPrompt, prompt_batches

MATH = {"training.learningRate": 0.003, "algorithm.rolloutN": 4}


def _save(checkpoints: JobCheckpoints, step: int, payload: bytes = b"weights") -> None:
    """What the driver does, with one file standing in for the roles' parts."""
    uri = checkpoints.begin(step)
    name = uri.rpartition("/")[2]
    checkpoints.store.write_bytes(f"{name}/actor/model.safetensors", payload)
    checkpoints.commit(step, 0, {"actor/model.safetensors": len(payload)}, ["actor"])


def _steps(checkpoints: JobCheckpoints) -> list[int]:
    return [m.step for m in checkpoints.committed()]


def test_resume_skips_interrupted_and_corrupt_checkpoints(tmp_path: Path, caplog) -> None:
    checkpoints = JobCheckpoints(str(tmp_path), "job-a", MATH, keep=5)
    _save(checkpoints, 2)
    # Cut short before its manifest: files, no manifest.json.
    (tmp_path / "global_step_4" / "actor").mkdir(parents=True)
    (tmp_path / "global_step_4" / "actor" / "model.safetensors").write_bytes(b"half")
    # Committed but its manifest damaged (a truncated write by some other tool, bit rot).
    _save(checkpoints, 6)
    (tmp_path / "global_step_6" / "manifest.json").write_text('{"job": "job-a", "st')
    # Another job's checkpoint in the same directory, newer than ours.
    _save(JobCheckpoints(str(tmp_path), "job-b", MATH, keep=5), 8)
    with caplog.at_level(logging.INFO, logger="distill_trainer.checkpoint.job"):
        point = checkpoints.resume_point()
    assert point is not None and point.manifest.step == 2
    assert point.uri == str(tmp_path / "global_step_2")
    assert "global_step_6: corrupt manifest.json, skipped: not valid JSON" in caplog.text
    assert "global_step_4 has no manifest (interrupted), skipped" in caplog.text
    assert "global_step_8 belongs to job job-b" in caplog.text
    # Named explicitly (the operator's --resume-from), the same problems are errors.
    with pytest.raises(CheckpointError, match=r"global_step_6: corrupt manifest\.json: not valid"):
        checkpoints.resume_point(str(tmp_path / "global_step_6"))
    with pytest.raises(CheckpointError, match=r"global_step_4: not a committed checkpoint"):
        checkpoints.resume_point(str(tmp_path / "global_step_4/"))
    explicit = checkpoints.resume_point(f"file://{tmp_path}/global_step_2/")
    assert explicit is not None and explicit.manifest.step == 2
    # A file the manifest lists that is gone or truncated fails before any role loads it.
    (tmp_path / "global_step_2" / "actor" / "model.safetensors").write_bytes(b"w")
    with pytest.raises(CheckpointError, match=r"incomplete: actor/model\.safetensors \(1 bytes"):
        checkpoints.resume_point()
    assert JobCheckpoints(str(tmp_path / "empty"), "job-a", MATH, keep=1).resume_point() is None


def test_keep_prunes_only_this_jobs_committed_checkpoints(tmp_path: Path) -> None:
    checkpoints = JobCheckpoints(str(tmp_path), "job-a", MATH, keep=2)
    other = JobCheckpoints(str(tmp_path), "job-b", MATH, keep=1)
    _save(other, 1)
    (tmp_path / "global_step_9").mkdir()  # no manifest: nobody's to delete
    for step in (2, 3):
        _save(checkpoints, step)
    assert _steps(checkpoints) == [2, 3]
    _save(checkpoints, 4)  # step 2 goes only now that 4 is committed
    assert _steps(checkpoints) == [3, 4]
    assert (tmp_path / "global_step_1" / "manifest.json").is_file()  # job-b's
    assert (tmp_path / "global_step_9").is_dir()
    # Resumed from step 3 (say by --resume-from), the run re-reaches step 4: the old step 4 is
    # replaced, not mixed with, and after a later commit nothing from the old history remains.
    (tmp_path / "global_step_4" / "actor" / "stale-shard").write_text("old")
    _save(checkpoints, 4, b"new weights")
    assert not (tmp_path / "global_step_4" / "actor" / "stale-shard").exists()
    _save(checkpoints, 7)
    _save(checkpoints, 5)  # resumed at 4 after a 7 was written: 7 is from an abandoned history
    assert _steps(checkpoints) == [4, 5]
    with pytest.raises(CheckpointError, match=r"global_step_1 holds a checkpoint of job job-b"):
        checkpoints.begin(1)
    with pytest.raises(CheckpointError, match=r"^checkpoint\.keep must be ≥ 1"):
        JobCheckpoints(str(tmp_path), "job-a", MATH, keep=0)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CheckpointError, match=r"a-file/ckpt: cannot create the directory"):
        JobCheckpoints(str(tmp_path / "a-file" / "ckpt"), "job-a", MATH, keep=1)


class _KilledWhileDeleting(LocalStore):
    """A local store whose directory deletes stop after one file: the process killed there."""

    def delete(self, prefix: str) -> None:
        first = sorted(self.list_files(prefix))[0]
        self.remove(f"{prefix}/{first}")
        raise KeyboardInterrupt("killed while deleting")


@pytest.mark.parametrize("rewrite", ["re-reach the step", "prune"])
def test_a_delete_cut_short_leaves_an_uncommitted_checkpoint(tmp_path: Path, rewrite) -> None:
    """Replacing or pruning a committed checkpoint removes its manifest first: killed midway,
    the next start resumes from an older one instead of failing on missing files forever."""
    checkpoints = JobCheckpoints(str(tmp_path), "job-a", MATH, keep=2)
    for step in (2, 3, 4):
        _save(checkpoints, step)
    checkpoints.store = _KilledWhileDeleting(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        if rewrite == "prune":
            _save(checkpoints, 5)  # prunes step 3
        else:
            checkpoints.begin(4)  # resumed from 3, the run reaches step 4 again
    point = JobCheckpoints(str(tmp_path), "job-a", MATH, keep=2).resume_point()
    assert point is not None and point.manifest.step == (5 if rewrite == "prune" else 3)


def test_a_changed_math_field_is_refused_unless_forced(make_job, tmp_path: Path) -> None:
    def fields(**spec):
        return math_fields(make_job(**spec).spec, {"gradClip": 1.0})

    _save(JobCheckpoints(str(tmp_path), "tiny-job", fields(), keep=1), 3)
    # Schedule fields (saveFreq, testFreq, totalSteps, numEpochs) may change between attempts.
    later = fields(training={"totalSteps": 50, "saveFreq": 7, "testFreq": 9})
    assert JobCheckpoints(str(tmp_path), "tiny-job", later, keep=1).resume_point() is not None
    changed = JobCheckpoints(
        str(tmp_path), "tiny-job", fields(training={"learningRate": 1e-4}), keep=1
    )
    with pytest.raises(CheckpointError) as err:
        changed.resume_point()
    assert "training.learningRate: 0.003 in the checkpoint, 0.0001 now" in str(err.value)
    assert "--force-resume" in str(err.value)
    assert changed.resume_point(force=True) is not None


def test_under_a_cosine_learning_rate_the_run_length_is_math(make_job) -> None:
    def fields(**training):
        return math_fields(make_job(training=training).spec)

    cosine = {"lrSchedule": "cosine", "lrWarmupSteps": 2}
    # The cosine decays over totalSteps: a longer run has a higher rate at every later step.
    assert differing_fields(fields(**cosine, totalSteps=10), fields(**cosine, totalSteps=50)) == [
        "training.totalSteps: 10 in the checkpoint, 50 now"
    ]
    assert fields(totalSteps=10) == fields(totalSteps=50)  # a constant rate does not care


def test_the_cli_refuses_a_changed_checkpoint_with_one_error(
    make_document, tmp_path: Path, capsys
) -> None:
    document = make_document(checkpoint={"uri": str(tmp_path / "ckpt")})
    spec = load_job(document).spec
    checkpoints = JobCheckpoints(str(tmp_path / "ckpt"), "tiny-job", math_fields(spec), keep=1)
    _save(checkpoints, 2)  # trained without the CLI's options: the hash differs
    job = tmp_path / "job.json"
    job.write_text(json.dumps(document))
    argv = ["run", str(job), "--backend", "inprocess", "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--resume-from", str(tmp_path / "ckpt" / "global_step_2")]) == 2
    stderr = capsys.readouterr().err.splitlines()
    assert stderr[0] == "error: cannot run tiny-job:" and len(stderr) == 2
    assert "options.clipRatioC: None in the checkpoint, 3.0 now" in stderr[1]
    assert main([*argv, "--resume-from", str(tmp_path / "ckpt" / "global_step_9")]) == 2
    assert "global_step_9: not a committed checkpoint" in capsys.readouterr().err


def test_prompt_order_resumes_at_any_batch() -> None:
    prompts = [EncodedPrompt([i], str(i), "t") for i in range(7)]  # 2 batches of 3 per epoch

    def ids(batches, n):
        return [(epoch, [p.token_ids[0] for p in batch]) for epoch, batch in islice(batches, n)]

    whole = ids(prompt_batches(prompts, 3, seed=5), 6)
    for skip in (1, 2, 3, 5):
        assert ids(prompt_batches(prompts, 3, seed=5, skip=skip), 6 - skip) == whole[skip:]


def test_weights_keep_their_names_and_tied_tensors(student_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    tied = ("lm_head.weight", "model.embed_tokens.weight")
    assert state[tied[0]].data_ptr() == state[tied[1]].data_ptr()
    save_weights(state, tmp_path / "w.safetensors")
    loaded = load_weights(tmp_path / "w.safetensors")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert loaded[tied[0]].data_ptr() == loaded[tied[1]].data_ptr()  # still one tensor


def test_rng_states_round_trip() -> None:
    state = capture_rng()

    def draw():
        return random.random(), np.random.rand(), torch.rand(3).tolist()

    first = draw()
    restore_rng(state)
    assert draw() == first


def test_a_finished_run_started_again_only_exports(make_job, tmp_path: Path) -> None:
    job = make_job(checkpoint={"uri": str(tmp_path / "ckpt")}, training={"totalSteps": 1})
    options = RunOptions(backend="inprocess", output_dir=tmp_path / "out", progress=False)
    first = run_job(job, options)
    (tmp_path / "ckpt" / "final" / "model.safetensors").unlink()  # say the export was cut short
    again = run_job(job, options)
    assert [m["training/step"] for m in first.history] == [0.0, 1.0]  # validation, step 1
    assert again.history == [
        {
            "training/step": 1.0,
            "training/total_steps": 1.0,
            "training/final_model_saved": 1.0,
            "training/last_checkpoint_step": 1.0,
        }
    ]
    assert (tmp_path / "ckpt" / "final" / "model.safetensors").is_file()
