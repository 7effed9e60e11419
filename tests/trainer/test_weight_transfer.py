"""rollout.weightSync: which path a placement gets, and the NCCL sender's stream checked on CPU.

The NCCL broadcast itself needs GPUs (vLLM's PyNcclCommunicator) and cannot run here; what can
is checked with vLLM's own code: the sender's metadata against its iteration (the check vLLM's
trainer engine makes before broadcasting), and vLLM's byte packing, cut the way the receivers
cut it from the metadata, unpacked back into the actor's tensors. tests/trainer/test_vllm.py
loads the same stream into a real vLLM engine and runs the receiver's lifecycle.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distill_api.v1alpha1 import LoraConfig, RolloutEngineName, WeightSync
from distill_trainer.config import ActorConfig, OptimConfig
from distill_trainer.roles.weight_transfer import (
    ActorWeightSource,
    separate_gpu_workers,
    weight_sync_path,
)

VLLM, HF = RolloutEngineName.VLLM, RolloutEngineName.HF
CLUSTER = {"CPU": 48.0, "GPU": 4.0, "head": 1.0, "rollout": 1.0, "actor": 1.0, "teacher": 1.0}


@pytest.mark.parametrize(
    ("resources", "actor_gpus", "engine", "path"),
    [
        ({"CPU": 2.0}, 0, VLLM, WeightSync.RELOAD),  # local Ray on a CPU machine
        ({"CPU": 16.0, "GPU": 1.0}, 1, VLLM, WeightSync.RELOAD),  # one local GPU for every role
        (CLUSTER, 1, VLLM, WeightSync.NCCL),  # a DistillJob's cluster
        (CLUSTER, 0, VLLM, WeightSync.RELOAD),  # CPU actor pods: nothing to broadcast from
        (CLUSTER, 1, HF, WeightSync.RELOAD),  # HF engines have no receiver
        ({**CLUSTER, "actor": 0.0}, 1, VLLM, WeightSync.RELOAD),
    ],
)
def test_auto_picks_nccl_only_for_vllm_on_separate_gpu_workers(
    resources: dict[str, float], actor_gpus: int, engine: RolloutEngineName, path: WeightSync
) -> None:
    separate = separate_gpu_workers(resources, actor_gpus)
    assert weight_sync_path(WeightSync.AUTO, engine, separate) == path
    assert weight_sync_path(WeightSync.RELOAD, engine, separate) == WeightSync.RELOAD


def test_nccl_where_it_cannot_run_names_the_field() -> None:
    assert weight_sync_path(WeightSync.NCCL, VLLM, True) == WeightSync.NCCL
    for engine, separate in [(VLLM, False), (HF, True)]:
        with pytest.raises(ValueError, match=r"^rollout\.weightSync: nccl needs"):
            weight_sync_path(WeightSync.NCCL, engine, separate)


def test_in_process_runs_reload(make_job) -> None:
    from distill_trainer.roles import weight_sync

    assert weight_sync(make_job().spec, VLLM, "inprocess") == WeightSync.RELOAD
    job = make_job(rollout={"engine": "vllm", "weightSync": "nccl"})
    with pytest.raises(ValueError, match=r"^rollout\.weightSync: nccl needs"):
        weight_sync(job.spec, VLLM, "inprocess")


# ----------------------------------------------------------------- the sender's stream, on CPU


def _actor(model: Path, lora: LoraConfig | None = None):
    from distill_trainer.roles.trainer import HFActor

    optim = OptimConfig(1e-3, ppo_epochs=1, mini_batch_size=8, grad_clip=1.0, loss_agg="token-mean")
    return HFActor(
        ActorConfig(
            model=str(model),
            device="cpu",
            seed=0,
            temperature=1.0,
            micro_batch_size=8,
            train=True,
            optim=optim,
            lora=lora,
        )
    )


@pytest.fixture(scope="module")
def actor(student_dir: Path):
    return _actor(student_dir)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _checked(source: ActorWeightSource) -> list[tuple[str, torch.Tensor]]:
    """One pass, through vLLM's own check that iteration agrees with metadata() (what its
    trainer engine runs on the sender before broadcasting; a mismatch raises there)."""
    pytest.importorskip("vllm")
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

    return list(NCCLTrainerWeightTransferEngine._checked_iter(source, source.metadata()))


def test_sender_streams_the_checkpoint_names_in_bf16_without_the_tied_head(actor) -> None:
    source = ActorWeightSource(actor.model, torch.bfloat16, "cpu")
    sent = _checked(source)
    hf_names = [n for n in actor.model.state_dict() if n != "lm_head.weight"]
    assert actor.model.config.tie_word_embeddings
    assert [name for name, _ in sent] == hf_names  # the engine's reload path sends the same
    assert [name for name, _ in actor.get_weights().items()] == hf_names
    # Sharded (DTensor) when an earlier test left a process group up in this process.
    params = {n: _full(p.detach()) for n, p in actor.model.named_parameters()}
    for name, tensor in sent:
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, params[name].to(torch.bfloat16)), name
    assert source.nbytes == sum(t.numel() * 2 for _, t in sent)
    assert [name for name, _ in _checked(source)] == hf_names  # each pass is a fresh one


def test_lora_sender_streams_merged_weights_under_the_base_names(student_dir: Path, actor) -> None:
    from distill_trainer.roles.lora import lora_scaling, merged_named_tensors

    lora = LoraConfig(rank=4, alpha=8.0)
    adapted = _actor(student_dir, lora)
    with torch.no_grad():  # B = 0 at the start: give it values so the merge shows
        for name, param in adapted.model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.1)
    source = ActorWeightSource(
        adapted.model,
        torch.float32,
        "cpu",
        lambda named: merged_named_tensors(named, lora_scaling(lora)),
    )
    sent = dict(_checked(source))
    # the same student without adapters
    base = {n: _full(p.detach()) for n, p in actor.model.named_parameters()}
    assert sorted(sent) == sorted(base)  # in merge order: a layer once its W, A and B are in
    expected = dict(adapted.get_weights().items())  # the reload path's merged weights
    assert list(expected) == list(sent)
    moved = {n for n in sent if not torch.equal(sent[n], base[n])}
    assert moved and all(n.endswith("proj.weight") for n in moved)  # adapters merged in
    for name, tensor in sent.items():
        assert torch.equal(tensor, expected[name]), name


def _nbytes(meta) -> int:
    return meta.dtype.itemsize * math.prod(meta.shape)


def test_vllm_packing_round_trips_as_the_receivers_cut_it(actor) -> None:
    """vLLM's `pack_tensors` (the sender's buffers) against the receivers' rule: they read only
    the metadata and close a buffer after the tensor that takes it past the buffer size."""
    pytest.importorskip("vllm")
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors, unpack_tensor

    source = ActorWeightSource(actor.model, torch.bfloat16, "cpu")
    buffer_bytes = source.nbytes // 5  # several buffers per sync, as for a real model
    stream = iter(source)
    chunks = []
    while (chunk := pack_tensors(stream, lambda item: item[1], buffer_bytes)) is not None:
        chunks.append(chunk)
    expected_cuts, size = [[]], 0
    for meta in source.metadata():
        expected_cuts[-1].append(meta)
        size += _nbytes(meta)
        if size > buffer_bytes:
            expected_cuts.append([])
            size = 0
    expected_cuts = [cut for cut in expected_cuts if cut]
    assert len(chunks) == len(expected_cuts) > 2
    params = {n: _full(p.detach()) for n, p in actor.model.named_parameters()}
    for chunk, cut in zip(chunks, expected_cuts, strict=True):
        assert chunk.names == [m.name for m in cut]
        sizes = [_nbytes(m) for m in cut]
        assert chunk.packed_tensor.dtype == torch.uint8
        assert chunk.packed_tensor.numel() == sum(sizes)
        unpacked = unpack_tensor(
            chunk.packed_tensor,
            [m.name for m in cut],
            [list(m.shape) for m in cut],
            [m.dtype for m in cut],
            sizes,
        )
        for name, tensor in unpacked:
            assert torch.equal(tensor, params[name].to(torch.bfloat16)), name
