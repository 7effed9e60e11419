"""The KubeRay RayJob that runs the trainer: one head (the driver) and one worker group per role.

Worker groups are named after the Ray custom resource each pod advertises (`rollout`, `actor`,
`teacher` when the teacher's KL enters the advantage, `critic` for gae); the trainer places its
role actors by requesting those resources. Every group has a fixed size (min = max = replicas):
training needs all of them at once, autoscaling would only add waiting. A rollout pod gets
gpusPerReplica GPUs and runs gpusPerReplica / tensorParallelSize vLLM engines; the trainer reads
that split from the job spec it is given, so nothing about placement is passed separately.

Kueue (spec.queueName): the RayJob carries the queue-name label and no `suspend`: Kueue's webhook
suspends it on creation and Kueue unsuspends it on admission (and suspends it again to preempt).
"""

from __future__ import annotations

import json
from typing import Any

from distill_api import DistillJob
from distill_api.v1alpha1 import WorkerGroup
from distill_operator.builders.configmap import JOB_FILE_DIR, JOB_FILE_PATH
from distill_operator.builders.grader import GRADER_PORT
from distill_operator.builders.labels import (
    KUEUE_QUEUE_LABEL,
    RAY_WORKER,
    RAYJOB,
    ROLE_LABEL,
    TRAINER,
    common_labels,
)
from distill_operator.builders.meta import owned_object
from distill_operator.builders.names import grader_url, rayjob_name, spec_configmap_name
from distill_operator.builders.pods import (
    container_security_context,
    home_env,
    pod_security_context,
    resource_requirements,
    writable_mounts,
    writable_volumes,
)
from distill_operator.builders.trainer_service import TRAINER_METRICS_PORT, TRAINER_PORT_NAME

RAY_VERSION = "2.60.0"  # the ray pin in requirements/lock.txt, which the trainer image installs
OUTPUT_DIR = "/tmp/distill"
ENTRYPOINT = (
    f"python -m distill_trainer run {JOB_FILE_PATH} --backend ray "
    f"--metrics-port {TRAINER_METRICS_PORT} --output-dir {OUTPUT_DIR}"
)
# A retry starts the entrypoint again from step 0 (the trainer does not resume from checkpoints),
# repeating hours of GPU work unasked: a failed run is reported as Failed instead.
BACKOFF_LIMIT = 0
SUBMITTER_CPU = "500m"
SUBMITTER_MEMORY = "512Mi"
SPEC_VOLUME = "job-spec"
_HEAD_PORTS = [("gcs-server", 6379), ("dashboard", 8265), ("client", 10001)]


def role_groups(job: DistillJob) -> dict[str, WorkerGroup]:
    """The worker groups this job needs, by Ray custom resource name, in a fixed order."""
    resources = job.spec.resources
    groups: dict[str, WorkerGroup] = {"rollout": resources.rollout, "actor": resources.actor}
    if job.spec.needs_teacher:
        groups["teacher"] = resources.teacher
    if job.spec.needs_critic and resources.critic is not None:
        groups["critic"] = resources.critic
    return groups


def _secret_env(job: DistillJob) -> dict[str, Any]:
    checkpoint = job.spec.checkpoint
    if checkpoint is None or checkpoint.secret_ref is None:
        return {}
    return {"envFrom": [{"secretRef": {"name": checkpoint.secret_ref}}]}


def _ray_pod_spec(job: DistillJob, container: dict[str, Any]) -> dict[str, Any]:
    """A pod spec for a Ray node: the job spec mounted read-only plus writable /tmp and /dev/shm."""
    container.setdefault("env", []).extend(home_env())
    container.update(_secret_env(job))
    container["securityContext"] = container_security_context()
    container["volumeMounts"] = [
        {"name": SPEC_VOLUME, "mountPath": JOB_FILE_DIR, "readOnly": True},
        *writable_mounts(shared_memory=True),
    ]
    volumes = [
        {"name": SPEC_VOLUME, "configMap": {"name": spec_configmap_name(job.metadata.name)}},
        *writable_volumes(shared_memory=True),
    ]
    return {
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }


def build_head_group(job: DistillJob) -> dict[str, Any]:
    """The head runs only the driver (the training loop): no GPU, models live on the workers."""
    name, namespace, head = job.metadata.name, job.metadata.namespace, job.spec.resources.head
    head_ports = [*_HEAD_PORTS, (TRAINER_PORT_NAME, TRAINER_METRICS_PORT)]
    ports = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in head_ports]
    container = {
        "name": "ray-head",
        "image": job.spec.image,
        "ports": ports,
        "env": [
            {"name": "DISTILL_JOB_NAME", "value": name},
            {"name": "DISTILL_GRADER_URL", "value": grader_url(name, namespace, GRADER_PORT)},
        ],
        "resources": resource_requirements(head.cpu, head.memory),
    }
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0"},
        "template": {
            # The trainer Service selects the head pod (the driver serves /metrics) by these.
            "metadata": {"labels": common_labels(name, TRAINER)},
            "spec": _ray_pod_spec(job, container),
        },
    }


def build_worker_group(job: DistillJob, role: str, group: WorkerGroup) -> dict[str, Any]:
    container = {
        "name": "ray-worker",
        "image": job.spec.image,
        "env": [{"name": "DISTILL_JOB_NAME", "value": job.metadata.name}],
        "resources": resource_requirements(group.cpu, group.memory, group.gpus_per_replica),
    }
    labels = {**common_labels(job.metadata.name, RAY_WORKER), ROLE_LABEL: role}
    return {
        "groupName": role,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        # KubeRay wants the JSON of the resources map quoted once more inside the string.
        "rayStartParams": {"resources": json.dumps(json.dumps({role: 1}))},
        "template": {"metadata": {"labels": labels}, "spec": _ray_pod_spec(job, container)},
    }


def build_submitter_template(job: DistillJob) -> dict[str, Any]:
    """KubeRay fills in the `ray job submit` command; we add the restricted security context."""
    container = {
        "name": "ray-job-submitter",
        "image": job.spec.image,
        "env": home_env(),
        "resources": resource_requirements(SUBMITTER_CPU, SUBMITTER_MEMORY),
        "securityContext": container_security_context(),
        "volumeMounts": writable_mounts(shared_memory=False),
    }
    return {
        "metadata": {"labels": common_labels(job.metadata.name, "submitter")},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security_context(),
            "containers": [container],
            "volumes": writable_volumes(shared_memory=False),
        },
    }


def rayjob_mutable_spec(job: DistillJob) -> dict[str, Any]:
    """The RayJob spec fields that follow the DistillJob after creation (a merge patch).

    `suspend` only without Kueue, which owns it for queued jobs; every other field is fixed by
    the CRD's transition rules or by KubeRay once the cluster exists.
    """
    mutable: dict[str, Any] = {"ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished}
    if not job.spec.queue_name:
        mutable["suspend"] = job.spec.suspend
    return mutable


def build_rayjob(job: DistillJob) -> dict[str, Any]:
    rayjob = owned_object(job, "ray.io/v1", "RayJob", rayjob_name(job.metadata.name), RAYJOB)
    if job.spec.queue_name:
        rayjob["metadata"]["labels"][KUEUE_QUEUE_LABEL] = job.spec.queue_name
    spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": "K8sJobMode",
        # Also what `suspend` needs, and what Kueue's webhook requires.
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished,
        "backoffLimit": BACKOFF_LIMIT,
        "submitterPodTemplate": build_submitter_template(job),
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": build_head_group(job),
            "workerGroupSpecs": [
                build_worker_group(job, role, group) for role, group in role_groups(job).items()
            ],
        },
    }
    # Created suspended only when asked and not queued: a RayJob created suspended without Kueue
    # waits until spec.suspend goes back to false; a queued one is suspended by Kueue's webhook.
    if job.spec.suspend and not job.spec.queue_name:
        spec["suspend"] = True
    rayjob["spec"] = spec
    return rayjob
