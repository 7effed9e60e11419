"""The math grader: a Deployment and a Service, both named `<job>-grader`.

The trainer posts (response, answer) batches to it at DISTILL_GRADER_URL. Its replicas follow
spec.grader.replicas while the job can still train, and drop to zero when the job is suspended or
finished, so an idle grader holds no CPU.
"""

from __future__ import annotations

from typing import Any

from distill_api import DistillJob, JobPhase
from distill_operator.builders.labels import GRADER, common_labels, selector_labels
from distill_operator.builders.meta import owned_object
from distill_operator.builders.names import grader_name
from distill_operator.builders.pods import (
    container_security_context,
    home_env,
    pod_security_context,
    resource_requirements,
    writable_mounts,
    writable_volumes,
)

GRADER_PORT = 8000
GRADER_CPU = "2"  # math-verify is CPU-bound; the pool uses one process per core
GRADER_MEMORY = "2Gi"
_FINISHED = {JobPhase.SUCCEEDED, JobPhase.FAILED}


def grader_replicas(job: DistillJob) -> int:
    finished = job.status is not None and job.status.phase in _FINISHED
    return 0 if job.spec.suspend or finished else job.spec.grader.replicas


def _metrics_probe(failure_threshold: int) -> dict[str, Any]:
    """/metrics answers as soon as the HTTP server is up, without grading anything."""
    return {
        "httpGet": {"path": "/metrics", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": failure_threshold,
    }


def grader_container(job: DistillJob) -> dict[str, Any]:
    return {
        "name": "grader",
        "image": job.spec.grader.image or job.spec.image,
        "command": ["python", "-m", "distill_grader", "--port", str(GRADER_PORT)],
        "ports": [{"name": "http", "containerPort": GRADER_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "DISTILL_JOB_NAME", "value": job.metadata.name},
            {"name": "GRADER_ITEM_TIMEOUT_S", "value": str(job.spec.grader.timeout_seconds)},
            *home_env(),
        ],
        "resources": resource_requirements(GRADER_CPU, GRADER_MEMORY),
        "readinessProbe": _metrics_probe(failure_threshold=3),
        "livenessProbe": _metrics_probe(failure_threshold=6),
        "securityContext": container_security_context(),
        "volumeMounts": writable_mounts(shared_memory=False),
    }


def build_grader_deployment(job: DistillJob) -> dict[str, Any]:
    name = job.metadata.name
    deployment = owned_object(job, "apps/v1", "Deployment", grader_name(name), GRADER)
    deployment["spec"] = {
        "replicas": grader_replicas(job),
        "selector": {"matchLabels": selector_labels(name, GRADER)},
        "template": {
            "metadata": {"labels": common_labels(name, GRADER)},
            "spec": {
                "securityContext": pod_security_context(),
                "automountServiceAccountToken": False,
                "containers": [grader_container(job)],
                "volumes": writable_volumes(shared_memory=False),
            },
        },
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
