"""The math grader: a Deployment and a Service, both named `<job>-grader`.

The trainer posts (response, answer) batches to it at DISTILL_GRADER_URL. Its replicas follow
spec.grader.replicas while the job can still train, and drop to zero when the job is suspended,
finished, or queued and not yet admitted by Kueue, so an idle grader holds no CPU. One port,
`http`, serves grading, the probes (`/healthz` liveness, `/readyz` readiness: every grading
worker is up) and `/metrics`.
"""

from __future__ import annotations

import math
from typing import Any

from kubernetes.utils import parse_quantity

from distill_api import DistillJob, JobPhase
from distill_operator.builders.labels import GRADER, common_labels, selector_labels
from distill_operator.builders.meta import owned_object
from distill_operator.builders.names import grader_name
from distill_operator.builders.options import DEFAULT_OPTIONS, BuildOptions
from distill_operator.builders.pods import (
    apply_pod_settings,
    container_security_context,
    home_env,
    pod_security_context,
    resource_requirements,
    writable_mounts,
    writable_volumes,
)

GRADER_PORT = 8000
# distill_grader's GraderSettings.workers accepts 1..64 (a test keeps the two in step).
MAX_GRADER_WORKERS = 64
_FINISHED = {JobPhase.SUCCEEDED, JobPhase.FAILED}
WAITING_FOR_ADMISSION = "WaitingForAdmission"  # status.reason of a queued job Kueue holds back
INVALID_SPEC = "InvalidSpec"  # status.reason of a job failed by the operator's own validation


def has_finished(job: DistillJob) -> bool:
    """Its RayJob ran to an end (Succeeded or Failed). Not a spec that failed validation: once
    fixed, that job has yet to run."""
    status = job.status
    return status is not None and status.phase in _FINISHED and status.reason != INVALID_SPEC


def awaits_admission(job: DistillJob) -> bool:
    """A queued job before Kueue admitted it (or after a preemption put it back in the queue).

    Before any status, too: Kueue's webhook suspends a queued RayJob as it is created.
    """
    if not job.spec.queue_name:
        return False
    status = job.status
    return status is None or status.phase is None or status.reason == WAITING_FOR_ADMISSION


def grader_replicas(job: DistillJob) -> int:
    """spec.grader.replicas, or 0 while nothing will be graded: suspended (spec.suspend, or
    Kueue holding a queued job back) or finished. Kueue, not spec.suspend, decides for a queued
    job."""
    suspended = job.spec.suspend and not job.spec.queue_name
    idle = suspended or has_finished(job) or awaits_admission(job)
    return 0 if idle else job.spec.grader.replicas


def grader_workers(cpu: str) -> int:
    """One grading process per whole CPU of the pod's limit (math-verify is CPU-bound)."""
    return max(1, min(MAX_GRADER_WORKERS, math.floor(parse_quantity(cpu))))


def _probe(path: str, failure_threshold: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def grader_container(job: DistillJob) -> dict[str, Any]:
    grader = job.spec.grader
    return {
        "name": "grader",
        "image": grader.image or job.spec.image,
        "command": ["python", "-m", "distill_grader", "--port", str(GRADER_PORT)],
        "ports": [{"name": "http", "containerPort": GRADER_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "DISTILL_JOB_NAME", "value": job.metadata.name},
            {"name": "GRADER_ITEM_TIMEOUT_S", "value": str(grader.timeout_seconds)},
            {"name": "GRADER_WORKERS", "value": str(grader_workers(grader.cpu))},
            *home_env(),
        ],
        "resources": resource_requirements(grader.cpu, grader.memory),
        # Readiness: every grading worker process is up (a restarting pool takes the pod out of
        # the Service). Liveness: the HTTP server answers; more patience, a restart is costly.
        "readinessProbe": _probe("/readyz", failure_threshold=3),
        "livenessProbe": _probe("/healthz", failure_threshold=6),
        "securityContext": container_security_context(),
        "volumeMounts": writable_mounts(shared_memory=False),
    }


def build_grader_deployment(
    job: DistillJob, options: BuildOptions = DEFAULT_OPTIONS
) -> dict[str, Any]:
    name = job.metadata.name
    deployment = owned_object(job, "apps/v1", "Deployment", grader_name(name), GRADER)
    template = {
        "metadata": {"labels": common_labels(name, GRADER)},
        "spec": {
            "securityContext": pod_security_context(options),
            "automountServiceAccountToken": False,
            "containers": [grader_container(job)],
            "volumes": writable_volumes(shared_memory=False),
        },
    }
    deployment["spec"] = {
        "replicas": grader_replicas(job),
        "selector": {"matchLabels": selector_labels(name, GRADER)},
        "template": apply_pod_settings(job, template, job.spec.grader),
    }
    return deployment


def build_grader_service(job: DistillJob) -> dict[str, Any]:
    name = job.metadata.name
    svc = owned_object(job, "v1", "Service", grader_name(name), GRADER)
    svc["spec"] = {
        "type": "ClusterIP",
        "selector": selector_labels(name, GRADER),
        "ports": [{"name": "http", "port": GRADER_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    return svc
