"""Pure manifest builders: DistillJob in, Kubernetes object dicts out (no API calls, no clock).

`build_children(job)` lists everything one DistillJob owns, in creation order.
"""

from __future__ import annotations

from typing import Any

from distill_api import DistillJob
from distill_operator.builders.configmap import build_spec_configmap
from distill_operator.builders.grader import build_grader_deployment, build_grader_service
from distill_operator.builders.network_policy import build_network_policy
from distill_operator.builders.options import DEFAULT_OPTIONS, BuildOptions
from distill_operator.builders.rayjob import build_rayjob
from distill_operator.builders.trainer_service import build_trainer_service


def build_children(
    job: DistillJob, options: BuildOptions = DEFAULT_OPTIONS
) -> list[dict[str, Any]]:
    """ConfigMap first (the RayJob mounts it), then the grader, the trainer Service, the
    NetworkPolicy (before any Ray pod exists), and the RayJob last."""
    policy = [build_network_policy(job, options)] if options.network_policy else []
    return [
        build_spec_configmap(job),
        build_grader_deployment(job, options),
        build_grader_service(job),
        build_trainer_service(job),
        *policy,
        build_rayjob(job, options),
    ]


__all__ = [
    "DEFAULT_OPTIONS",
    "BuildOptions",
    "build_children",
    "build_grader_deployment",
    "build_grader_service",
    "build_network_policy",
    "build_rayjob",
    "build_spec_configmap",
    "build_trainer_service",
]
