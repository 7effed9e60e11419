"""The actor's weights to the vLLM engines by vLLM's NCCL weight-transfer engine (cluster path).

`rollout.weightSync` (docs/spec.md) picks how weights reach the engines after each update:
`reload` hands `Weights` buckets through Ray's object store to vLLM's in-place reload
(roles/rollout_vllm.py); `nccl` broadcasts them from actor rank 0's GPU into the engines' GPUs
with vLLM's own engines (`vllm/distributed/weight_transfer/`): `NCCLTrainerWeightTransferEngine`
here, `NCCLWeightTransferEngine` in each vLLM worker. `weight_sync_path` resolves `auto`.

The protocol, as vLLM implements it:

- One NCCL group of 1 + the engines' workers: actor rank 0 is rank 0, the sender. It hosts the
  rendezvous, a TCPStore at its node's address and a free port (vLLM's StatelessProcessGroup);
  each vLLM worker joins as rank `rank_offset` + its rank inside its engine (TP × PP). Every rank
  blocks in init until all have arrived, so the engines' `init_weight_transfer_engine` and the
  sender's endpoint must be entered at once: vLLM's trainer engine runs the client's init on a
  thread while it opens its endpoint. Init happens once, after the roles are up.
- vLLM's trainer engine sends one `rank_offset` (1), right for one engine; our rollout replicas
  are separate engines, so `EngineGroupClient` gives replica r the offset 1 + the workers of the
  replicas before it.
- Per sync: `start_weight_update` on every engine (vLLM's layerwise reload begins), then the
  engines' `update_weights(names, dtypes, shapes)` concurrently with the sender's broadcast (NCCL
  pairs them), then `finish_weight_update`, where each engine also sets the weight version and
  drops its prefix cache (as after a reload). vLLM loads what arrives with the model's own
  `load_weights`, so names are the checkpoint's (Hugging Face) names.
- Packed: both sides cut the stream into byte buffers of `packed_buffer_size_bytes`, the sender
  from the tensors, the receivers from the metadata, so `metadata()` must equal iteration name
  for name, dtype and shape (vLLM checks it on the sender).
- Every actor rank iterates the source (each full tensor is an FSDP all-gather); rank 0 alone
  yields, on its GPU, in the engines' dtype (bf16), a tied `lm_head.weight` left out (vLLM ties
  it to the embeddings itself).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from distill_api.v1alpha1 import RolloutEngineName, WeightSync
from distill_trainer.roles import fsdp
from distill_trainer.roles.base import DEFAULT_BUCKET_BYTES, unaliased_state

log = logging.getLogger(__name__)

NamedTensors = Iterable[tuple[str, Tensor]]
BACKEND = "nccl"  # vLLM's weight-transfer backend name, on both sides


def weight_sync_path(
    requested: WeightSync, engine: RolloutEngineName, separate_gpu_workers: bool
) -> WeightSync:
    """`auto` → nccl for vLLM engines whose GPUs are on other workers than the actor's, reload
    otherwise; nccl asked for where it cannot run is an error naming the field. (One GPU shared
    by every role cannot hold two ranks of an NCCL group, and HF engines have no receiver.)"""
    if requested == WeightSync.RELOAD:
        return WeightSync.RELOAD
    possible = engine == RolloutEngineName.VLLM and separate_gpu_workers
    if requested == WeightSync.NCCL and not possible:
        raise ValueError(
            "rollout.weightSync: nccl needs vLLM engines and the actor on GPUs of separate Ray "
            f"workers (a DistillJob's cluster); this run has engine {engine.value} and "
            f"{'separate' if separate_gpu_workers else 'no separate'} GPU workers: use reload"
        )
    return WeightSync.NCCL if possible else WeightSync.RELOAD


def separate_gpu_workers(cluster_resources: dict[str, float], actor_gpus: int) -> bool:
    """Rollout and actor workers of a DistillJob's cluster (their role resources exist, see
    roles/group.py), the actor's with GPUs (the rollout group always has some)."""
    on_cluster = all(cluster_resources.get(role, 0) > 0 for role in ("rollout", "actor"))
    return on_cluster and actor_gpus > 0


def _wire_dtype(tensor: Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if tensor.is_floating_point() else tensor.dtype


def _no_merge(named: NamedTensors) -> Iterator[tuple[str, Tensor]]:
    yield from named


class ActorWeightSource:
    """The actor's full weights as vLLM's `WeightSource` (the two channels its NCCL engine reads;
    a plain class, so this module imports without vLLM): `metadata()` without gathering, each
    iteration one fresh pass of gathered tensors (on rank 0; the other ranks yield nothing).

    `merge` maps the model's named tensors to the engine's (roles/lora.py merges adapters; None
    passes them through). It runs on meta tensors for the metadata, so the names, shapes
    and dtypes are those of the real pass without moving a byte.
    """

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype,
        device: str,
        merge: Callable[[NamedTensors], Iterator[tuple[str, Tensor]]] | None = None,
    ) -> None:
        self.model, self.dtype, self.device = model, dtype, device
        self.merge = merge or _no_merge
        self._metadata: list[Any] | None = None

    def metadata(self) -> list[Any]:
        """vLLM `ParamMeta`s (name, wire dtype, full shape), computed once: they never change."""
        from vllm.distributed.weight_transfer.base import ParamMeta

        if self._metadata is None:
            shapes = (
                (name, torch.empty(t.shape, dtype=_wire_dtype(t, self.dtype), device="meta"))
                for name, t in unaliased_state(self.model)
            )
            self._metadata = [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.merge(shapes)]
        return self._metadata

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return self.merge(self._gathered())

    def _gathered(self) -> Iterator[tuple[str, Tensor]]:
        for name, tensor in unaliased_state(self.model):
            full = fsdp.full_tensor(tensor.detach())  # a collective: every rank runs it
            if fsdp.rank() == 0:
                yield name, full.to(self.device, dtype=_wire_dtype(full, self.dtype))
            del full

    @property
    def nbytes(self) -> int:
        return sum(m.dtype.itemsize * math.prod(m.shape) for m in self.metadata())


class EngineGroupClient:
    """vLLM's `VLLMWeightSyncClient` protocol over the rollout group's engine actors
    (`VLLMRolloutEngine` in Ray): each call goes to every replica and waits for all of them."""

    def __init__(self, engines: list[Any], workers: list[int]) -> None:
        self.engines, self.workers = engines, workers
        self.version = 0  # what finish_weight_update tells the engines they now hold

    def _all(self, method: str, *args: Any) -> None:
        import ray

        ray.get([getattr(e, method).remote(*args) for e in self.engines])

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        import ray

        offsets = [1 + sum(self.workers[:r]) for r in range(len(self.engines))]
        ray.get(
            [
                e.init_weight_transfer.remote({**init_info, "rank_offset": offset})
                for e, offset in zip(self.engines, offsets, strict=True)
            ]
        )

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._all("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", self.version)


class WeightSender:
    """The actor side of the NCCL path; every actor rank holds one, rank 0 sends."""

    def __init__(self, source: ActorWeightSource, engines: list[Any]) -> None:
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        rank = fsdp.rank()
        workers, address, port = [], "", 0
        if rank == 0:  # only the sender rendezvouses and talks to the engines
            import ray

            workers = ray.get([e.weight_transfer_ranks.remote() for e in engines])
            address, port = fsdp.free_address()
        self.client = EngineGroupClient(engines, workers)
        self.source = source
        info = NCCLTrainerInitInfo(
            master_address=address,
            master_port=port,
            world_size=1 + sum(workers),
            rank=rank,
            packed=True,
            packed_buffer_size_bytes=DEFAULT_BUCKET_BYTES,
        )
        started = time.perf_counter()
        self.engine = WeightTransferTrainerFactory.trainer_init(
            info, client=self.client, source=source
        )
        if rank == 0:
            log.info(
                "NCCL weight transfer: %d engine workers at %s:%d joined in %.1fs",
                sum(workers),
                address,
                port,
                time.perf_counter() - started,
            )

    def send(self, version: int) -> dict[str, float]:
        """Broadcast the current weights as `version`; returns `weight_sync/bytes` sent."""
        self.client.version = version
        self.engine.send_weights()
        return {"weight_sync/bytes": float(self.source.nbytes)}
