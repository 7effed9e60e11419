"""The ray backend: the same roles as Ray actors, the driver unchanged.

All slow (Ray start-up and worker imports dominate): the default local Ray that the trainer starts
itself, where every role lives in one worker process and computes what a process per role does;
and a Ray that looks like the KubeRay cluster (custom resources named after the roles), where
replicas ask for their role's resource, the rollout engine and the teacher run as two replicas
each, and the actor writes its part of a checkpoint from its own process.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from distill_trainer.config import RoleConfig, RunOptions
from distill_trainer.driver import checkpoint, run_job, train_step
from distill_trainer.roles.trainer import HFTeacher
from distill_trainer.setup import setup_run

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_local_ray_runs_full_steps(make_job, teacher_dir: Path, tmp_path: Path) -> None:
    job = make_job(
        teacher={"model": str(teacher_dir)},
        training={"totalSteps": 2, "testFreq": 2, "saveFreq": 2},
    )
    options = RunOptions(backend="ray", output_dir=tmp_path, progress=False, ray_num_cpus=2)
    summary = run_job(job, options)
    assert not ray.is_initialized()  # the run started Ray, so it shut it down
    assert summary.steps == 2 and summary.roles == ["rollout", "actor", "teacher"]
    step = summary.history[-1]
    assert step["distill/kl_per_token"] > 0  # a different teacher, scored in the Ray worker
    assert step["actor/grad_norm"] > 0 and "timing_s/weight_sync" in step
    # The actor process wrote its part, the driver committed it, the final export is there.
    assert (tmp_path / "checkpoints" / "global_step_2" / "actor" / "config.json").is_file()
    assert (tmp_path / "checkpoints" / "global_step_2" / "manifest.json").is_file()
    assert (tmp_path / "checkpoints" / "final" / "model.safetensors").is_file()
    assert sorted(summary.val_rewards) == [0, 2]


@pytest.mark.slow
def test_local_roles_share_one_process_and_compute_what_separate_ones_do(
    make_job, teacher_dir: Path, tmp_path: Path
) -> None:
    job = make_job(teacher={"model": str(teacher_dir)})
    processes, steps = {}, {}
    for colocate in (True, False):
        options = RunOptions(
            backend="ray",
            device="cpu",
            output_dir=tmp_path / f"colocate-{colocate}",
            progress=False,
            ray_num_cpus=2,
            colocate=colocate,
        )
        run = setup_run(job, options)
        try:
            processes[colocate] = {
                name: ray.get(getattr(run.roles, name).handles[0].__ray_call__.remote(_pid))
                for name in run.roles.names
            }
            train_step(run, run.train[:2])
            # The second step samples from the weights the first one synced (in the worker when
            # colocated, through the object store when not).
            steps[colocate] = train_step(run, run.train[2:4])
        finally:
            run.close()
    assert len(set(processes[True].values())) == 1
    assert len(set(processes[False].values())) == 3
    (together, batch), (apart, apart_batch) = steps[True], steps[False]
    assert together["weight_sync/bytes"] == apart["weight_sync/bytes"] > 0
    assert torch.equal(batch.response_ids, apart_batch.response_ids)
    torch.testing.assert_close(batch.teacher_logprobs, apart_batch.teacher_logprobs)
    for key in ("distill/kl_per_token", "actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert together[key] == pytest.approx(apart[key], rel=1e-5, abs=1e-7), key
    assert together["actor/grad_norm"] > 0


def _pid(_worker: object) -> int:
    import os

    return os.getpid()


def _wait_for(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.slow
def test_cluster_resources_and_sharded_teacher(
    make_job, teacher_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    # Ray workers keep the directory the driver had at ray.init, the driver then moves: the
    # relative checkpoint.uri, resolved once at set-up, still names one place for both.
    (tmp_path / "actor-pod").mkdir()
    (tmp_path / "head-pod").mkdir()
    monkeypatch.chdir(tmp_path / "actor-pod")
    roles = {"rollout": 2.0, "actor": 1.0, "teacher": 2.0}
    ray.init(num_cpus=2, num_gpus=2, resources=roles, include_dashboard=False, log_to_driver=False)
    try:
        job = make_job(
            teacher={"model": str(teacher_dir)},
            resources={
                "rollout": {"replicas": 2, "gpusPerReplica": 1, "tensorParallelSize": 1},
                "actor": {"gpusPerReplica": 0},
                "teacher": {"replicas": 2, "gpusPerReplica": 0},
            },
            checkpoint={"uri": "ckpt", "keep": 1},
        )
        options = RunOptions(
            backend="ray", device="cpu", output_dir=tmp_path / "out", progress=False
        )
        run = setup_run(job, options)
        try:
            # Every replica holds one unit of its role's resource; the rollout groups their GPU.
            free = ray.available_resources()
            assert all(free.get(name, 0) == 0 for name in [*roles, "GPU"]), free
            assert len(run.roles.teacher.handles) == 2
            # One prompt per rollout replica: seeded alike, they would sample alike.
            prompt = run.train[0].token_ids
            twice = run.roles.rollout.generate([prompt, prompt], 4, run.sampling)
            assert not torch.equal(twice.response_ids[:4], twice.response_ids[4:])
            # A resume gives each replica its own stream back, replica 1's too.
            saved = run.roles.rollout.sampling_state()
            assert len(saved["replicas"]) == 2
            first = run.roles.rollout.generate([prompt, prompt], 4, run.sampling)
            run.roles.rollout.load_sampling_state(saved)
            again = run.roles.rollout.generate([prompt, prompt], 4, run.sampling)
            assert torch.equal(again.response_ids, first.response_ids)
            _, batch = train_step(run, run.train[:2])
            monkeypatch.chdir(tmp_path / "head-pod")
            for step in (1, 2):
                checkpoint(run, step, epoch=0)
        finally:
            run.close()
        assert ray.is_initialized()  # not started by the run: left running
        assert _wait_for(lambda: ray.available_resources().get("teacher") == 2.0)
    finally:
        ray.shutdown()
    # The actor wrote its part, the driver its state and the manifest, and pruned step 1.
    actor_disk = tmp_path / "actor-pod" / "ckpt"
    assert run.last_checkpoint == str(actor_disk / "global_step_2")
    assert [p.name for p in actor_disk.iterdir()] == ["global_step_2"]
    assert {p.name for p in (actor_disk / "global_step_2").iterdir()} == {
        "actor",
        "driver_state.pt",
        "manifest.json",
    }
    assert (actor_disk / "global_step_2" / "actor" / "config.json").is_file()
    assert not (tmp_path / "head-pod" / "ckpt").exists()
    # The two shards together equal one teacher scoring the whole batch.
    cfg = RoleConfig(
        model=str(teacher_dir), device="cpu", seed=0, temperature=1.0, micro_batch_size=16
    )
    torch.testing.assert_close(batch.teacher_logprobs, HFTeacher(cfg).compute_logprobs(batch))
