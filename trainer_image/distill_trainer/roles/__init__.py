"""The roles of a run (rollout engine, actor, teacher, critic) and how they are built.

`build_roles` is the one place that knows the backend: `inprocess` builds the HF roles as plain
objects, `ray` builds the same classes inside Ray actors, a process per role (per rank); on a
local Ray on CPU where each role has one rank, all of them in one worker process
(RunOptions.colocate, roles/group.py `RayTrainingGroup.colocated`). A role the spec does not need
is never constructed: no teacher unless useKlInAdvantage or algorithm.klLoss needs it, no critic
unless advEstimator is gae.
With useKlInAdvantage on and klPenaltyCoef 0 the teacher is still built and scores every batch:
the spec ties the teacher to useKlInAdvantage, and coef 0 is a legitimate ablation that logs the
KL (distill/kl_per_token) without letting it move the advantage.

The rollout engine is `spec.rollout.engine`; unset, it is vLLM where rollouts run on GPUs (a
DistillJob's Ray cluster, whose rollout workers advertise the `rollout` resource and have GPUs, or
a local GPU) and `LOCAL_ENGINE` on CPU. How weights reach the engines is
`spec.rollout.weightSync` (roles/weight_transfer.py `weight_sync_path`): nccl, vLLM's NCCL
weight-transfer engine set up here once the roles are up, where vLLM engines and the actor hold
GPUs of separate workers; reload (the `Weights` buckets) everywhere else.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from distill_api import DistillJobSpec
from distill_api.v1alpha1 import RolloutEngineName, WeightSync
from distill_trainer.config import RoleConfigs
from distill_trainer.roles.base import (
    Actor,
    Critic,
    LogprobOutput,
    RolloutEngine,
    Rollouts,
    SamplingParams,
    Teacher,
    Weights,
)

if TYPE_CHECKING:
    from distill_trainer.roles.group import Placement

log = logging.getLogger(__name__)
# The faster engine for the tiny demo models on CPU (docs/spec.md has the measurements).
LOCAL_ENGINE = RolloutEngineName.HF

__all__ = [
    "Actor",
    "Critic",
    "LogprobOutput",
    "Roles",
    "RolloutEngine",
    "Rollouts",
    "SamplingParams",
    "Teacher",
    "Weights",
    "build_roles",
]


@dataclass
class Roles:
    rollout: RolloutEngine
    actor: Actor
    teacher: Teacher | None
    critic: Critic | None
    weight_sync: WeightSync = WeightSync.RELOAD  # resolved: reload or nccl
    colocated: bool = False  # every role in one Ray worker process (RayTrainingGroup.colocated)
    exact_logprobs: bool = False  # the engine's behaviour logprobs are the actor's own

    def sync_weights(self) -> dict[str, float]:
        """The actor's current weights to the rollout engines, by the run's path; returns the
        `weight_sync/*` metrics."""
        if self.weight_sync == WeightSync.NCCL:
            return self.actor.send_weights()  # rank 0 drives the engines (weight_transfer.py)
        if self.colocated:
            return self.rollout.load_weights_from("actor")
        return self.rollout.load_weights(self.actor.get_weights())

    @property
    def names(self) -> list[str]:
        """The roles that exist in this run, e.g. ["rollout", "actor", "teacher"]."""
        return [name for name in ("rollout", "actor", "teacher", "critic") if getattr(self, name)]

    def close(self) -> None:
        """Stop role actors (Ray); in-process roles are simply dropped."""
        for name in self.names:
            kill = getattr(getattr(self, name), "kill", None)
            if kill is not None:
                kill()


def build_roles(
    configs: RoleConfigs,
    spec: DistillJobSpec,
    backend: Literal["inprocess", "ray"],
    pad_token_id: int,
    colocate: bool = True,
) -> Roles:
    """Construct each needed role, in-process or as Ray actor groups; on a local Ray on CPU
    where every role has one rank, all of them in one worker process unless `colocate` is off
    (RunOptions.colocate)."""
    from distill_trainer.roles.trainer import HFActor, HFCritic, HFTeacher

    engine = rollout_engine(spec, configs.rollout.device, backend)
    sync = weight_sync(spec, engine, backend)
    rollout_cfg = configs.rollout
    if sync == WeightSync.NCCL:
        rollout_cfg = dataclasses.replace(rollout_cfg, weight_transfer="nccl")
    wanted: dict[str, tuple[type, Any]] = {
        "rollout": (_engine_class(engine), rollout_cfg),
        "actor": (HFActor, configs.actor),
    }
    if configs.teacher is not None:
        wanted["teacher"] = (HFTeacher, configs.teacher)
    if configs.critic is not None:
        wanted["critic"] = (HFCritic, configs.critic)
    built: dict[str, Any] = {"teacher": None, "critic": None}
    placements: dict[str, Placement] = {}
    if backend == "ray":
        placements = {
            name: _placement(name, cfg, spec, len(wanted)) for name, (_, cfg) in wanted.items()
        }
    # A local Ray on CPU with one rank a role: every placement is one plain CPU process.
    colocated = (
        colocate
        and bool(placements)
        and all(p.replicas == 1 and not p.num_gpus and not p.resources for p in placements.values())
    )
    for name, (cls, cfg) in wanted.items():
        where = "colocated ray" if colocated else backend
        log.info("building %s (%s, %s) from %s", name, where, cls.__name__, cfg.model)
        if backend == "inprocess":
            built[name] = cls(cfg)
        elif not colocated:
            built[name] = _ray_group(name, cls, cfg, placements[name], pad_token_id)
    if colocated:
        from distill_trainer.roles.group import RayTrainingGroup

        built.update(RayTrainingGroup.colocated(wanted))
    if sync == WeightSync.NCCL:  # the engines and actor rank 0 rendezvous inside this call
        log.info("weight sync: vLLM's NCCL weight transfer from actor rank 0")
        built["actor"].init_weight_transfer(built["rollout"].handles)
    exact = exact_behaviour_logprobs(
        spec, engine, configs.rollout.device, placements.get("rollout")
    )
    return Roles(**built, weight_sync=sync, colocated=colocated, exact_logprobs=exact)


def exact_behaviour_logprobs(
    spec: DistillJobSpec,
    engine: RolloutEngineName,
    device: str,
    rollout_placement: Placement | None = None,
) -> bool:
    """Whether the engine samples with exactly the actor's distribution, so its logprobs are the
    actor's old logprobs up to rounding: the HF engine (the actor's model class and weights, no
    KV-cache quantisation) in float32 on this machine's CPU, with nothing cut by top-p.

    Not where the rollout workers are placed by a DistillJob cluster's role resource: they may
    hold GPUs the driver cannot see (bf16 autocast there). Never with vLLM (its own kernels,
    bf16). `rollout_placement`: the engines' Ray placement (None in-process)."""
    from distill_trainer.roles.models import resolve_device

    if engine != RolloutEngineName.HF or spec.rollout.top_p < 1.0:
        return False
    if rollout_placement is not None and rollout_placement.resources:
        return False
    return resolve_device(device) == "cpu"


def weight_sync(spec: DistillJobSpec, engine: RolloutEngineName, backend: str) -> WeightSync:
    """`spec.rollout.weightSync` resolved for this run (`weight_sync_path`)."""
    from distill_trainer.roles.weight_transfer import separate_gpu_workers, weight_sync_path

    separate = False
    if backend == "ray" and spec.rollout.weight_sync != WeightSync.RELOAD:
        import ray

        actor_gpus = spec.resources.actor.gpus_per_replica
        separate = separate_gpu_workers(ray.cluster_resources(), actor_gpus)
    return weight_sync_path(spec.rollout.weight_sync, engine, separate)


def rollout_engine(spec: DistillJobSpec, device: str, backend: str) -> RolloutEngineName:
    """The spec's engine, else vLLM on GPUs and LOCAL_ENGINE on CPU."""
    from distill_trainer.roles.models import resolve_device

    if spec.rollout.engine is not None:
        return spec.rollout.engine
    if device == "cpu":
        return LOCAL_ENGINE
    if resolve_device(device) == "cuda":
        return RolloutEngineName.VLLM
    if backend == "ray":
        import ray

        if ray.cluster_resources().get("rollout", 0) > 0:  # a DistillJob's cluster: GPU workers
            return RolloutEngineName.VLLM
    return LOCAL_ENGINE


def _engine_class(engine: RolloutEngineName) -> type:
    """Each engine's module is imported only when chosen: vLLM only where it runs."""
    if engine == RolloutEngineName.VLLM:
        from distill_trainer.roles.rollout_vllm import VLLMRolloutEngine

        return VLLMRolloutEngine
    from distill_trainer.roles.rollout_hf import HFRolloutEngine

    return HFRolloutEngine


def _placement(name: str, cfg: Any, spec: DistillJobSpec, n_roles: int) -> Placement:
    """Where the role's Ray actors go (roles/group.py)."""
    from distill_trainer.roles.group import placement_for, training_placement
    from distill_trainer.roles.models import resolve_device

    group = getattr(spec.resources, name)
    replicas, gpus = (group.replicas, group.gpus_per_replica) if group else (1, 0)
    # Local Ray runs on this machine, so the driver can resolve "auto" for it.
    device = resolve_device(cfg.device)
    if name == "rollout":
        tensor_parallel = group.tensor_parallel_size if group else 1
        return placement_for(name, replicas, gpus, device, n_roles, tensor_parallel)
    # The actor, critic and teacher: one FSDP2 process group of replicas × gpusPerReplica ranks.
    return training_placement(name, replicas, gpus, device, n_roles)


def _ray_group(name: str, cls: type, cfg: Any, placement: Placement, pad_token_id: int) -> Any:
    from distill_trainer.roles.group import RayRoleGroup, RayTrainingGroup

    if name == "rollout":
        return RayRoleGroup(cls, cfg, placement, pad_token_id)
    log.info("%s: %d ranks", name, placement.replicas)
    return RayTrainingGroup.start(name, cls, cfg, placement)
