"""Any role as a group of Ray actors with the role's own method surface.

`RayRoleGroup(HFTeacher, cfg, placement)` answers `compute_logprobs(batch)` exactly like an
`HFTeacher` would, so the driver cannot tell the backends apart. Calls are dispatched by kind:

- sharded (`generate`, `compute_logprobs`, `compute_values`): the rows are split across the
  replicas and the results concatenated in order;
- broadcast (`load_weights`): every replica gets the same argument; replica 0's answer returns;
- by reference (`get_weights`): returns the Ray ObjectRef, which a later broadcast passes on
  from object store to workers without a round trip through the driver;
- anything else runs on replica 0 (the trainable roles have one replica until FSDP lands),
  e.g. `save_checkpoint`, which saves, writes trainer_state.json and prunes on that replica's pod.

Replica r gets the role's config with seed + r, so sampling replicas draw different streams.

On a KubeRay cluster each worker group advertises a custom resource named after its role
(`rollout`, `actor`, `teacher`, `critic`); a replica asks for one unit of it and the group's GPUs.
Locally no such resource exists and the replicas ask for nothing (a share of the GPU on CUDA).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from distill_trainer.batch import RolloutBatch
from distill_trainer.roles.base import LogprobOutput, Rollouts

log = logging.getLogger(__name__)

SHARDED = frozenset({"generate", "compute_logprobs", "compute_values"})
BROADCAST = frozenset({"load_weights"})
BY_REFERENCE = frozenset({"get_weights"})


@dataclass(frozen=True)
class Placement:
    """Where a role's replicas go."""

    replicas: int = 1
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)


def init_ray(num_cpus: int | None) -> bool:
    """Connect to the cluster in RAY_ADDRESS, else start a local Ray; True if we started it."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        log.info("connected to Ray at %s", os.environ["RAY_ADDRESS"])
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    log.info("started a local Ray with %s CPUs", num_cpus or os.cpu_count())
    return True


def placement_for(
    role: str, replicas: int, gpus_per_replica: int, device: str, local_roles: int
) -> Placement:
    """Cluster: one unit of the role's resource plus its GPUs; local: a share of the GPU."""
    if ray.cluster_resources().get(role, 0) > 0:
        return Placement(replicas, float(gpus_per_replica), {role: 1.0})
    share = 1.0 / local_roles if device == "cuda" else 0.0
    return Placement(1, share, {})


def replica_config(cfg: Any, rank: int) -> Any:
    """Replica `rank`'s config: the seed offset by the rank (one seed would make every rollout
    replica sample the same responses to the same prompt)."""
    if rank == 0 or not dataclasses.is_dataclass(cfg) or not hasattr(cfg, "seed"):
        return cfg
    return dataclasses.replace(cfg, seed=cfg.seed + rank)


class RayRoleGroup:
    """Replicas of one role class as Ray actors, called like the class itself."""

    def __init__(self, role_cls: type, cfg: Any, placement: Placement, pad_token_id: int = 0):
        remote_cls = ray.remote(role_cls)
        options = {"num_cpus": 0, "num_gpus": placement.num_gpus}
        if placement.resources:
            options["resources"] = placement.resources
        self.handles = [
            remote_cls.options(**options).remote(replica_config(cfg, rank))
            for rank in range(placement.replicas)
        ]
        self.pad_token_id = pad_token_id
        # Surface a failing constructor (missing model, bad path) here, not at the first call.
        ray.get([h.__ray_ready__.remote() for h in self.handles])

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(method, args, kwargs)

        return call

    def _call(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if method in BY_REFERENCE:
            return getattr(self.handles[0], method).remote(*args, **kwargs)
        if method in BROADCAST:
            return ray.get([getattr(h, method).remote(*args, **kwargs) for h in self.handles])[0]
        if method in SHARDED and len(self.handles) > 1:
            shards = split_rows(args[0], len(self.handles))
            refs = [
                getattr(h, method).remote(shard, *args[1:], **kwargs)
                for h, shard in zip(self.handles, shards, strict=False)
            ]
            return merge_results(ray.get(refs), self.pad_token_id)
        return ray.get(getattr(self.handles[0], method).remote(*args, **kwargs))

    def kill(self) -> None:
        for handle in self.handles:
            ray.kill(handle)


def merge_results(parts: list[Any], pad_token_id: int) -> Any:
    """Concatenate the replicas' results of a sharded call, in shard order."""
    first = parts[0]
    if isinstance(first, Rollouts):
        return Rollouts.concat(parts, pad_token_id)
    if isinstance(first, LogprobOutput):
        entropy = None
        if first.entropy is not None:
            entropy = torch.cat([p.entropy for p in parts])
        return LogprobOutput(torch.cat([p.logprobs for p in parts]), entropy)
    return torch.cat(parts)


def split_rows(rows: list | RolloutBatch, parts: int) -> list[Any]:
    """Split a prompt list or a batch into at most `parts` consecutive, non-empty pieces."""
    size = len(rows) if isinstance(rows, list) else rows.size
    step = -(-size // parts)
    if isinstance(rows, list):
        return [rows[i : i + step] for i in range(0, size, step)]
    return list(rows.chunks(step))
