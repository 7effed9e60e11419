"""A world-size-2 FSDP2 actor group (gloo, local Ray) against one process on the same batch, and
the demo job with `resources.actor.replicas: 2`.

One Ray session for the module (each rank imports torch and transformers, which dominates): the
gathered weights equal the unsharded model's, the group's logprobs equal one process's, one
update leaves the same parameters as one process's update, the ranks split the driver's torch
threads and a world of one is not sharded, a rank that dies fails the next call
with an error naming the role and the rank, and examples/demo-distill.yaml trains and saves with
two actor ranks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from distill_api.v1alpha1 import LoraConfig
from distill_trainer.batch import RolloutBatch
from distill_trainer.cli import load_document
from distill_trainer.config import ActorConfig, OptimConfig, RolloutConfig, RunOptions
from distill_trainer.driver import run_job
from distill_trainer.roles import SamplingParams
from distill_trainer.roles.group import Placement, RayTrainingGroup, WorkerFailed, init_ray
from distill_trainer.roles.models import load_tokenizer
from distill_trainer.roles.rollout_hf import HFRolloutEngine
from distill_trainer.roles.trainer import HFActor

ray = pytest.importorskip("ray")

PROMPTS = ["What is 1 + 2?", "What is 3 + 3?", "What is 9 + 0?", "What is 4 + 4?"]


def _config(model_dir: Path) -> ActorConfig:
    # Mini-batches of 5, 5, 5 and 1 of the 16 rows; a 40-token budget holds one ~30-token row, so
    # a rank with 2 rows of a 5-row mini-batch runs a filler while the other runs its third row,
    # and the 1-row mini-batch leaves one rank with no rows at all (fillers only).
    optim = OptimConfig(1e-3, 1, 5, 1.0, "token-mean")
    return ActorConfig(
        model=str(model_dir),
        device="cpu",
        seed=0,
        temperature=1.0,
        micro_batch_size=16,
        max_tokens_per_micro_batch=40,
        gradient_checkpointing=True,
        logprob_chunk_tokens=16,
        train=True,
        optim=optim,
        collective_timeout_s=60.0,
    )


@pytest.fixture(scope="module")
def batch(student_dir: Path) -> RolloutBatch:
    tokenizer = load_tokenizer(str(student_dir))
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prompts[1] = prompts[1] + prompts[1][:9]  # unequal prompt lengths: shares differ in width
    engine = HFRolloutEngine(
        RolloutConfig(
            model=str(student_dir), device="cpu", seed=0, temperature=1.0, micro_batch_size=16
        )
    )
    out = engine.generate(prompts, 4, SamplingParams(10, temperature=1.0)).to_batch(4)
    out.old_logprobs = out.rollout_logprobs
    out.advantages = torch.linspace(-1, 1, out.size)[:, None] * out.response_mask
    return out


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    assert init_ray(2)  # the trainer's own local Ray
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def group(ray_session, student_dir: Path) -> Iterator[RayTrainingGroup]:
    actors = RayTrainingGroup.start("actor", HFActor, _config(student_dir), Placement(replicas=2))
    yield actors
    actors.kill()


def _state(weights) -> dict[str, torch.Tensor]:
    return dict(weights.items())


@pytest.mark.slow
def test_two_ranks_equal_one_process(group, batch: RolloutBatch, student_dir: Path) -> None:
    single = HFActor(_config(student_dir))
    # The weights gathered from the shards are the unsharded model's state dict.
    gathered = _state(ray.get(group.get_weights()))
    unsharded = {k: v.clone() for k, v in single.model.state_dict().items()}
    # The tied lm_head is the embedding: sent once (gathered shards no longer share memory, so
    # it used to go twice), as one process sends it; the engines tie it again.
    assert single.model.config.tie_word_embeddings
    assert gathered.keys() == unsharded.keys() - {"lm_head.weight"}
    assert _state(single.get_weights()).keys() == gathered.keys()
    for name, tensor in gathered.items():
        assert torch.equal(tensor, unsharded[name]), name

    sharded_lp = group.compute_logprobs(batch, with_entropy=True)
    single_lp = single.compute_logprobs(batch, with_entropy=True)
    torch.testing.assert_close(sharded_lp.logprobs, single_lp.logprobs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sharded_lp.entropy, single_lp.entropy, atol=1e-6, rtol=1e-5)

    sharded_metrics = group.update(batch)
    single_metrics = single.update(batch)
    after = _state(ray.get(group.get_weights()))
    moved = 0.0
    for name, tensor in single.model.state_dict().items():
        if name in after:
            torch.testing.assert_close(after[name], tensor, atol=1e-5, rtol=0, msg=name)
            moved = max(moved, (tensor - unsharded[name]).abs().max().item())
    assert moved > 1e-4  # the update did move the weights
    assert ray.get(group.get_weights()).version == 1
    for key in ("actor/pg_loss", "actor/grad_norm"):
        assert sharded_metrics[key] == pytest.approx(single_metrics[key], rel=1e-4, abs=1e-6)


def _worker_facts(worker) -> tuple[int, int, bool]:
    """(torch threads, niceness, whether the role's parameters are FSDP2 shards) inside a rank
    worker."""
    from torch.distributed.tensor import DTensor

    def facts(rank_worker):
        params = list(rank_worker.roles["actor"].model.parameters())
        sharded = all(isinstance(p, DTensor) for p in params)
        return torch.get_num_threads(), os.nice(0), sharded

    return ray.get(worker.__ray_call__.remote(facts))


@pytest.mark.slow
def test_ranks_share_the_drivers_threads_and_one_rank_is_not_sharded(
    group, student_dir: Path
) -> None:
    # Ray gives an actor that claims no CPUs one torch thread; locally the ranks split the
    # driver's, at the driver's priority (Ray's default niceness is 15). A world of one keeps a
    # plain module: FSDP2's DTensors made its updates up to 1.7x slower on the demo's model, for
    # nothing to shard.
    threads, niceness = torch.get_num_threads(), os.nice(0)
    per_rank = max(1, threads // 2)
    assert [_worker_facts(h) for h in group.handles] == [(per_rank, niceness, True)] * 2
    single = RayTrainingGroup.start("actor", HFActor, _config(student_dir), Placement(replicas=1))
    try:
        assert _worker_facts(single.handles[0]) == (threads, niceness, False)
    finally:
        single.kill()


@pytest.mark.slow
def test_a_resume_with_lora_dropout_continues_every_ranks_masks(
    ray_session, batch: RolloutBatch, student_dir: Path, tmp_path: Path
) -> None:
    """The ranks' RNG streams drift apart (their shares of a mini-batch differ), so each rank
    restores its own: rank 1 once restored rank 0's and drew other dropout masks."""
    config = dataclasses.replace(
        _config(student_dir),
        optim=OptimConfig(1e-2, 1, 5, 1.0, "token-mean"),
        lora=LoraConfig(rank=4, alpha=8, dropout=0.5),
    )
    actors = RayTrainingGroup.start("actor", HFActor, config, Placement(replicas=2))
    try:
        actors.update(batch)
        actors.save_checkpoint(str(tmp_path))
        actors.update(batch)
        uninterrupted = _state(ray.get(actors.get_weights()))
        actors.load_checkpoint(str(tmp_path))
        actors.update(batch)
        resumed = _state(ray.get(actors.get_weights()))
    finally:
        actors.kill()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


@pytest.mark.slow
def test_a_dead_rank_fails_the_call_naming_it(group, batch: RolloutBatch) -> None:
    ray.kill(group.handles[1])
    with pytest.raises(WorkerFailed, match="actor rank 1"):
        group.compute_logprobs(dataclasses.replace(batch))


@pytest.mark.slow
def test_demo_job_trains_with_two_actor_ranks(
    ray_session, repo_root: Path, student_dir: Path, teacher_dir: Path, data_dir: Path, tmp_path
) -> None:
    overrides = [
        f"student.model={student_dir}",
        f"teacher.model={teacher_dir}",
        f"data.train={data_dir / 'train.parquet'}",
        f"data.val={data_dir / 'test.parquet'}",
        "training.totalSteps=2",
        "training.testFreq=2",
        "resources.actor.replicas=2",
    ]
    job = load_document(repo_root / "examples" / "demo-distill.yaml", overrides)
    assert job.spec.resources.actor.replicas == 2
    options = RunOptions(
        backend="ray", device="cpu", output_dir=tmp_path, progress=False, val_before_train=False
    )
    summary = run_job(job, options)
    assert summary.steps == 2 and summary.history[-1]["actor/grad_norm"] > 0
    committed = tmp_path / "checkpoints" / "global_step_2"
    assert (committed / "manifest.json").is_file()
    assert (committed / "actor" / "model.safetensors").is_file()
    print(f"demo, 2 actor ranks: {summary.seconds:.1f} s for 2 steps")
