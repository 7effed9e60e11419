"""torch.distributed for the training workers: the process group, FSDP2 sharding, full weights.

A role's Ray group (roles/group.py) starts one worker per rank and calls `init_process_group` in
each before the role is built; the role then shards its model with `shard_model`. In-process
there is no process group, and a group of one rank shards nothing: every helper here then acts on
the one unsharded model (the world of one), so roles/trainer.py has a single code path for all.

- nccl on CUDA, gloo on CPU; `timeout_s` bounds every collective, so a dead or stuck rank turns
  into an error on the others instead of a hang.
- FSDP2 (`fully_shard`) per decoder layer, then the root (embeddings, final norm and the head,
  which stay together so tied embeddings remain one parameter). On CUDA the trained roles keep
  float32 master weights and compute in bf16 with float32 gradient reduction.
- Full weights leave the shards one tensor at a time (`full_tensor()`), on rank 0's CPU, so no
  rank ever holds a second full copy on its device.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.tensor import DTensor

from distill_trainer.roles.base import unaliased_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rendezvous:
    """Where rank `rank` of `world_size` meets the others (rank 0's address)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    timeout_s: float


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port, for rank 0 to host the rendezvous."""
    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def init_process_group(rdv: Rendezvous, device: str) -> None:
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)  # Ray shows each worker only its own GPU(s)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{rdv.master_addr}:{rdv.master_port}",
        rank=rdv.rank,
        world_size=rdv.world_size,
        timeout=timedelta(seconds=rdv.timeout_s),
    )
    log.info("rank %d/%d joined the %s group", rdv.rank, rdv.world_size, backend)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def sum_over_ranks(values: Tensor) -> Tensor:
    """Element-wise sum of a float64 CPU tensor over the ranks (itself in a world of one)."""
    if world_size() == 1:
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = values.to(device)
    dist.all_reduce(total)
    return total.cpu()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` in rank order (a list of one in a world of one); collective."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def max_over_ranks(value: int) -> int:
    if world_size() == 1:
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([value], device=device)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return int(total.item())


def shard_model(
    model: nn.Module,
    layers: nn.ModuleList,
    device: str,
    train: bool,
    checkpointing: bool,
    dropout: bool = False,
) -> nn.Module:
    """Activation checkpointing per decoder layer (`layers`), then FSDP2 over two or more ranks.

    Checkpointing wraps the layers (torch's wrapper, as torchtitan does, so it holds in eval
    mode too; state_dict names are unchanged); only each layer's input is kept for backward.
    With `dropout` (a model that trains in train mode, e.g. LoRA dropout) the re-run forward in
    backward restores the RNG first, so it draws the forward's masks again: a fresh draw makes
    the gradient that of another network. Without dropout nothing is random, and saving the RNG
    state per layer would only cost time.
    """
    if checkpointing:
        for index, layer in enumerate(layers):
            layers[index] = checkpoint_wrapper(layer, preserve_rng_state=dropout)
    if world_size() == 1:
        # Nothing to shard, and FSDP2's per-parameter DTensors cost more than the model's own
        # compute on a small model (a world of one on local Ray ran its updates up to 1.7x slower).
        return model.to(device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device, (world_size(),))
    policy = MixedPrecisionPolicy()
    if device == "cuda" and train:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor from a DTensor's shards (a collective); a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_named_tensors(
    model: nn.Module, dtype: torch.dtype | None, aliases: bool = True
) -> Iterator[tuple[str, Tensor]]:
    """(name, full tensor on CPU) for each state-dict entry, on rank 0; nothing elsewhere.
    `aliases=False`: a tied weight once (what the rollout engines take; they tie it again).

    Every rank must drain the iterator: each tensor is gathered by a collective.
    """
    entries = model.state_dict().items() if aliases else unaliased_state(model)
    for name, tensor in entries:
        full = full_tensor(tensor.detach())
        if rank() == 0:
            yield name, full.to("cpu", dtype=dtype if full.is_floating_point() else None)
        del full


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip by the global norm over every rank's shards; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(full_tensor(norm))
