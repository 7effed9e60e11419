"""The roles of a run (rollout engine, actor, teacher, critic) and how they are built.

`build_roles` is the one place that knows the backend: `inprocess` builds the HF roles as plain
objects, `ray` builds the same classes inside Ray actors. A role the spec does not need is never
constructed: no teacher when useKlInAdvantage is off, no critic unless advEstimator is gae.
With useKlInAdvantage on and klPenaltyCoef 0 the teacher is still built and scores every batch:
the spec ties the teacher to useKlInAdvantage, and coef 0 is a legitimate ablation that logs the
KL (distill/kl_per_token) without letting it move the advantage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from distill_api import DistillJobSpec
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

log = logging.getLogger(__name__)

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
) -> Roles:
    """Construct each needed role, in-process or as Ray actor groups."""
    from distill_trainer.roles.rollout_hf import HFRolloutEngine
    from distill_trainer.roles.trainer import HFActor, HFCritic, HFTeacher

    wanted: dict[str, tuple[type, Any]] = {
        "rollout": (HFRolloutEngine, configs.rollout),
        "actor": (HFActor, configs.actor),
    }
    if configs.teacher is not None:
        wanted["teacher"] = (HFTeacher, configs.teacher)
    if configs.critic is not None:
        wanted["critic"] = (HFCritic, configs.critic)
    built: dict[str, Any] = {"teacher": None, "critic": None}
    for name, (cls, cfg) in wanted.items():
        log.info("building %s (%s) from %s", name, backend, cfg.model)
        if backend == "inprocess":
            built[name] = cls(cfg)
        else:
            built[name] = _ray_group(name, cls, cfg, spec, len(wanted), pad_token_id)
    return Roles(**built)


def _ray_group(
    name: str, cls: type, cfg: Any, spec: DistillJobSpec, n_roles: int, pad_token_id: int
) -> Any:
    from distill_trainer.roles.group import (
        RayRoleGroup,
        RayTrainingGroup,
        placement_for,
        training_placement,
    )
    from distill_trainer.roles.models import resolve_device

    group = getattr(spec.resources, name)
    replicas, gpus = (group.replicas, group.gpus_per_replica) if group else (1, 0)
    # Local Ray runs on this machine, so the driver can resolve "auto" for it.
    device = resolve_device(cfg.device)
    if name == "rollout":
        placement = placement_for(name, replicas, gpus, device, n_roles)
        return RayRoleGroup(cls, cfg, placement, pad_token_id)
    # The actor, critic and teacher: one FSDP2 process group of replicas × gpusPerReplica ranks.
    placement = training_placement(name, replicas, gpus, device, n_roles)
    log.info("%s: %d ranks", name, placement.replicas)
    return RayTrainingGroup(name, cls, cfg, placement)
