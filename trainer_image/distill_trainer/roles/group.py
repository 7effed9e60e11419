"""A role as a group of Ray actors with the role's own method surface.

Two kinds of group, both called exactly like the role class, so the driver cannot tell the
backends apart:

`RayTrainingGroup.start("actor", HFActor, cfg, placement)`: the actor, critic or teacher as ranks
of one torch.distributed process group (world size = replicas × gpusPerReplica, one rank per GPU;
on CPU pods one per pod), each holding FSDP2 shards (roles/fsdp.py) and running the worker body of
roles/trainer.py. Rank 0 names the rendezvous address; every rank then joins and builds its role:

- scattered (`compute_logprobs`, `compute_values`): the rows are split across the ranks by token
  count (batch.balanced_shares) and the results put back in row order;
- everything else (`update`, `get_weights`, `save_checkpoint`, …) runs on every rank, since
  each is a sequence of collectives; `update` gets the whole batch through one object-store
  reference and every rank trains on its share of each mini-batch; rank 0's result is returned
  (`get_weights`: rank 0's ObjectRef, passed on to the engines without touching the driver);
- a rank that dies fails the call at once with an error naming the role and the rank; the
  others then stop at their next collective's deadline (`collective_timeout_s`).

`RayTrainingGroup.colocated({"rollout": …, "actor": …, "teacher": …})`: every role in one worker
process, each called through a group of its own (a local Ray on CPU where each role has one rank:
roles/__init__.py `build_roles`, RunOptions.colocate).

`RayRoleGroup(HFRolloutEngine, cfg, placement)`: independent replicas (the rollout engines).
Calls are dispatched by kind:

- sharded (`generate`, `compute_logprobs`, `compute_values`): the rows are split across the
  replicas and the results concatenated in order;
- broadcast (`load_weights`): every replica gets the same argument; replica 0's answer returns;
- by reference (`get_weights`): returns the Ray ObjectRef, which a later broadcast passes on
  from object store to workers without a round trip through the driver;
- per replica (`sampling_state`, `load_sampling_state`): one state for each replica, in order;
- anything else runs on replica 0.

Replica r gets the role's config with seed + r, so sampling replicas draw different streams.

On a KubeRay cluster each worker group advertises a custom resource named after its role
(`rollout`, `actor`, `teacher`, `critic`), one unit per pod: a rollout engine asks for
tensorParallelSize GPUs and its share of a unit (gpusPerReplica / tensorParallelSize engines a
pod), a training rank for one GPU and 1/gpusPerReplica of a unit, so both fill their pods
exactly. Locally no such resource exists: rollout replicas ask for nothing
(a share of the GPU on CUDA); a training role gets replicas × max(gpusPerReplica, 1) ranks on
CPU and one rank on a local GPU (every role shares it, and nccl allows one rank per device).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

import ray
import torch

from distill_trainer.batch import RolloutBatch, balanced_shares, sequence_lengths
from distill_trainer.roles import fsdp
from distill_trainer.roles.base import (
    REPLICA_STATES,
    LogprobOutput,
    Rollouts,
    replica_sampling_states,
)

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
        # Ray starts workers at niceness 15 so that its own daemons stay responsive. Here the
        # workers are the job, and they share the cores with the driver and its grader pool
        # (niceness 0): at 15 a role lost a core to them whenever they woke, and its OpenMP
        # threads waited for the starved one at every barrier (teacher scoring 234 → 146 ms
        # on the demo: docs/benchmarks.md, change 10). A cluster's pods keep Ray's setting.
        _system_config={"worker_niceness": 0},
    )
    log.info("started a local Ray with %s CPUs", num_cpus or os.cpu_count())
    return True


def placement_for(
    role: str,
    replicas: int,
    gpus_per_replica: int,
    device: str,
    local_roles: int,
    tensor_parallel: int = 1,
) -> Placement:
    """Cluster: `engine_placement`; local: one engine, with a share of the GPU."""
    if ray.cluster_resources().get(role, 0) > 0:
        return engine_placement(role, replicas, gpus_per_replica, tensor_parallel)
    share = 1.0 / local_roles if device == "cuda" else 0.0
    return Placement(1, share, {})


def engine_placement(role: str, pods: int, gpus_per_pod: int, tensor_parallel: int) -> Placement:
    """Rollout engines on a cluster: gpusPerReplica / tensorParallelSize engines per pod (the CRD
    requires a multiple), each with its tensor-parallel GPUs and an equal share of the pod's
    unit of the role resource, so they fill the pods exactly; a CPU pod runs one engine."""
    engines = max(gpus_per_pod // max(tensor_parallel, 1), 1)
    return Placement(pods * engines, gpus_per_pod / engines, {role: 1.0 / engines})


def training_placement(
    role: str, replicas: int, gpus_per_replica: int, device: str, local_roles: int
) -> Placement:
    """Ranks of a training group (Placement.replicas = world size) and what each asks for."""
    per_pod = max(gpus_per_replica, 1)
    gpu = 1.0 if gpus_per_replica > 0 else 0.0
    if ray.cluster_resources().get(role, 0) > 0:
        return Placement(replicas * per_pod, gpu, {role: 1.0 / per_pod})
    if device == "cuda":
        return Placement(1, 1.0 / local_roles, {})
    return Placement(replicas * per_pod, 0.0, {})


def actor_options(placement: Placement) -> dict[str, Any]:
    """Ray options for each actor of a role.

    No CPUs are claimed (the roles take turns within a step, so claiming would only stop them
    sharing a node). Ray then sets OMP_NUM_THREADS=1 in the actor, so on a local Ray every
    phase ran on one thread however many cores the machine had: locally the replicas, which
    run at once, share the driver's torch threads instead. On a cluster (a role resource in the
    placement) each pod keeps Ray's setting.
    """
    options: dict[str, Any] = {"num_cpus": 0, "num_gpus": placement.num_gpus}
    if placement.resources:
        options["resources"] = placement.resources
    else:
        threads = max(1, torch.get_num_threads() // placement.replicas)
        options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    return options


def replica_config(cfg: Any, rank: int) -> Any:
    """Replica `rank`'s config: the seed offset by the rank (one seed would make every rollout
    replica sample the same responses to the same prompt)."""
    if rank == 0 or not dataclasses.is_dataclass(cfg) or not hasattr(cfg, "seed"):
        return cfg
    return dataclasses.replace(cfg, seed=cfg.seed + rank)


class _CalledLikeTheRole:
    """Any public method name becomes `self._call(method, args, kwargs)`: a group answers the
    role's own method surface, so the driver cannot tell it from the role class."""

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(method, args, kwargs)

        return call

    def _call(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError


class RayRoleGroup(_CalledLikeTheRole):
    """Replicas of one role class as Ray actors, called like the class itself."""

    def __init__(self, role_cls: type, cfg: Any, placement: Placement, pad_token_id: int = 0):
        remote_cls = ray.remote(role_cls).options(**actor_options(placement))
        self.handles = [
            remote_cls.remote(replica_config(cfg, rank)) for rank in range(placement.replicas)
        ]
        self.pad_token_id = pad_token_id
        # Surface a failing constructor (missing model, bad path) here, not at the first call.
        ray.get([h.__ray_ready__.remote() for h in self.handles])

    def _call(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if method in BY_REFERENCE:
            return getattr(self.handles[0], method).remote(*args, **kwargs)
        if method in BROADCAST:
            return ray.get([getattr(h, method).remote(*args, **kwargs) for h in self.handles])[0]
        if method in SHARDED and len(self.handles) > 1:
            shards = split_rows(args[0], len(self.handles))
            refs = [
                getattr(h, method).remote(*shard_args, **kwargs)
                for h, shard_args in zip(
                    self.handles, sharded_args(method, args, shards), strict=False
                )
            ]
            return merge_results(ray.get(refs), self.pad_token_id)
        return ray.get(getattr(self.handles[0], method).remote(*args, **kwargs))

    def sampling_state(self) -> dict[str, Any]:
        """Every replica's sampling state (each draws its own stream), in replica order."""
        return {REPLICA_STATES: ray.get([h.sampling_state.remote() for h in self.handles])}

    def load_sampling_state(self, state: dict[str, Any]) -> None:
        """Each replica takes its own state back. A state saved by one engine (in-process) is
        replica 0's; replicas the checkpoint did not have keep their seeded start."""
        states = replica_sampling_states(state, len(self.handles))
        ray.get(
            [h.load_sampling_state.remote(s) for h, s in zip(self.handles, states, strict=False)]
        )

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


def sharded_args(method: str, args: tuple, shards: list[Any]) -> list[tuple]:
    """Each shard's arguments. A seeded `generate` (validation) gives each shard the seed its
    first prompt would have had in one call, so no two replicas draw the same samples."""
    if method != "generate" or args[2].seed is None:
        return [(shard, *args[1:]) for shard in shards]
    prompts_before = [0, *accumulate(len(shard) for shard in shards[:-1])]
    n, sampling = args[1], args[2]
    return [
        (shard, n, replace(sampling, seed=sampling.seed + before * n))
        for shard, before in zip(shards, prompts_before, strict=True)
    ]


def split_rows(rows: list | RolloutBatch, parts: int) -> list[Any]:
    """Split a prompt list or a batch into at most `parts` consecutive, non-empty pieces."""
    size = len(rows) if isinstance(rows, list) else rows.size
    step = -(-size // parts)
    if isinstance(rows, list):
        return [rows[i : i + step] for i in range(0, size, step)]
    return list(rows.chunks(step))


RoleSpecs = dict[str, tuple[type, Any]]  # role name → (role class, its config)


class RankWorker:
    """One rank of a training group: joins the process group, then builds and serves its roles
    (one role; or, colocated, every role of a local run)."""

    def address(self) -> tuple[str, int]:
        return fsdp.free_address()

    def start(self, roles: RoleSpecs, rendezvous: fsdp.Rendezvous) -> None:
        from distill_trainer.roles.models import resolve_device

        device = resolve_device(next(iter(roles.values()))[1].device)
        fsdp.init_process_group(rendezvous, device)
        self.roles = {name: role_cls(cfg) for name, (role_cls, cfg) in roles.items()}

    def call(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.roles[role], method)(*args, **kwargs)

    def copy_weights(self, source: str, target: str) -> dict[str, float]:
        """Colocated: role `target` loads role `source`'s weights, as in one process."""
        return self.roles[target].load_weights(self.roles[source].get_weights())


class WorkerFailed(RuntimeError):
    """A rank of a training group died or raised; the message names the role and the rank."""


class RayTrainingGroup(_CalledLikeTheRole):
    """The ranks of one training role (actor, critic, teacher) as one sharded model; or one role
    of a colocated worker (`colocated`)."""

    SCATTERED = frozenset({"compute_logprobs", "compute_values"})

    def __init__(self, role: str, handles: list[Any]) -> None:
        self.role = role
        self.handles = handles

    @classmethod
    def start(cls, role: str, role_cls: type, cfg: Any, placement: Placement) -> RayTrainingGroup:
        """`placement.replicas` ranks, each holding its shard of the role."""
        group = cls(role, [])
        group._start_ranks({role: (role_cls, cfg)}, placement)
        return group

    @classmethod
    def colocated(cls, roles: RoleSpecs) -> dict[str, RayTrainingGroup]:
        """Every role in one worker process, each called through its own group.

        For a local Ray on CPU where each role has one rank (`build_roles`): the roles take
        turns on the same cores anyway, and separate processes cost each call its transfer and
        the next process its warm-up, 20-60 ms a phase on the demo (docs/benchmarks.md, change
        11). verl's colocated workers (`create_colocated_worker_cls`) do the same on a GPU.
        """
        host = cls("+".join(roles), [])  # names the worker in a start-up failure
        host._start_ranks(roles, Placement())
        return {name: cls(name, host.handles) for name in roles}

    def load_weights_from(self, source: str) -> dict[str, float]:
        """Colocated: this role loads role `source`'s weights inside their shared worker,
        without the copy through the object store that `load_weights(get_weights())` makes."""
        return self._wait([self.handles[0].copy_weights.remote(source, self.role)])[0]

    def _start_ranks(self, roles: RoleSpecs, placement: Placement) -> None:
        remote_cls = ray.remote(RankWorker).options(**actor_options(placement))
        self.handles = [remote_cls.remote() for _ in range(placement.replicas)]
        addr, port = self._wait([self.handles[0].address.remote()])[0]
        world = len(self.handles)
        timeout_s = max(cfg.collective_timeout_s for _, cfg in roles.values())
        # Every rank must start at once: init_process_group waits for all of them.
        starts = [
            h.start.remote(roles, fsdp.Rendezvous(rank, world, addr, port, timeout_s))
            for rank, h in enumerate(self.handles)
        ]
        self._wait(starts)

    def _call(self, method: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if method in self.SCATTERED and len(self.handles) == 1:  # the batch as it is, no copy
            return self._wait([self.handles[0].call.remote(self.role, method, *args, **kwargs)])[0]
        if method in self.SCATTERED:
            batch, rest = args[0], args[1:]
            shares = balanced_shares(sequence_lengths(batch), len(self.handles))
            refs = [
                h.call.remote(
                    self.role,
                    method,
                    batch.select(torch.tensor(rows, dtype=torch.long)),
                    *rest,
                    **kwargs,
                )
                for h, rows in zip(self.handles, shares, strict=True)
            ]
            return gather_rows(self._wait(refs), shares, batch.size)
        # One object-store copy of a batch for all ranks, not one per rank.
        args = tuple(ray.put(a) if isinstance(a, RolloutBatch) else a for a in args)
        refs = [h.call.remote(self.role, method, *args, **kwargs) for h in self.handles]
        if method in BY_REFERENCE:
            self._wait(refs[1:], first_rank=1)
            return refs[0]
        return self._wait(refs)[0]

    def _wait(self, refs: list[Any], first_rank: int = 0) -> list[Any]:
        """Every result in rank order; the first failure raises at once, naming its rank."""
        pending = {ref: first_rank + i for i, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    raise WorkerFailed(f"{self.role} rank {rank} died: {err}") from err
                except ray.exceptions.RayTaskError as err:
                    raise WorkerFailed(f"{self.role} rank {rank} failed: {err}") from err
        return [results[rank] for rank in sorted(results)]

    def kill(self) -> None:
        for handle in self.handles:
            ray.kill(handle)


def gather_rows(parts: list[Any], shares: list[list[int]], size: int) -> Any:
    """The ranks' per-row results ([n_r, R] tensors or LogprobOutputs) back in row order."""

    def place(tensors: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros((size, *tensors[0].shape[1:]), dtype=tensors[0].dtype)
        for rows, tensor in zip(shares, tensors, strict=True):
            out[torch.tensor(rows, dtype=torch.long)] = tensor
        return out

    if isinstance(parts[0], LogprobOutput):
        entropy = None
        if parts[0].entropy is not None:
            entropy = place([p.entropy for p in parts])
        return LogprobOutput(place([p.logprobs for p in parts]), entropy)
    return place(parts)
