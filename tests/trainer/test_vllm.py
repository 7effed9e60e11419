"""The vLLM rollout engine, for real: vLLM's CPU build on a tiny model of the demo's shape.

One engine serves every test of this module (start-up takes seconds); the training runs build
their own, in-process and inside a local Ray actor. The shared engine is built with vLLM's NCCL
weight-transfer receiver (rollout.weightSync nccl) as well: the reload path runs beside it, and
the receiver's lifecycle runs for real, with vLLM's packed buffers handed over in-process where
a GPU cluster would broadcast them (NCCL needs GPUs). The model is the demo's student shape
(head size 64, which vLLM's CPU attention accepts), fine-tuned for a few seconds to answer the
arithmetic prompts with `\\boxed{d}` and a roughly uniform digit d, so samples at temperature 1
differ and responses end with an EOS after a few tokens.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from trainer.conftest import arithmetic_rows, job_document, one_thread, save_model

from distill_api import load_job
from distill_trainer import tiny
from distill_trainer.config import ActorConfig, OptimConfig, RolloutConfig, RunOptions
from distill_trainer.data import row_to_record
from distill_trainer.driver import run_job, train_step
from distill_trainer.prompts import prompt_batches
from distill_trainer.roles.base import Rollouts, SamplingParams, StaleWeightsError
from distill_trainer.setup import setup_run

pytest.importorskip("vllm")

TEMPERATURE = 0.7  # not 1, so the engine's logprobs must include the temperature
MAX_NEW = 8


@pytest.fixture(scope="module")
def demo_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, tiny.TinyModelConfig(max_positions=128), seed=0)
    rng = random.Random(0)
    records = [
        dataclasses.replace(row_to_record(row), ground_truth=str(rng.randint(0, 9)))
        for row in arithmetic_rows(64, seed=0)
    ]
    config = tiny.SftConfig(steps=120, batch_size=32, learning_rate=1e-2, warmup_steps=5)
    with one_thread():
        tiny.sft(model, tiny.encode_pairs(tokenizer, records), config, tokenizer.pad_token_id)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("demo-student"))


def _common(model: Path) -> dict:
    return {"model": str(model), "device": "cpu", "seed": 0, "temperature": TEMPERATURE}


@pytest.fixture(scope="module")
def engine(demo_student: Path):
    from distill_trainer.roles.rollout_vllm import VLLMRolloutEngine

    return VLLMRolloutEngine(
        RolloutConfig(
            **_common(demo_student),
            micro_batch_size=16,
            max_model_len=64 + MAX_NEW,
            weight_transfer="nccl",
        )
    )


@pytest.fixture(scope="module")
def actor(demo_student: Path):
    from distill_trainer.roles.trainer import HFActor

    optim = OptimConfig(
        1e-3, ppo_epochs=1, mini_batch_size=64, grad_clip=1.0, loss_agg="token-mean"
    )
    return HFActor(
        ActorConfig(**_common(demo_student), micro_batch_size=64, train=True, optim=optim)
    )


@pytest.fixture(scope="module")
def prompts(engine) -> list[list[int]]:
    """Four chat prompts of different lengths."""
    texts = ["What is 3 + 4?", "What is 12 + 5?", "Hi", "What is 2 + 2 + 2 + 2 + 2?"]
    tokenizer = engine.tokenizer
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
        )
        for t in texts
    ]
    return [tokenizer(chat, add_special_tokens=False)["input_ids"] for chat in chats]


def _random_advantages(rows: int) -> torch.Tensor:
    """One advantage a response, the same whichever tests ran before (own generator)."""
    return torch.randn(rows, 1, generator=torch.Generator().manual_seed(0))


def sampling(max_new: int = MAX_NEW, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new, temperature=TEMPERATURE, **kw)


def test_rollout_layout_masks_and_truncation(engine, prompts) -> None:
    n = 3
    out = engine.generate(prompts, n, sampling())
    rows, width = len(prompts) * n, max(len(p) for p in prompts)
    assert out.prompt_ids.shape == out.prompt_mask.shape == (rows, width)
    assert out.response_ids.shape == out.response_mask.shape == out.logprobs.shape
    assert out.response_ids.shape[0] == rows and out.response_ids.shape[1] <= MAX_NEW
    eos, pad = engine.eos_ids, engine.pad_id
    for row in range(rows):
        prompt = prompts[row // n]  # prompt-major: row i·n + j is sample j of prompt i
        assert out.prompt_ids[row, width - len(prompt) :].tolist() == prompt
        assert out.prompt_mask[row].sum() == len(prompt)
        length = int(out.response_mask[row].sum())
        assert out.response_mask[row, :length].all()  # 1.0 then 0.0
        assert (out.response_ids[row, length:] == pad).all()
        assert (out.logprobs[row, length:] == 0).all() and (out.logprobs[row, :length] < 0).all()
        ends_in_eos = out.response_ids[row, length - 1].item() in eos
        assert bool(out.truncated[row]) == (not ends_in_eos)
        assert not any(t in eos for t in out.response_ids[row, : length - 1].tolist())
    assert not out.truncated.all()  # the student answers `\boxed{d}` and stops
    short = engine.generate(prompts, n, sampling(max_new=2))
    assert short.truncated.any()  # cut in the middle of `\boxed{d}`
    assert short.response_mask[short.truncated].sum(1).eq(2).all()
    assert out.weight_version == engine.weight_version == 0


def test_sampled_logprobs_equal_actor_recomputed(engine, actor, prompts) -> None:
    n = 4
    batch = engine.generate(prompts, n, sampling()).to_batch(n)
    recomputed = actor.compute_logprobs(batch).logprobs
    mask = batch.response_mask.bool()
    gap = (batch.rollout_logprobs - recomputed).abs()[mask]
    assert gap.max().item() < 1e-3, gap.max()


def test_n_samples_differ_at_temperature_one_and_agree_greedy(engine, prompts) -> None:
    n = 8
    hot = engine.generate(prompts[:1], n, SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0))
    assert len({tuple(r) for r in hot.response_ids.tolist()}) > 1
    greedy = engine.generate(prompts[:1], n, SamplingParams(MAX_NEW, greedy=True, logprobs=False))
    assert len({tuple(r) for r in greedy.response_ids.tolist()}) == 1
    assert greedy.logprobs is None


def test_a_step_larger_than_one_scheduler_batch(engine, prompts) -> None:
    """More prompt tokens than vLLM schedules at once (bench/step.py's 32 prompts × 8 samples): the
    prefills queue up whole, never split, which vLLM's CPU runner cannot do with seeds."""
    n, many = 8, prompts * 16
    out = engine.generate(many, n, sampling(max_new=4))
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert sum(len(p) for p in many) * n > budget
    assert out.response_ids.shape[0] == len(many) * n


def test_update_then_sync_matches_updated_actor(engine, actor, prompts) -> None:
    """A PPO update moves the actor; after the sync vLLM samples from the moved actor (the same
    prompts again, so a prefix cache left from the old weights would show)."""
    n = 4
    batch = engine.generate(prompts, n, sampling()).to_batch(n)
    before = actor.compute_logprobs(batch).logprobs
    batch.old_logprobs = before
    batch.advantages = torch.where(batch.response_mask.bool(), _random_advantages(batch.size), 0.0)
    actor.update(batch)
    weights = actor.get_weights()
    assert weights.version == 1 and "lm_head.weight" not in dict(weights.items())  # tied
    metrics = engine.load_weights(weights)
    assert metrics["weight_sync/bytes"] == weights.nbytes > 0
    moved = (actor.compute_logprobs(batch).logprobs - before).abs()[batch.response_mask.bool()]
    # The update changed the model. No upper bound: Adam's first step moves every weight by about
    # the learning rate, and on this sharply fitted model that shifted about 14% of the sampled
    # tokens' logprobs by more than a nat (some by about 17), depending on which were sampled.
    assert moved.isfinite().all() and moved.max() > 1e-2
    after = engine.generate(prompts, n, sampling())
    assert after.weight_version == 1
    recomputed = actor.compute_logprobs(after.to_batch(n)).logprobs
    gap = (after.logprobs - recomputed).abs()[after.response_mask.bool()]
    assert gap.max().item() < 1e-3, gap.max()


def test_llm_kwargs_carry_the_weight_transfer_config(demo_student: Path) -> None:
    from transformers import AutoConfig

    from distill_trainer.roles.rollout_vllm import llm_kwargs

    hf_config = AutoConfig.from_pretrained(demo_student)
    cpu = RolloutConfig(**_common(demo_student), micro_batch_size=16)
    assert "weight_transfer_config" not in llm_kwargs(cpu, hf_config)  # reload: nothing to add
    gpu = dataclasses.replace(cpu, device="cuda", weight_transfer="nccl", tensor_parallel_size=2)
    kwargs = llm_kwargs(gpu, hf_config)
    assert kwargs["weight_transfer_config"].backend == "nccl"
    assert (kwargs["dtype"], kwargs["tensor_parallel_size"]) == ("bfloat16", 2)


def test_engine_workers_hold_vllms_nccl_receiver(engine) -> None:
    assert engine.llm.llm_engine.vllm_config.weight_transfer_config.backend == "nccl"
    receivers = engine.llm.collective_rpc(_receiver_class)
    assert receivers == ["NCCLWeightTransferEngine"]
    assert engine.weight_transfer_ranks() == 1  # one worker on CPU: NCCL rank offset + 0


def _receiver_class(worker) -> str:
    return type(worker.weight_transfer_engine).__name__


def _load_received(worker, named: list) -> None:
    """What vLLM's NCCLWeightTransferEngine does with each received buffer, once unpacked."""
    worker.weight_transfer_engine.model.load_weights(named)


def test_nccl_receiver_lifecycle_loads_the_senders_packed_stream(engine, actor, prompts) -> None:
    """After an update, the actor's NCCL stream (ActorWeightSource, vLLM's packing) goes through
    the engine's start_weight_update / update / finish_weight_update; vLLM then samples from the
    updated actor, at the actor's version. An update before the NCCL group exists is refused."""
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors, unpack_tensor

    from distill_trainer.roles.weight_transfer import ActorWeightSource

    n = 4
    batch = engine.generate(prompts, n, sampling()).to_batch(n)
    batch.old_logprobs = actor.compute_logprobs(batch).logprobs
    batch.advantages = torch.where(batch.response_mask.bool(), _random_advantages(batch.size), 0.0)
    actor.update(batch)
    version = actor.trainer.updates
    engine.start_weight_update()
    with pytest.raises(RuntimeError, match="NCCL weight transfer not initialized"):
        engine.update_weights({"names": [], "dtype_names": [], "shapes": []})
    # The failed update ended vLLM's session with the layers still waiting on the meta device:
    # the engine samples again only after a start/finish pair (here, the sync below).
    source = ActorWeightSource(actor.model, torch.float32, "cpu")
    engine.start_weight_update()
    stream, chunks = iter(source), 0
    while (chunk := pack_tensors(stream, lambda item: item[1], source.nbytes // 4)) is not None:
        received = chunk.packed_tensor.clone()  # the receiver's buffer after the broadcast
        sizes = chunk.tensor_sizes
        named = unpack_tensor(received, chunk.names, chunk.shapes, chunk.dtypes, sizes)
        engine.llm.collective_rpc(_load_received, args=(named,))
        chunks += 1
    engine.finish_weight_update(version)
    assert chunks > 2 and engine.weight_version == version > 0
    after = engine.generate(prompts, n, sampling())
    assert after.weight_version == version
    recomputed = actor.compute_logprobs(after.to_batch(n)).logprobs
    gap = (after.logprobs - recomputed).abs()[after.response_mask.bool()]
    assert gap.max().item() < 1e-3, gap.max()


def test_stale_weights_raise(engine, prompts) -> None:
    """Rollouts from an engine that missed the last sync, or a mix of replicas, are refused."""
    out = engine.generate(prompts[:1], 2, sampling())
    out.expect_weight_version(engine.weight_version)
    with pytest.raises(StaleWeightsError, match="missed a weight sync"):
        out.expect_weight_version(engine.weight_version + 1)
    older = dataclasses.replace(out, weight_version=engine.weight_version - 1)
    with pytest.raises(StaleWeightsError, match="different weight versions"):
        Rollouts.concat([out, older], engine.pad_id)


# ---------------------------------------------------------------------------------- training runs


def _job(student: Path, data_dir: Path, **spec):
    spec = {"rollout": {"engine": "vllm", "maxResponseLength": MAX_NEW}, **spec}
    doc = job_document(student, data_dir, "vllm-job", **spec)
    doc["spec"]["training"].update(totalSteps=3, testFreq=3, saveFreq=3)
    return load_job(doc)


@pytest.mark.slow
def test_three_steps_in_process(demo_student: Path, data_dir: Path, tmp_path: Path) -> None:
    job = _job(demo_student, data_dir, algorithm={"rolloutIsCap": 2.0})
    options = RunOptions(backend="inprocess", device="cpu", output_dir=tmp_path, progress=False)
    run = setup_run(job, options)
    try:
        assert type(run.roles.rollout).__name__ == "VLLMRolloutEngine"
        batches = prompt_batches(run.train, job.spec.training.batch_size, 0)
        history = [train_step(run, next(batches)[1])[0] for _ in range(3)]
        assert run.weight_version == 3 and run.roles.rollout.weight_version == 3
        for metrics in history:
            # Same weights, two implementations: the rollout correction has little to correct.
            assert metrics["rollout/logprob_mismatch"] < 1e-3
            assert metrics["weight_sync/bytes"] > 0 and metrics["timing_s/weight_sync"] > 0
        # An engine that missed a sync (here: reloaded the first weights) is an error.
        run.roles.rollout.load_weights(
            dataclasses.replace(run.roles.actor.get_weights(), version=2)
        )
        with pytest.raises(StaleWeightsError):
            train_step(run, next(batches)[1])
    finally:
        run.close()


@pytest.mark.slow
def test_three_steps_on_local_ray(demo_student: Path, data_dir: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    options = RunOptions(backend="ray", device="cpu", output_dir=tmp_path, progress=False)
    summary = run_job(_job(demo_student, data_dir), options)
    assert not ray.is_initialized()
    assert summary.steps == 3 and summary.roles == ["rollout", "actor", "teacher"]
    assert sorted(summary.val_rewards) == [0, 3]
    for step in summary.history[1:]:
        assert step["rollout/logprob_mismatch"] < 1e-3 and step["weight_sync/bytes"] > 0
